"""The item vocabulary: raw item ids <-> model indices (0 = padding), saved beside the weights."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from pathlib import Path

VOCABULARY_FILE = "item_vocabulary.json"
_FORMAT = "blossomrec-item-vocabulary"
_VERSION = 1

RawId = int | str


class UnknownItemError(KeyError):
    """A raw item id that the vocabulary does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ItemVocabulary:
    """Maps raw item ids (ints or strings, as in the data) to indices ``1..N``; index 0 is padding.

    ``raw_ids[i]`` gets index ``i + 1``. Ids are kept as strings internally; a vocabulary whose ids are all
    integers decodes back to ``int``. Unknown ids raise :class:`UnknownItemError` unless asked to skip.
    """

    def __init__(self, raw_ids: Iterable[RawId]):
        raw = list(raw_ids)
        self.id_type = "int" if raw and all(isinstance(r, int) and not isinstance(r, bool) for r in raw) else "str"
        self._raw = [str(r) for r in raw]
        self._index = {r: i + 1 for i, r in enumerate(self._raw)}
        if len(self._index) != len(self._raw):
            seen: set[str] = set()
            dupes = [r for r in self._raw if r in seen or seen.add(r)]
            raise ValueError(
                f"item vocabulary has duplicate raw ids, e.g. {dupes[:5]} (ids are compared as text, so 7 and '7' "
                "are one id; '007' and '7' are two): remove the repeats"
            )

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of items (the model's vocab_size is this + 1)."""
        return len(self._raw)

    def __contains__(self, raw_id: RawId) -> bool:
        return str(raw_id) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemVocabulary) and self._raw == other._raw and self.id_type == other.id_type

    def __repr__(self) -> str:
        head = ", ".join(self._raw[:3])
        return f"ItemVocabulary({len(self)} items: {head}{', ...' if len(self) > 3 else ''})"

    @property
    def raw_ids(self) -> list[RawId]:
        return [self._decode_one(i) for i in range(1, len(self) + 1)]

    def index(self, raw_id: RawId) -> int:
        """Index of one raw id (raises :class:`UnknownItemError`)."""
        try:
            return self._index[str(raw_id)]
        except KeyError:
            raise UnknownItemError(
                f"unknown item id {raw_id!r}: not in the item vocabulary of {len(self)} items"
            ) from None

    def encode(self, raw_ids: Iterable[RawId], unknown: str = "error") -> list[int]:
        """Indices of ``raw_ids``. ``unknown``: "error" (raise) or "skip" (drop unknown ids)."""
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
        out = []
        for raw in raw_ids:
            idx = self._index.get(str(raw))
            if idx is None:
                if unknown == "error":
                    self.index(raw)
                continue
            out.append(idx)
        return out

    def _decode_one(self, index: int) -> RawId:
        raw = self._raw[index - 1]
        return int(raw) if self.id_type == "int" else raw

    def decode(self, indices: Iterable[int]) -> list[RawId]:
        """Raw ids of model indices (index 0, padding, is refused)."""
        out = []
        for index in indices:
            index = int(index)
            if not 1 <= index <= len(self):
                raise IndexError(f"item index {index} is outside 1..{len(self)} (0 is padding)")
            out.append(self._decode_one(index))
        return out

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "id_type": self.id_type, "items": self._raw}

    @classmethod
    def from_dict(cls, data: dict, source: str = "item vocabulary") -> ItemVocabulary:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{source} is not a BlossomRec item vocabulary (missing format {_FORMAT!r})")
        if int(data.get("version", 0)) > _VERSION:
            raise ValueError(
                f"{source} has item-vocabulary version {data['version']}, newer than {_VERSION}: upgrade blossom_hf"
            )
        items = data.get("items")
        if not isinstance(items, list):
            raise ValueError(f"{source}: 'items' must be a list of raw ids")
        vocab = cls(items)
        vocab.id_type = data.get("id_type", "str")
        if vocab.id_type == "int" and not all(r.lstrip("-").isdigit() and str(int(r)) == r for r in vocab._raw):
            raise ValueError(f"{source}: id_type 'int' but some ids are not plain integers (e.g. '007'): use 'str'")
        return vocab

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / VOCABULARY_FILE
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemVocabulary:
        """Load from a file, or from a directory holding ``item_vocabulary.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCABULARY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no item vocabulary at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def identity(cls, num_items: int) -> ItemVocabulary:
        """Raw id == index (1..num_items), for data that is already indexed."""
        return cls(range(1, num_items + 1))


def _raw_id(value, row: int | None) -> RawId:
    """One raw id as a Python int or str; numpy/torch integer scalars become int. Floats, bools and other types
    are refused (an id is never reinterpreted: 7.0 is not item 7)."""
    where = "" if row is None else f"history {row}: "
    if _is_zero_dim(value):
        value = value.item()  # numpy scalar / 0-d tensor -> Python scalar
    if isinstance(value, bool):
        raise TypeError(f"{where}item id {value!r} is a bool; item ids are integers or strings")
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        raise TypeError(
            f"{where}item id {value!r} is a {type(value).__name__}; pass integer or string ids (e.g. "
            "history.astype(int) for a float column read from a table with missing values)"
        )
    raise TypeError(f"{where}item id {value!r} has type {type(value).__name__}; item ids are integers or strings")


def _raw_ids(values: list, row: int) -> list[RawId]:
    """:func:`_raw_id` of every value of one history. A history of plain Python ints (or of plain strs), the common
    case, is returned as a copy without a per-item call (the same values); anything else goes through
    :func:`_raw_id` item by item (and its errors)."""
    kind = type(values[0]) if values else int
    if (kind is int or kind is str) and all(type(x) is kind for x in values):
        return list(values)
    return [_raw_id(x, row) for x in values]


def _is_zero_dim(value) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "item") and tuple(getattr(value, "shape", (1,))) == ()


def _rows_of_array(histories) -> list | None:
    """A numpy array or torch tensor of ids as nested Python lists (None for anything else)."""
    if type(histories).__module__.split(".")[0] not in ("numpy", "torch") or not hasattr(histories, "tolist"):
        return None
    dtype = str(histories.dtype)
    if "float" in dtype or "complex" in dtype or "bool" in dtype:
        raise TypeError(
            f"histories hold {dtype} values; item ids are integers or strings (convert with .astype(int) / .long())"
        )
    ndim = histories.ndim if hasattr(histories, "ndim") else histories.dim()
    if ndim not in (1, 2):
        raise ValueError(f"an array of histories must be 1-D (one history) or 2-D (one per row), got {ndim}-D")
    rows = histories.tolist()
    return [rows] if ndim == 1 else rows


def as_histories(histories) -> list[list[RawId]]:
    """Accept one history (a flat list, 1-D numpy array or tensor of raw ids) or a batch of histories (a list of
    those, or a 2-D array with one history per row). Every id comes back as a Python int or str."""
    if isinstance(histories, Mapping):
        raise TypeError(
            "histories is a mapping; pass a list of histories, or use blossom_hf.recommend_table(model, "
            "{user: history, ...}) for user-keyed input and a table of results"
        )
    if isinstance(histories, str | bytes) or not isinstance(histories, Iterable):
        raise TypeError(
            f"histories must be a list of item ids or a list of such lists, got {type(histories).__name__}"
        )
    rows = _rows_of_array(histories)
    if rows is not None:
        return [_raw_ids(history, row) for row, history in enumerate(rows)]
    items = list(histories)
    if all(_is_scalar_id(x) for x in items):
        return [_raw_ids(items, 0)] if items else []
    out = []
    for row, history in enumerate(items):
        if isinstance(history, Mapping) or isinstance(history, str | bytes) or not isinstance(history, Iterable):
            raise TypeError(
                f"history {row} is a {type(history).__name__}, not a list of item ids (mixing ids and lists of ids?)"
            )
        array_rows = _rows_of_array(history)
        if array_rows is not None and len(array_rows) != 1:
            raise ValueError(f"history {row} is a 2-D array; each history must be 1-D")
        values = array_rows[0] if array_rows is not None else list(history)
        out.append(_raw_ids(values, row))
    return out


def _is_scalar_id(value) -> bool:
    return isinstance(value, int | str | float) or _is_zero_dim(value)
