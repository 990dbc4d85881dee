"""Seeded synthetic interaction logs for the data benchmark and the tests.

Users have log-normal history lengths (median 50, capped at 5,000), items follow a Zipf-like popularity
law, timestamps are whole seconds with many exact ties (within and across users), and the rows are
written in global time order, as an application log would be.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

MEDIAN_LENGTH = 50
MAX_LENGTH = 5000


def synthetic_log(n_rows: int, seed: int = 0, zipf_exponent: float = 1.1) -> pa.Table:
    """``n_rows`` interactions with columns ``user_id``, ``item_id`` (int64), ``rating``, ``timestamp``.

    The table is a pure function of ``(n_rows, seed, zipf_exponent)``.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    rng = np.random.default_rng(seed)
    # user history lengths: log-normal around the median, at least 1, at most MAX_LENGTH
    expected_users = max(1, int(n_rows / (MEDIAN_LENGTH * math.exp(0.5 * 1.1**2))) + 16)
    lengths = np.empty(0, dtype=np.int64)
    while lengths.sum() < n_rows:
        more = rng.lognormal(math.log(MEDIAN_LENGTH), 1.1, size=expected_users)
        lengths = np.concatenate([lengths, np.clip(np.rint(more), 1, MAX_LENGTH).astype(np.int64)])
    cut = int(np.searchsorted(np.cumsum(lengths), n_rows))
    lengths = lengths[: cut + 1]
    lengths[-1] -= int(lengths.sum()) - n_rows
    lengths = lengths[lengths > 0]
    n_users = len(lengths)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)

    # items: popularity rank k has weight k^-s; ranks get shuffled ids so popular ids are not small
    n_items = max(100, n_rows // 40)
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -zipf_exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n_rows)), n_items - 1)
    item_of_rank = rng.permutation(n_items).astype(np.int64) + 1
    items = item_of_rank[ranks]

    # times: every user starts somewhere in ~3 years; steps are 0 (an exact tie) a third of the time
    start = rng.integers(1_500_000_000, 1_600_000_000, size=n_users)
    steps = rng.integers(0, 7200, size=n_rows)
    steps[rng.random(n_rows) < 1 / 3] = 0
    first = np.cumsum(lengths) - lengths
    steps[first] = 0
    cumulative = np.cumsum(steps)
    times = start[users] + cumulative - np.repeat(cumulative[first], lengths)
    ratings = rng.integers(1, 6, size=n_rows)

    # user ids: shuffled, so a user's number says nothing about its position
    user_ids = rng.permutation(n_users).astype(np.int64) + 1
    order = np.argsort(times, kind="stable")  # log order: global time, ties by user block
    return pa.table(
        {
            "user_id": pa.array(user_ids[users[order]]),
            "item_id": pa.array(items[order]),
            "rating": pa.array(ratings[order].astype(np.int8)),
            "timestamp": pa.array(times[order]),
        }
    )


def write_log(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` as CSV (``.csv``) or Parquet (``.parquet``), staged then renamed."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    staging = path.with_name(path.name + ".partial")
    if path.suffix == ".csv":
        pacsv.write_csv(table, staging, write_options=pacsv.WriteOptions(quoting_style="none"))
    elif path.suffix == ".parquet":
        pq.write_table(table, staging, row_group_size=1 << 20)
    else:
        raise ValueError(f"unknown log format for {path}: use .csv or .parquet")
    staging.replace(path)
    return path
