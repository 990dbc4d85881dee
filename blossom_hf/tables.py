"""Batch recommendations for user-keyed input: a table of interactions or a mapping ``user -> history`` in,
one row per (user, rank) out.

:meth:`BlossomRecModel.recommend` takes positional histories (it is part of the Hub code, which depends on
torch and transformers only); :func:`recommend_table` is the user-keyed layer on top of it::

    from blossom_hf import recommend_table
    recs = recommend_table(model, interactions_df, user_col="user", item_col="item", time_col="ts", k=10)
    # pandas.DataFrame with columns user, rank, item, score

Histories whose items the model does not know at all are handled by an explicit policy (``cold``): ``"error"``
(default) raises naming the users, ``"skip"`` leaves them out (logged), ``"popular"`` gives them the most
frequent known items of the input itself (logged, and marked in the ``fallback`` column).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

logger = logging.getLogger(__name__)

COLD_POLICIES = ("error", "skip", "popular")
COLUMNS = ("user", "rank", "item", "score", "fallback")


def _histories_from_frame(frame: Any, user_col: str, item_col: str, time_col: str | None) -> dict[Any, list]:
    missing = [c for c in (user_col, item_col, time_col) if c is not None and c not in frame.columns]
    if missing:
        raise KeyError(f"column(s) {missing} not in the table; its columns are {list(frame.columns)} "
                       "(pass user_col=, item_col=, time_col=)")  # fmt: skip
    if time_col is not None:
        if frame[time_col].isna().any():
            raise ValueError(f"column {time_col!r} has missing times; fill or drop those rows first")
        frame = frame.sort_values([user_col, time_col], kind="stable")  # ties keep the table's order
    else:
        logger.info("no time_col: each user's rows are taken in table order (oldest first)")
    histories: dict[Any, list] = {}
    for user, item in zip(frame[user_col].tolist(), frame[item_col].tolist(), strict=True):
        histories.setdefault(user, []).append(item)
    return histories


def _keyed_histories(source: Any, user_col: str, item_col: str, time_col: str | None) -> dict[Any, list]:
    if isinstance(source, Mapping):
        histories = {}
        for user, history in source.items():
            if isinstance(history, str | bytes | Mapping) or not isinstance(history, Iterable):
                raise TypeError(f"user {user!r}: a history must be a list of item ids, got {type(history).__name__}")
            histories[user] = list(history)
        return histories
    if hasattr(source, "columns") and hasattr(source, "sort_values"):  # a pandas.DataFrame
        return _histories_from_frame(source, user_col, item_col, time_col)
    if hasattr(source, "to_pandas") and hasattr(source, "column_names"):  # a datasets.Dataset / pyarrow.Table
        return _histories_from_frame(source.to_pandas(), user_col, item_col, time_col)
    raise TypeError(f"recommend_table takes a pandas.DataFrame, a datasets.Dataset / pyarrow.Table of interactions "
                    f"or a mapping user -> history, got {type(source).__name__}")  # fmt: skip


def recommend_table(
    model: Any,
    source: Any,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = None,
    k: int = 10,
    exclude_seen: bool = False,
    cold: str = "error",
    batch_size: int = 256,
    as_frame: bool = True,
) -> pandas.DataFrame | list[dict[str, Any]]:
    """Top-``k`` items for every user of ``source``.

    Args:
        model: a :class:`~blossom_hf.BlossomRecModel` with an item vocabulary.
        source: interactions as a ``pandas.DataFrame`` (or ``datasets.Dataset`` / ``pyarrow.Table``) with one row
            per (user, item[, time]), or a mapping ``user -> history`` (raw item ids, oldest first).
        user_col, item_col, time_col: column names of a table; without ``time_col`` the table order is the order.
        k, exclude_seen, batch_size: as in :meth:`BlossomRecModel.recommend`. Unknown items inside a history are
            dropped (the history's known items are scored).
        cold: what to do with users none of whose items the model knows: "error", "skip" or "popular".
        as_frame: return a ``pandas.DataFrame`` (default) or a list of row dicts.

    Returns:
        rows ``user, rank (1-based), item, score, fallback`` (``fallback`` is True for "popular" rows, whose
        score is the item's count in ``source``), users in first-seen order (sorted by user for a table given
        with ``time_col``).
    """
    if cold not in COLD_POLICIES:
        raise ValueError(f"cold must be one of {', '.join(COLD_POLICIES)}, got {cold!r}")
    vocab = getattr(model, "vocabulary", None)
    if vocab is None:
        raise ValueError("the model has no item vocabulary (item_vocabulary.json); recommend_table needs raw ids")
    histories = _keyed_histories(source, user_col, item_col, time_col)
    if not histories:
        raise ValueError("recommend_table got no users (the table or mapping is empty)")
    known = {user: [i for i in history if i in vocab] for user, history in histories.items()}
    cold_users = [user for user, items in known.items() if not items]
    if cold_users and cold == "error":
        shown = ", ".join(map(repr, cold_users[:5])) + (" ..." if len(cold_users) > 5 else "")
        raise ValueError(f"{len(cold_users)} user(s) have no item the model knows ({shown}); pass cold='skip' or "
                         "cold='popular', or drop them")  # fmt: skip
    warm = [user for user in histories if known[user]]
    rows: list[dict[str, Any]] = []
    if warm:
        recs = model.recommend([known[user] for user in warm], k=k, exclude_seen=exclude_seen, batch_size=batch_size)
        for user, rec in zip(warm, recs, strict=True):
            rows.extend({"user": user, "rank": rank, "item": item, "score": float(score), "fallback": False}
                        for rank, (item, score) in enumerate(rec, start=1))  # fmt: skip
    if cold_users:
        if cold == "skip":
            logger.warning("recommend_table: %d user(s) with no known item left out", len(cold_users))
        else:
            counts = Counter(i for items in known.values() for i in items)
            if not counts:
                raise ValueError("cold='popular' needs at least one known item in the input to rank by count")
            popular = counts.most_common()
            logger.warning("recommend_table: %d user(s) with no known item get the %d most frequent known items",
                           len(cold_users), k)  # fmt: skip
            for user in cold_users:
                seen = set(histories[user]) if exclude_seen else set()
                chosen = [(i, c) for i, c in popular if i not in seen][:k]
                rows.extend({"user": user, "rank": rank, "item": item, "score": float(count), "fallback": True}
                            for rank, (item, count) in enumerate(chosen, start=1))  # fmt: skip
        order = {user: n for n, user in enumerate(histories)}
        rows.sort(key=lambda row: (order[row["user"]], row["rank"]))
    if not as_frame:
        return rows
    import pandas

    return pandas.DataFrame(rows, columns=list(COLUMNS))


__all__ = ["COLD_POLICIES", "recommend_table"]
