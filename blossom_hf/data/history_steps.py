"""The steps of :func:`blossom_hf.data.preprocessing.preprocess` that work on code arrays: the history order (the
stable sort by user and order key, and its checks), duplicate removal and the iterated k-core. numpy only, no
state; ``preprocessing.py`` holds the pipeline that runs them in the protocol's order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import OrderingError
from .formats import ORDER, TIME, Interactions

__all__ = ["check_order", "duplicate_rows", "history_order", "k_core", "natural_rank", "order_key"]


def history_order(user_rank: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Stable permutation sorting rows by (user rank, key); equal pairs keep their row order."""
    return np.lexsort((key, user_rank))  # numpy's lexsort is stable


def natural_rank(values: pa.Array) -> np.ndarray:
    """Rank of each distinct value: numeric order when all are integers, else text order.

    Ids are text: ``007`` and ``7`` are different values; with equal numbers they rank by their text.
    """
    integer_like = pc.all(pc.match_substring_regex(values, r"^-?\d{1,18}$")).as_py()
    if integer_like:
        as_text = np.asarray(pc.array_sort_indices(values).to_numpy())
        text_rank = np.empty(len(values), dtype=np.int64)
        text_rank[as_text] = np.arange(len(values))
        order = np.lexsort((text_rank, np.asarray(pc.cast(values, pa.int64()).to_numpy())))
    else:
        order = np.asarray(pc.array_sort_indices(values).to_numpy())
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank


def order_key(
    times: np.ndarray | None, order: np.ndarray | None, interactions: Interactions
) -> tuple[np.ndarray, str]:
    path = interactions.source.get("path", "<data>")
    if order is not None:
        key, name = order, f"order column ({interactions.source.get('columns', {}).get(ORDER, ORDER)})"
    elif times is not None:
        key, name = times, f"time column ({interactions.source.get('columns', {}).get(TIME, TIME)})"
    else:
        raise OrderingError(
            f"{path}: the interactions have neither a time nor an order column; histories cannot be ordered"
        )
    missing = np.isnan(key)
    if missing.any():
        first = int(interactions.line_numbers(np.flatnonzero(missing)[:1])[0])
        raise OrderingError(
            f"{path}: {int(missing.sum())} interaction(s) have no value in the {name} (first: line {first}); "
            "the order of a history must be known for every interaction (give an order column, or drop them)"
        )
    return key, name


def check_order(
    user_codes: np.ndarray,
    order: np.ndarray,
    permutation: np.ndarray,
    times: np.ndarray | None,
    users: pa.Array,
    interactions: Interactions,
) -> None:
    """Rows are sorted by (user, order): reject repeated positions and time running backwards."""

    def line(sorted_row: int) -> int:
        return int(interactions.line_numbers(permutation[sorted_row : sorted_row + 1])[0])

    same_user = user_codes[1:] == user_codes[:-1]
    repeated = np.flatnonzero(same_user & (order[1:] == order[:-1]))
    if repeated.size:
        i = int(repeated[0])
        raise OrderingError(
            f"user {users[int(user_codes[i])].as_py()!r} has two interactions at order position {order[i]:g} "
            f"(lines {line(i)} and {line(i + 1)}; {repeated.size} such pair(s)): the order column must be "
            "unique within a user"
        )
    if times is None:
        return
    # compare each known time with the previous known time of the same user
    known = np.flatnonzero(~np.isnan(times))
    if known.size < 2:
        return
    same = user_codes[known[1:]] == user_codes[known[:-1]]
    backwards = np.flatnonzero(same & (times[known[1:]] < times[known[:-1]]))
    if backwards.size:
        a, b = int(known[backwards[0]]), int(known[backwards[0] + 1])
        raise OrderingError(
            f"user {users[int(user_codes[a])].as_py()!r}: time goes backwards along the order column "
            f"(line {line(a)}: time {times[a]:g} at position {order[a]:g}; "
            f"line {line(b)}: time {times[b]:g} at position {order[b]:g}; "
            f"{backwards.size} such pair(s) in all). The order and time columns disagree; drop one of them"
        )


def duplicate_rows(user_codes: np.ndarray, item_codes: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """True for every row repeating an earlier row's key (rows are already in history order)."""
    position = np.arange(len(user_codes))
    if times is None:
        keys: tuple[np.ndarray, ...] = (position, item_codes, user_codes)
    else:
        time_key = np.where(np.isnan(times), -np.inf, times)
        keys = (position, time_key, item_codes, user_codes)
    permutation = np.lexsort(keys)
    same = np.ones(len(user_codes) - 1, dtype=bool)
    for key in keys[1:]:
        ordered = key[permutation]
        same &= ordered[1:] == ordered[:-1]  # NaN times were mapped to -inf, which equals itself
    duplicate = np.zeros(len(user_codes), dtype=bool)
    duplicate[permutation[1:][same]] = True
    return duplicate


def k_core(
    user_codes: np.ndarray, item_codes: np.ndarray, alive: np.ndarray, user_k: int, item_k: int
) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Remove users/items below their bound, repeatedly, until every remaining count meets it."""
    alive = alive.copy()
    n_users = int(user_codes.max()) + 1
    n_items = int(item_codes.max()) + 1
    rounds: list[dict[str, int]] = []
    while True:
        user_count = np.bincount(user_codes[alive], minlength=n_users)
        item_count = np.bincount(item_codes[alive], minlength=n_items)
        bad_users = (user_count > 0) & (user_count < user_k)
        bad_items = (item_count > 0) & (item_count < item_k)
        if not bad_users.any() and not bad_items.any():
            break
        removed = alive & (bad_users[user_codes] | bad_items[item_codes])
        alive &= ~removed
        rounds.append(
            {
                "users_removed": int(bad_users.sum()),
                "items_removed": int(bad_items.sum()),
                "interactions_removed": int(removed.sum()),
                "remaining": int(alive.sum()),
            }
        )
        if not alive.any():
            break
    return alive, rounds
