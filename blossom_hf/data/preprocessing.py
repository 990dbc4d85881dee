"""Preprocessing (``docs/PROTOCOL.md``): de-duplication, rating threshold, iterated k-core, time order, item ids.

The steps run in the protocol's order and each one is recorded in :attr:`SequenceData.metadata`:

1. drop duplicates of (user, item, time) -- or of (user, item) -- if asked (the earliest one is kept);
   optional rating threshold (keep ``rating >= min_rating``);
2. k-core filtering repeated until stable: users with fewer than ``user_k`` and items with fewer than
   ``item_k`` interactions are removed, again and again, until no count falls below its bound
   (RecBole ``_filter_by_inter_num``);
3. each user's interactions ordered by the order column if there is one, else by time; ties keep file
   order (a stable sort). The file itself need not be sorted: its rows, in file order, are stably sorted
   by (user, key).
   An order column must not repeat a value within a user, and where both an order and a time column
   exist the known times must not decrease along the order -- either problem raises
   :class:`~blossom_hf.data.errors.OrderingError` rather than guessing;
4. raw item ids mapped to ``1..N`` (``0`` = padding). The map is :attr:`SequenceData.item_ids`
   (index ``i + 1`` <-> ``item_ids[i]``), the argument expected by ``blossom_hf.vocabulary.ItemVocabulary``.

Everything is numpy/Arrow vectorised; the result is a CSR layout (``offsets``, ``items``) that can be
viewed as a ``datasets.Dataset`` of (user_id, item_ids) rows without copying.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from .errors import InteractionDataError
from .formats import ITEM, ORDER, RATING, TIME, USER, Interactions
from .history_steps import check_order, duplicate_rows, history_order, k_core, natural_rank, order_key

if TYPE_CHECKING:  # datasets is needed only to view or save the histories as a datasets.Dataset
    import datasets

logger = logging.getLogger(__name__)

DedupeMode = Literal["none", "user-item-time", "user-item"]
ItemIdOrder = Literal["sorted", "first-seen"]


@dataclass
class PreprocessingConfig:
    """Which optional steps to run.

    Attributes:
        dedupe: ``"none"``; ``"user-item-time"`` drops repeated (user, item, time) rows (needs a time
            column); ``"user-item"`` keeps only the first interaction of a user with an item.
        min_rating: keep only interactions with ``rating >= min_rating`` (needs a rating column).
        user_k: k-core bound for users (0 or 1 = no bound).
        item_k: k-core bound for items (0 or 1 = no bound).
        item_id_order: how raw item ids are numbered: ``"sorted"`` (numerically when every id is an
            integer, else as text -- ids that are already ``1..N`` keep their values) or
            ``"first-seen"`` (order of first appearance in the ordered histories).
    """

    dedupe: DedupeMode = "none"
    min_rating: float | None = None
    user_k: int = 0
    item_k: int = 0
    item_id_order: ItemIdOrder = "sorted"

    def __post_init__(self) -> None:
        if self.dedupe not in ("none", "user-item-time", "user-item"):
            raise ValueError(f"dedupe must be 'none', 'user-item-time' or 'user-item', not {self.dedupe!r}")
        if self.item_id_order not in ("sorted", "first-seen"):
            raise ValueError(f"item_id_order must be 'sorted' or 'first-seen', not {self.item_id_order!r}")
        if self.user_k < 0 or self.item_k < 0:
            raise ValueError("k-core bounds must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequenceData:
    """Ordered item histories of every user, in CSR layout.

    Attributes:
        user_ids: raw user id of each user (Arrow string array, length ``n_users``).
        item_ids: raw item id of each item index: index ``i + 1`` <-> ``item_ids[i]``; 0 is padding.
        offsets: int64 ``[n_users + 1]``; user ``u``'s history is ``items[offsets[u]:offsets[u + 1]]``.
        items: int32 item indices (``1..n_items``), oldest first within each user.
        metadata: JSON-serialisable record of the source and of every preprocessing step.
    """

    user_ids: pa.Array
    item_ids: list[str]
    offsets: np.ndarray
    items: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        """Number of real items; a model needs ``vocab_size = n_items + 1``."""
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        """Item indices of user number ``user`` (a view)."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def item_index(self) -> dict[str, int]:
        """Raw item id -> index (1..N)."""
        return {raw: index + 1 for index, raw in enumerate(self.item_ids)}

    def item_vocabulary(self) -> Any:
        """The item map as a ``blossom_hf.vocabulary.ItemVocabulary`` (integer raw ids stay integers)."""
        from ..vocabulary import ItemVocabulary

        canonical_integers = all(_is_canonical_integer(raw) for raw in self.item_ids)
        return ItemVocabulary([int(raw) for raw in self.item_ids] if canonical_integers else list(self.item_ids))

    def item_popularity(self) -> np.ndarray:
        """Interaction count of every index (length ``n_items + 1``; entry 0 is 0)."""
        return np.bincount(self.items, minlength=self.n_items + 1)

    def to_dataset(self) -> datasets.Dataset:
        """The histories as an Arrow-backed ``datasets.Dataset`` with columns ``user_id``, ``item_ids``."""
        offsets = pa.array(self.offsets.astype(np.int64 if self.offsets[-1] >= 2**31 else np.int32))
        list_type = pa.LargeListArray if self.offsets[-1] >= 2**31 else pa.ListArray
        histories = list_type.from_arrays(offsets, pa.array(self.items.astype(np.int32)))
        table = pa.table({USER: self.user_ids, "item_ids": histories})
        # an explicit fingerprint: without one, datasets hashes (pickles) the whole table
        digest = xxhash.xxh3_64(np.ascontiguousarray(self.items).data)
        digest.update(np.ascontiguousarray(self.offsets).data)
        import datasets
        from datasets.table import InMemoryTable

        return datasets.Dataset(InMemoryTable(table), fingerprint=f"histories-{digest.hexdigest()}")

    def save(self, directory: str | Path) -> None:
        """Write the histories (Arrow), the item ids and the metadata (JSON) under ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_dataset().save_to_disk(str(directory / "histories"))
        (directory / "item_ids.json").write_text(json.dumps(self.item_ids))
        (directory / "metadata.json").write_text(json.dumps(self.metadata, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> SequenceData:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        import datasets

        table = datasets.load_from_disk(str(directory / "histories")).data.table
        histories = table.column("item_ids").combine_chunks()
        offsets = np.asarray(histories.offsets.to_numpy(), dtype=np.int64)
        items = np.asarray(histories.values.to_numpy(), dtype=np.int32)
        return cls(
            user_ids=table.column(USER).combine_chunks(),
            item_ids=json.loads((directory / "item_ids.json").read_text()),
            offsets=offsets - offsets[0],
            items=items,
            metadata=json.loads((directory / "metadata.json").read_text()),
        )


def preprocess(
    interactions: Interactions,
    config: PreprocessingConfig | None = None,
    item_vocabulary: list[str] | None = None,
) -> SequenceData:
    """Run the protocol's preprocessing and return the ordered histories.

    Args:
        interactions: output of :func:`~blossom_hf.data.formats.load_interactions`.
        config: optional steps; default: none of them (only ordering and id mapping).
        item_vocabulary: an existing raw item id list (e.g. a trained model's vocabulary): items are
            numbered by it instead of afresh, and interactions with items outside it are dropped
            (counted in the metadata) after the k-core step.

    Raises:
        OrderingError: the histories cannot be ordered (missing or repeated order keys, time going
            backwards along an order column).
        InteractionDataError: a step needs a column the data lacks.
    """
    config = config or PreprocessingConfig()
    table = interactions.table
    n_rows = table.num_rows
    if n_rows == 0:
        raise InteractionDataError("no interactions to preprocess (the file is empty)")
    steps: list[dict[str, Any]] = []

    user_codes, user_values = _encode(table.column(USER))
    item_codes, item_values = _encode(table.column(ITEM))
    times = _numpy(table.column(TIME), np.float64) if TIME in table.column_names else None
    order = _numpy(table.column(ORDER), np.float64) if ORDER in table.column_names else None

    # Sort once by (user, key); rows are in file order and the sort is stable, so ties keep file order.
    # Every later step only removes rows, so the order survives.
    key, key_name = order_key(times, order, interactions)
    user_rank = natural_rank(user_values)
    permutation = history_order(user_rank[user_codes], key)
    user_codes, item_codes, key = user_codes[permutation], item_codes[permutation], key[permutation]
    times = times[permutation] if times is not None else None
    if order is not None:
        check_order(user_codes, key, permutation, times, user_values, interactions)
    alive = np.ones(n_rows, dtype=bool)

    # 1. de-duplication and rating threshold
    if config.dedupe != "none":
        if config.dedupe == "user-item-time" and times is None:
            raise InteractionDataError(
                "dedupe='user-item-time' needs a time column; this data has none (use dedupe='user-item')"
            )
        duplicate = duplicate_rows(user_codes, item_codes, times if config.dedupe == "user-item-time" else None)
        alive &= ~duplicate
        steps.append(
            {
                "step": "dedupe",
                "key": config.dedupe,
                "kept": "earliest",
                "removed": int(duplicate.sum()),
                "remaining": int(alive.sum()),
            }
        )
    if config.min_rating is not None:
        if RATING not in table.column_names:
            raise InteractionDataError(
                f"min_rating={config.min_rating} needs a rating column; this data has columns {table.column_names}"
            )
        ratings = _numpy(table.column(RATING), np.float64)[permutation]
        passes = ratings >= config.min_rating  # NaN (missing rating) fails
        removed = int((alive & ~passes).sum())
        alive &= passes
        steps.append(
            {
                "step": "rating_threshold",
                "min_rating": config.min_rating,
                "removed": removed,
                "remaining": int(alive.sum()),
            }
        )

    # 2. iterated k-core
    if config.user_k > 1 or config.item_k > 1:
        alive, rounds = k_core(user_codes, item_codes, alive, config.user_k, config.item_k)
        steps.append(
            {
                "step": "k_core",
                "user_k": config.user_k,
                "item_k": config.item_k,
                "iterations": len(rounds),
                "rounds": rounds,
                "remaining": int(alive.sum()),
            }
        )

    # 3. order (already applied)
    steps.append(
        {
            "step": "order",
            "by": key_name,
            "ties": "file order (stable sort)",
            "note": "rows sorted by (user, key, line); the file need not be sorted",
        }
    )

    # 4. item ids
    if item_vocabulary is not None:
        known = {raw: index + 1 for index, raw in enumerate(item_vocabulary)}
        raw_items = item_values.to_pylist()
        code_to_index = np.array([known.get(raw, 0) for raw in raw_items], dtype=np.int64)
        unknown = alive & (code_to_index[item_codes] == 0)
        alive &= ~unknown
        item_ids = list(item_vocabulary)
        steps.append(
            {
                "step": "item_ids",
                "source": "given vocabulary",
                "n_items": len(item_ids),
                "padding_id": 0,
                "dropped_unknown_items": int(unknown.sum()),
                "remaining": int(alive.sum()),
            }
        )
    else:
        used = np.zeros(len(item_values), dtype=bool)
        used[item_codes[alive]] = True
        if config.item_id_order == "sorted":
            ranked = np.argsort(natural_rank(item_values), kind="stable")
            ordered_codes = ranked[used[ranked]]
        else:
            first = np.unique(item_codes[alive], return_index=True)[1]
            ordered_codes = item_codes[alive][np.sort(first)]
        code_to_index = np.zeros(len(item_values), dtype=np.int64)
        code_to_index[ordered_codes] = np.arange(1, len(ordered_codes) + 1)
        item_ids = pc.take(item_values, pa.array(ordered_codes)).to_pylist()
        steps.append({"step": "item_ids", "order": config.item_id_order, "n_items": len(item_ids), "padding_id": 0})

    if not alive.any():
        raise InteractionDataError(f"no interactions left after preprocessing; steps: {json.dumps(steps)}")
    kept_users = user_codes[alive]
    items = code_to_index[item_codes[alive]].astype(np.int32)
    boundaries = np.flatnonzero(np.diff(kept_users)) + 1
    starts = np.concatenate([[0], boundaries])
    offsets = np.concatenate([starts, [len(items)]]).astype(np.int64)
    user_ids = pc.take(user_values, pa.array(kept_users[starts]))

    lengths = np.diff(offsets)
    metadata = {
        "source": interactions.source,
        "input_rows": n_rows,
        "preprocessing": config.to_dict(),
        "steps": steps,
        "stats": {
            "n_users": int(len(lengths)),
            "n_items": len(item_ids),
            "n_interactions": int(len(items)),
            "history_length": {
                "min": int(lengths.min()),
                "max": int(lengths.max()),
                "mean": float(lengths.mean()),
                "median": float(np.median(lengths)),
            },
            "density": float(len(items) / (len(lengths) * max(len(item_ids), 1))),
        },
    }
    logger.info(
        "Preprocessed %d rows into %d users, %d items, %d interactions",
        n_rows,
        len(lengths),
        len(item_ids),
        len(items),
    )
    return SequenceData(user_ids=user_ids, item_ids=item_ids, offsets=offsets, items=items, metadata=metadata)


# --------------------------------------------------------------------------------------------------


def _is_canonical_integer(raw: str) -> bool:
    """``raw`` is an integer written the one way ``str(int)`` writes it (no ``007``, ``+7``, ``-0``)."""
    body = raw[1:] if raw.startswith("-") else raw
    return body.isascii() and body.isdigit() and len(raw) < 19 and str(int(raw)) == raw


def _numpy(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    if dtype is np.float64:
        return np.asarray(pc.fill_null(pc.cast(column, pa.float64()), float("nan")).to_numpy(), dtype=np.float64)
    return np.asarray(column.to_numpy(), dtype=dtype)


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer code (int32) per row and the distinct values (strings)."""
    if not pa.types.is_dictionary(column.type):
        column = pc.cast(column, pa.string()).dictionary_encode()
    if column.num_chunks > 1:
        column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int32), pa.array([], pa.string())
    codes = [np.asarray(chunk.indices.to_numpy(zero_copy_only=False)) for chunk in column.chunks]
    codes_array = codes[0] if len(codes) == 1 else np.concatenate(codes)
    return codes_array.astype(np.int32, copy=False), pc.cast(column.chunk(0).dictionary, pa.string())
