"""Readers: every supported interaction file becomes one canonical Arrow table, memory-mapped from a cache.

Parsing uses pyarrow's own readers (multi-threaded CSV, Parquet, JSON Lines, Arrow IPC) and Arrow
compute kernels; nothing loops over rows in Python. The canonical table is written once to an Arrow IPC
file in a cache keyed on the file's *content* (not its name, size or time), and every later read
memory-maps that file, so an edited file is always noticed and a re-read costs a hash of the bytes.

Canonical columns (:data:`USER`, :data:`ITEM`, ...):

============  ==============================  ===========================================================
column        type                            meaning
============  ==============================  ===========================================================
``user_id``   dictionary<int32, string>       raw user id (text, see "Raw ids" below)
``item_id``   dictionary<int32, string>       raw item id (text)
``timestamp`` float64                         interaction time (seconds or any number; may be null). Optional.
``order``     float64                         explicit position of the interaction in its user's history.
``rating``    float64                         explicit rating. Optional.
``line``      int64                           1-based line of the row (Parquet / JSON Lines / Arrow: row);
                                              :attr:`Interactions.dataset` materialises it on demand.
============  ==============================  ===========================================================

Raw ids: an id is text and is never reinterpreted. A text field (CSV, TSV, ``.dat``, ``u.data``,
``.inter``, sequence files, string columns of Parquet/JSON/Arrow) is kept exactly, minus surrounding
white space and a UTF-8 byte-order mark, so ``007`` and ``7`` are two items and so are ``7.0`` and ``7``.
An integer column (Parquet/JSON/Arrow) is written in plain decimal (``7``). A floating-point id column is
refused: the number no longer says how the id was written.

Supported formats (``format=``):

* ``movielens`` -- MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, latin-1.
* ``ml-100k`` -- MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header.
* ``recbole`` -- RecBole atomic ``.inter``: TSV whose header fields are typed, ``user_id:token``.
* ``csv`` / ``tsv`` / ``parquet`` / ``jsonl`` / ``arrow`` -- a table with a header and user-chosen column
  names (``user_col``, ``item_col``, and ``time_col`` and/or ``order_col``, optional ``rating_col``).
  ``parquet`` also reads a folder of part files (as Spark, polars or Ray write them) in name order.
  When the item column is a list column (one row per user, items oldest first, as a distributed engine
  writes per-user sequences), the lists are the histories; a list time column, if named, gives their times.
* ``sequences`` -- one line per user, ``user item item ...`` in chronological order (S3Rec ``Beauty.txt``).
* ``user-item`` -- one ``user item`` pair per line, each user's lines in chronological order
  (SASRec ``Video.txt``).
* ``auto`` -- chosen from the file name (``.dat``, ``.data``, ``.inter``, ``.csv``, ``.tsv``,
  ``.parquet`` or a folder of them, ``.jsonl``/``.json``, ``.arrow``/``.feather``, ``.txt`` sniffed
  between ``sequences`` and ``user-item``).

Named presets for the datasets in ``../shared/data`` are in :data:`PRESETS` (``ml-1m``, ``ml-100k``,
``beauty``, ``video-games``); :func:`load_interactions` accepts a preset name instead of a path.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from .errors import InteractionDataError, MalformedLineError, UnknownColumnError

logger = logging.getLogger(__name__)

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
ORDER = "order"
RATING = "rating"
LINE = "line"

FORMATS = (
    "auto",
    "movielens",
    "ml-100k",
    "recbole",
    "csv",
    "tsv",
    "parquet",
    "jsonl",
    "arrow",
    "sequences",
    "user-item",
)
_FIXED_LAYOUT_FORMATS = ("movielens", "ml-100k", "sequences", "user-item")
_NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_ZONED_TIME_PATTERN = r"\d{2}:\d{2}(:\d{2}(\.\d*)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"
DATA_DIR_ENV = "BLOSSOM_DATA_DIR"
CACHE_ENV = "BLOSSOM_HF_CACHE"
_CACHE_VERSION = 1  # bump when the canonical table of any reader changes
_BOM = b"\xef\xbb\xbf"
_ID_TYPE = pa.dictionary(pa.int32(), pa.string())


class Interactions:
    """Interactions in canonical columns plus a description of where they came from.

    Attributes:
        table: the canonical Arrow table (memory-mapped when it came from :func:`load_interactions`);
            rows in file order.
        source: JSON-serialisable description (path, format, column mapping, row counts, skips).
        fingerprint: content fingerprint of the file(s) read (``xxh3-128:<hex>``), or ``None``.
    """

    def __init__(
        self,
        table: pa.Table | None = None,
        source: dict[str, Any] | None = None,
        *,
        dataset: datasets.Dataset | None = None,
        fingerprint: str | None = None,
        first_line: int = 1,
        removed_rows: np.ndarray | None = None,
    ):
        if table is None:
            if dataset is None:
                raise TypeError("Interactions needs a table (or a datasets.Dataset)")
            table = dataset.data.table
        self.table = table
        self.source = source or {}
        self.fingerprint = fingerprint
        self._first_line = int(first_line)
        removed = np.asarray(removed_rows if removed_rows is not None else [], dtype=np.int64)
        self._removed_before = removed - np.arange(len(removed), dtype=np.int64)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def has_time(self) -> bool:
        return TIME in self.table.column_names

    @property
    def has_order(self) -> bool:
        return ORDER in self.table.column_names

    @property
    def has_rating(self) -> bool:
        return RATING in self.table.column_names

    def column(self, name: str) -> pa.ChunkedArray:
        """The Arrow column ``name`` (no copy; ``line`` is computed)."""
        if name == LINE and LINE not in self.table.column_names:
            return pa.chunked_array([pa.array(self.line_numbers(np.arange(len(self), dtype=np.int64)))])
        return self.table.column(name)

    def line_numbers(self, rows: np.ndarray) -> np.ndarray:
        """1-based file line (or row) of the rows at positions ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        if LINE in self.table.column_names:
            return np.asarray(pc.take(self.table.column(LINE), pa.array(rows)).to_numpy(), dtype=np.int64)
        shift = np.searchsorted(self._removed_before, rows, side="right")
        return rows + shift + self._first_line

    @property
    def dataset(self) -> datasets.Dataset:
        """The interactions as a ``datasets.Dataset`` (ids decoded to strings, ``line`` included)."""
        columns = {}
        for name in self.table.column_names:
            values = self.table.column(name)
            columns[name] = pc.cast(values, pa.string()) if pa.types.is_dictionary(values.type) else values
        if LINE not in columns:
            columns[LINE] = self.column(LINE)
        table = pa.table(columns)
        return datasets.Dataset(table, fingerprint=(self.fingerprint or "interactions").replace(":", "-"))


@dataclass(frozen=True)
class DatasetPreset:
    """Where a known dataset lives (relative to the data root) and how to read it."""

    name: str
    relative_path: str
    format: str
    options: dict[str, Any]
    description: str


PRESETS: dict[str, DatasetPreset] = {
    "ml-1m": DatasetPreset(
        name="ml-1m",
        relative_path="ml-1m/ratings_ordered.tsv.gz",
        format="tsv",
        options={
            "user_col": "user_id",
            "item_col": "item_id",
            "time_col": "timestamp",
            "order_col": "seq_idx",
            "rating_col": "rating",
        },
        description="MovieLens-1M, 1,000,209 ratings, ordered by the per-user chronological index seq_idx "
        "(20% of timestamps are missing, so seq_idx, not timestamp, orders the histories).",
    ),
    "ml-100k": DatasetPreset(
        name="ml-100k",
        relative_path="ml-100k/u.data",
        format="ml-100k",
        options={},
        description="MovieLens-100K u.data, 100,000 ratings with timestamps (ties keep file order).",
    ),
    "beauty": DatasetPreset(
        name="beauty",
        relative_path="beauty/Beauty.txt",
        format="sequences",
        options={},
        description="Amazon Beauty 5-core (S3Rec version), one chronological sequence per line, no times.",
    ),
    "video-games": DatasetPreset(
        name="video-games",
        relative_path="video-games/Video.txt",
        format="user-item",
        options={},
        description="Amazon Video Games (SASRec version), 'user item' lines in chronological order.",
    ),
}


def default_data_root() -> Path:
    """The folder holding the preset datasets.

    ``$BLOSSOM_DATA_DIR`` if set, else ``<repository>/../shared/data`` (the project's shared copy).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def preset_path(name: str, data_dir: str | Path | None = None) -> Path:
    """Absolute path of the file behind preset ``name``; raises if the preset or the file is missing."""
    if name not in PRESETS:
        raise InteractionDataError(f"unknown dataset preset {name!r}; known presets: {', '.join(PRESETS)}")
    root = Path(data_dir) if data_dir is not None else default_data_root()
    path = root / PRESETS[name].relative_path
    if not path.exists():
        raise FileNotFoundError(
            f"dataset preset {name!r} expects {path}, which does not exist "
            f"(set ${DATA_DIR_ENV} or pass data_dir: the folder holding {PRESETS[name].relative_path})"
        )
    return path


def load_interactions(
    path: str | Path,
    format: str = "auto",
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    order_col: str | None = None,
    rating_col: str | None = None,
    assume_file_order: bool = False,
    sep: str | None = None,
    encoding: str | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | None = None,
) -> Interactions:
    """Read an interaction file (or a named preset) into canonical columns.

    Args:
        path: a file, a folder of Parquet part files, or a preset name from :data:`PRESETS` (``ml-1m``,
            ``ml-100k``, ``beauty``, ``video-games``) resolved under ``data_dir`` (default
            :func:`default_data_root`).
        format: one of :data:`FORMATS`; ``auto`` guesses from the file name.
        user_col, item_col: column names for ``csv``/``tsv``/``parquet``/``jsonl``/``arrow`` (required
            there) and ``recbole`` (default ``user_id`` / ``item_id``). Not accepted for fixed layouts.
        time_col: column holding the interaction time (numbers, or date-times for Parquet/JSON/ISO text).
        order_col: column holding each interaction's position in its user's history. When both are
            given, the order column decides the order and the time is kept (e.g. for de-duplication).
        rating_col: optional rating column (needed only for a rating threshold).
        assume_file_order: for tables without a time or order column: the rows are already in
            chronological order per user, so the file order is the order.
        sep: field separator for ``csv`` (default ``,``) and ``tsv`` (default tab).
        encoding: text encoding (default utf-8; latin-1 for ``movielens``).
        cache_dir: folder of the parsed-table cache (default ``$BLOSSOM_HF_CACHE``, else
            ``<datasets cache>/blossom_hf``); entries are keyed on the file's content and the options.

    Returns:
        :class:`Interactions`.

    Raises:
        MalformedLineError: a line cannot be parsed (message names the file, the line and the fix).
        UnknownColumnError: a named column is not in the file (message lists the available ones).
        InteractionDataError: other problems (unknown format, empty file, no way to order, ...).
    """
    path_str = str(path)
    preset: DatasetPreset | None = None
    if path_str in PRESETS and not Path(path_str).exists():
        preset = PRESETS[path_str]
        path = preset_path(path_str, data_dir)
        if format == "auto":
            format = preset.format
        user_col = user_col or preset.options.get("user_col")
        item_col = item_col or preset.options.get("item_col")
        time_col = time_col or preset.options.get("time_col")
        order_col = order_col or preset.options.get("order_col")
        rating_col = rating_col or preset.options.get("rating_col")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"interaction file {path} does not exist (known presets: {', '.join(PRESETS)})")
    if format not in FORMATS:
        raise InteractionDataError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "auto":
        format = guess_format(path)
        logger.info("Reading %s as format %r (guessed from the file name)", path, format)
    if format in _FIXED_LAYOUT_FORMATS:
        given = {
            "user_col": user_col,
            "item_col": item_col,
            "time_col": time_col,
            "order_col": order_col,
            "rating_col": rating_col,
        }
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise InteractionDataError(
                f"format {format!r} has a fixed layout; column options {', '.join(named)} do not apply "
                "(use format='csv'/'tsv' for files with named columns)"
            )
    if path.is_dir() and format != "parquet":
        raise InteractionDataError(f"{path} is a folder; only format='parquet' reads a folder (of part files)")
    _refuse_empty(path, format)

    options = {
        "format": format,
        "user_col": user_col,
        "item_col": item_col,
        "time_col": time_col,
        "order_col": order_col,
        "rating_col": rating_col,
        "assume_file_order": assume_file_order,
        "sep": sep,
        "encoding": encoding,
        "version": _CACHE_VERSION,
    }
    fingerprint = content_fingerprint(path)
    key = xxhash.xxh3_128_hexdigest(json.dumps({"content": fingerprint, **options}, sort_keys=True).encode())
    cache = _cache_root(cache_dir)
    cached = _read_cache(cache, key, fingerprint)
    if cached is not None:
        logger.info("Read %d interactions of %s from the cache %s", len(cached), path, cache)
        interactions = cached
    else:
        reader_result = _read(path, format, user_col, item_col, time_col, order_col, rating_col,
                              assume_file_order, sep, encoding)  # fmt: skip
        interactions = _write_cache(cache, key, fingerprint, *reader_result)
        logger.info("Read %d interactions from %s (%s)", len(interactions), path, format)
    interactions.source.update({"path": str(path), "format": format, "fingerprint": fingerprint})
    if preset is not None:
        interactions.source["preset"] = preset.name
    return interactions


def content_fingerprint(path: str | Path) -> str:
    """``xxh3-128:<hex>`` of the bytes of a file (or of every file in a folder, with their names)."""
    path = Path(path)
    digest = xxhash.xxh3_128()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return f"xxh3-128:{digest.hexdigest()}"


def guess_format(path: Path) -> str:
    """Pick a format from the file name (and, for ``.txt``, from the first lines)."""
    if path.is_dir():
        if _part_files(path):
            return "parquet"
        raise InteractionDataError(f"{path} is a folder without .parquet files; pass a file or format=")
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    table = {
        ".dat": "movielens",
        ".data": "ml-100k",
        ".inter": "recbole",
        ".csv": "csv",
        ".tsv": "tsv",
        ".parquet": "parquet",
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".arrow": "arrow",
        ".feather": "arrow",
        ".ipc": "arrow",
    }
    for suffix, fmt in table.items():
        if name.endswith(suffix):
            return fmt
    if name.endswith(".txt"):
        with fsspec.open(str(path), "rt", compression="infer", encoding="utf-8", errors="replace") as handle:
            for _, line in zip(range(1000), handle, strict=False):
                if len(line.split()) > 2:
                    return "sequences"
        return "user-item"
    raise InteractionDataError(
        f"cannot guess the format of {path} from its name; pass format= one of {', '.join(FORMATS[1:])}"
    )


# --------------------------------------------------------------------------------------------------
# the cache of parsed tables (Arrow IPC files, memory-mapped)


def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(datasets.config.HF_DATASETS_CACHE) / "blossom_hf" / "interactions"


def _read_cache(root: Path, key: str, fingerprint: str) -> Interactions | None:
    path = root / f"{key}.arrow"
    if not path.is_file():
        return None
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        meta = json.loads(table.schema.metadata[b"blossom_hf"])
    except (pa.ArrowInvalid, OSError, KeyError, ValueError, TypeError) as error:
        logger.warning("Ignoring the unreadable cache entry %s (%s); reading the file again", path, error)
        return None
    return Interactions(
        table.replace_schema_metadata(None),
        meta["source"],
        fingerprint=fingerprint,
        first_line=meta["first_line"],
        removed_rows=np.asarray(meta["removed_rows"], dtype=np.int64),
    )


def _write_cache(
    root: Path, key: str, fingerprint: str, table: pa.Table, source: dict[str, Any], first_line: int,
    removed_rows: np.ndarray,
) -> Interactions:  # fmt: skip
    """Write the canonical table to ``root/<key>.arrow`` (staged, then renamed) and memory-map it."""
    if len(removed_rows) > 100_000 and LINE not in table.column_names:
        lines = Interactions(table, first_line=first_line, removed_rows=removed_rows).column(LINE)
        table = table.append_column(LINE, lines)
        removed_rows = np.zeros(0, dtype=np.int64)
    meta = {"source": source, "first_line": first_line, "removed_rows": [int(r) for r in removed_rows]}
    table = table.replace_schema_metadata({"blossom_hf": json.dumps(meta)})
    try:
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"{key}.arrow"
        staging = root / f"{key}.arrow.{os.getpid()}.partial"
        with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 22)
        os.replace(staging, final)
    except OSError as error:
        logger.warning("Could not write the parsed-table cache under %s (%s); keeping the table in memory", root, error)
        return Interactions(table.replace_schema_metadata(None), source, fingerprint=fingerprint,
                            first_line=first_line, removed_rows=removed_rows)  # fmt: skip
    del table
    cached = _read_cache(root, key, fingerprint)
    if cached is None:  # pragma: no cover - just written
        raise InteractionDataError(f"the cache entry {final} just written cannot be read back")
    return cached


# --------------------------------------------------------------------------------------------------
# dispatch and checks shared by every format


def _read(
    path: Path,
    format: str,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    rating_col: str | None,
    assume_file_order: bool,
    sep: str | None,
    encoding: str | None,
) -> tuple[pa.Table, dict[str, Any], int, np.ndarray]:
    """(canonical table, source, first line, removed rows) of one file."""
    no_removed = np.zeros(0, dtype=np.int64)
    if format == "movielens":
        table, source = _read_fixed_fields(path, "::", [USER, ITEM, RATING, TIME], encoding or "latin-1")
        return table, source, 1, no_removed
    if format == "ml-100k":
        table, source = _read_fixed_fields(path, "\t", [USER, ITEM, RATING, TIME], encoding or "utf-8")
        return table, source, 1, no_removed
    if format == "sequences":
        return (*_read_sequence_lines(path, encoding or "utf-8"), 1, no_removed)
    if format == "user-item":
        return (*_read_user_item_lines(path, encoding or "utf-8"), 1, no_removed)
    if format == "recbole":
        table, source = _read_recbole(
            path, user_col, item_col, time_col, order_col, rating_col, assume_file_order, encoding or "utf-8"
        )
        return table, source, 1, no_removed
    if format in ("csv", "tsv"):
        return _read_csv(path, format, user_col, item_col, time_col, order_col, rating_col, assume_file_order,
                         sep, encoding or "utf-8")  # fmt: skip
    return _read_typed(path, format, user_col, item_col, time_col, order_col, rating_col, assume_file_order)


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return fsspec.open(str(path), "rb", compression="infer").open()


def _refuse_empty(path: Path, format: str) -> None:
    """One clear line for an empty file (of any format) instead of a parser's error."""
    if path.is_dir():
        return
    try:
        with _open_bytes(path) as handle:
            head = handle.read(1 << 12)
    except OSError as error:
        raise InteractionDataError(f"{path}: cannot read the file: {error}") from error
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
    if not head.strip():
        raise InteractionDataError(
            f"{path} is empty (no {format} content): nothing to read; check that the file was written completely"
        )


# --------------------------------------------------------------------------------------------------
# line-oriented text formats (parsed with Arrow string kernels, line numbers exact)


def _read_lines(path: Path, encoding: str) -> pa.ChunkedArray:
    """Every line of a text file (BOM stripped, ``\\r`` kept for the trims below) as Arrow strings."""
    with _open_bytes(path) as handle:
        raw = handle.read()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise _decode_error(path, raw, error, encoding) from None
    except LookupError:
        raise InteractionDataError(f"{path}: unknown encoding {encoding!r} (try utf-8 or latin-1)") from None
    del raw
    if text.endswith("\n"):
        text = text[:-1]
    lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n")
    return pa.chunked_array([pc.cast(pc.list_flatten(lines), pa.string())])


def _decode_error(path: Path, raw: bytes, error: UnicodeDecodeError, encoding: str) -> MalformedLineError:
    line = raw.count(b"\n", 0, error.start) + 1
    column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
    return MalformedLineError(
        path,
        line,
        f"column {column}: byte {raw[error.start:error.start + 1]!r} is not valid {encoding}; "
        "pass the file's encoding (encoding='latin-1', --encoding latin-1)",
    )


def _drop_blank(lines: pa.ChunkedArray, first_line: int = 1) -> tuple[pa.ChunkedArray, np.ndarray, int]:
    """Remove blank lines; return the rest, their 1-based line numbers, and how many were blank."""
    trimmed = pc.utf8_trim_whitespace(lines)
    blank = pc.equal(trimmed, "").to_numpy(zero_copy_only=False)
    numbers = np.flatnonzero(~blank).astype(np.int64) + first_line
    n_blank = int(blank.sum())
    if n_blank:
        trimmed = pc.filter(trimmed, pa.array(~blank))
    return trimmed, numbers, n_blank


def _check_field_counts(
    path: Path,
    split: pa.ChunkedArray,
    lines: pa.ChunkedArray,
    numbers: np.ndarray,
    expected: int,
    sep_name: str,
) -> None:
    counts = pc.list_value_length(split).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(counts != expected)
    if bad.size:
        i = int(bad[0])
        raise MalformedLineError(
            path,
            int(numbers[i]),
            f"expected {expected} fields separated by {sep_name}, found {int(counts[i])} "
            f"({bad.size} such line(s) in the file)",
            lines[i].as_py(),
        )


def _read_fixed_fields(path: Path, sep: str, names: list[str], encoding: str) -> tuple[pa.Table, dict[str, Any]]:
    lines, numbers, n_blank = _drop_blank(_read_lines(path, encoding))
    split = pc.split_pattern(lines, sep)
    _check_field_counts(path, split, lines, numbers, len(names), repr(sep))
    columns: dict[str, pa.Array] = {}
    for index, name in enumerate(names):
        values = pc.utf8_trim_whitespace(pc.list_element(split, index))
        if name in (USER, ITEM):
            columns[name] = _id_column(path, values, numbers, name, lines)
        else:
            columns[name] = _parse_numbers(path, values, numbers, name, lines)
    columns[LINE] = pa.array(numbers)
    source = {"columns": {name: f"field {i + 1}" for i, name in enumerate(names)}, "blank_lines": n_blank}
    return pa.table(columns), source


def _read_sequence_lines(path: Path, encoding: str) -> tuple[pa.Table, dict[str, Any]]:
    lines, numbers, n_blank = _drop_blank(_read_lines(path, encoding))
    split = pc.utf8_split_whitespace(lines)
    counts = pc.list_value_length(split).to_numpy(zero_copy_only=False)
    empty = counts < 2
    if empty.any():
        logger.warning(
            "%s: skipped %d line(s) holding a user id but no item (first: line %d)",
            path,
            int(empty.sum()),
            int(numbers[np.flatnonzero(empty)[0]]),
        )
        keep = pa.array(~empty)
        split, lines, numbers, counts = (
            pc.filter(split, keep),
            pc.filter(lines, keep),
            numbers[~empty],
            counts[~empty],
        )
    users = pc.list_element(split, 0)
    items_per_line = pc.list_slice(split, 1)
    parent = pc.list_parent_indices(items_per_line).to_numpy(zero_copy_only=False)
    items = pc.list_flatten(items_per_line)
    item_lines = numbers[parent]
    user_column = _id_column(path, users, numbers, USER, lines)
    table = pa.table(
        {
            USER: pc.take(user_column, pa.array(parent)),
            ITEM: _id_column(path, items, item_lines, ITEM),
            # a running index over the whole file: a user spread over several lines keeps file order
            ORDER: pa.array(np.arange(len(parent), dtype=np.float64)),
            LINE: pa.array(item_lines),
        }
    )
    source = {
        "columns": {USER: "first token of each line", ITEM: "following tokens", ORDER: "position in file"},
        "blank_lines": n_blank,
        "lines_without_items": int(empty.sum()),
    }
    return table, source


def _read_user_item_lines(path: Path, encoding: str) -> tuple[pa.Table, dict[str, Any]]:
    lines, numbers, n_blank = _drop_blank(_read_lines(path, encoding))
    split = pc.utf8_split_whitespace(lines)
    _check_field_counts(path, split, lines, numbers, 2, "white space")
    table = pa.table(
        {
            USER: _id_column(path, pc.list_element(split, 0), numbers, USER, lines),
            ITEM: _id_column(path, pc.list_element(split, 1), numbers, ITEM, lines),
            ORDER: pa.array(numbers.astype(np.float64)),
            LINE: pa.array(numbers),
        }
    )
    source = {"columns": {USER: "field 1", ITEM: "field 2", ORDER: "line number"}, "blank_lines": n_blank}
    return table, source


def _read_recbole(
    path: Path,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    rating_col: str | None,
    assume_file_order: bool,
    encoding: str,
) -> tuple[pa.Table, dict[str, Any]]:
    raw = _read_lines(path, encoding)
    header = raw[0].as_py().rstrip("\r\n").split("\t")
    if len(raw) < 2 or not pc.any(pc.not_equal(pc.utf8_trim_whitespace(raw.slice(1)), "")).as_py():
        raise InteractionDataError(f"{path}: the file has a header line but no data rows; nothing to read")
    names = [h.split(":", 1)[0].strip() for h in header]
    types = {h.split(":", 1)[0].strip(): (h.split(":", 1)[1].strip() if ":" in h else "token") for h in header}
    user_col = user_col or "user_id"
    item_col = item_col or "item_id"
    if time_col is None and order_col is None and not assume_file_order and "timestamp" in names:
        time_col = "timestamp"
    if rating_col is None and "rating" in names:
        rating_col = "rating"
    wanted = _wanted_columns(path, names, user_col, item_col, time_col, order_col, rating_col, assume_file_order)
    lines, numbers, n_blank = _drop_blank(raw.slice(1), first_line=2)
    split = pc.split_pattern(lines, "\t")
    _check_field_counts(path, split, lines, numbers, len(names), "tabs (as many as header fields)")
    columns: dict[str, pa.Array] = {}
    for canonical, name in wanted.items():
        values = pc.utf8_trim_whitespace(pc.list_element(split, names.index(name)))
        if canonical in (USER, ITEM):
            columns[canonical] = _id_column(path, values, numbers, canonical, lines)
        elif canonical == TIME:
            columns[canonical] = _parse_times(path, values, numbers, lines)
        else:
            columns[canonical] = _parse_numbers(path, values, numbers, canonical, lines)
    if assume_file_order and ORDER not in columns:
        columns[ORDER] = pa.array(numbers.astype(np.float64))
    columns[LINE] = pa.array(numbers)
    source = {
        "columns": dict(wanted),
        "field_types": {wanted_name: types[wanted_name] for wanted_name in wanted.values()},
        "blank_lines": n_blank,
        "order": "file order" if assume_file_order and order_col is None else None,
    }
    return pa.table(columns), source


# --------------------------------------------------------------------------------------------------
# tables with named columns


def _wanted_columns(
    path: Path,
    available: list[str],
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    rating_col: str | None,
    assume_file_order: bool,
    sep: str | None = None,
) -> dict[str, str]:
    """Map canonical name -> file column, checking that every named column exists."""
    if user_col is None or item_col is None:
        missing = "user_col" if user_col is None else "item_col"
        raise InteractionDataError(
            f"{path}: {missing} is required for a table with named columns; available columns: "
            f"{', '.join(map(repr, available))}"
        )
    if time_col is None and order_col is None and not assume_file_order:
        raise InteractionDataError(
            f"{path}: cannot order the interactions: give time_col or order_col, or assume_file_order=True "
            f"if each user's rows are already in chronological order; available columns: "
            f"{', '.join(map(repr, available))}"
        )
    wanted: dict[str, str] = {}
    for canonical, name, role in (
        (USER, user_col, "user"),
        (ITEM, item_col, "item"),
        (TIME, time_col, "time"),
        (ORDER, order_col, "order"),
        (RATING, rating_col, "rating"),
    ):
        if name is None:
            continue
        if name not in available:
            if sep is not None and len(available) == 1:
                _suggest_separator(path, available[0], sep, name)
            raise UnknownColumnError(path, name, role, available)
        wanted[canonical] = name
    return wanted


def _suggest_separator(path: Path, header: str, sep: str, wanted: str) -> None:
    """The header has one column: if another separator splits it into named columns, say so."""
    for candidate, shown in ((",", "','"), ("\t", "'\\t'"), (";", "';'"), ("|", "'|'"), ("::", "'::'")):
        if candidate != sep and candidate in header:
            fields = [f.strip() for f in header.split(candidate)]
            hint = f" and it holds {wanted!r}" if wanted in fields else ""
            raise InteractionDataError(
                f"{path}, line 1: the header {header[:80]!r} is one column when split by {sep!r}, but it splits "
                f"into {len(fields)} columns by {shown}{hint}: pass sep={shown} (--sep {shown})"
            )


def _read_header(path: Path, sep: str, encoding: str) -> list[str]:
    with _open_bytes(path) as handle:
        first = handle.readline()
    if first.startswith(_BOM):
        first = first[len(_BOM) :]
    try:
        text = first.decode(encoding)
    except UnicodeDecodeError as error:
        raise _decode_error(path, first, error, encoding) from None
    if not text.strip():
        raise MalformedLineError(path, 1, "the first line must be a header naming the columns")
    return next(csv.reader([text.rstrip("\r\n")], delimiter=sep))


def _read_csv(
    path: Path,
    format: str,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    rating_col: str | None,
    assume_file_order: bool,
    sep: str | None,
    encoding: str,
) -> tuple[pa.Table, dict[str, Any], int, np.ndarray]:
    import pyarrow.csv as pacsv

    sep = sep or ("\t" if format == "tsv" else ",")
    if len(sep) != 1:
        raise InteractionDataError(f"{path}: the csv/tsv separator must be one character, got {sep!r}")
    available = _read_header(path, sep, encoding)
    wanted = _wanted_columns(
        path, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order, sep
    )
    used = list(dict.fromkeys(wanted.values()))
    numeric = [name for canonical, name in wanted.items() if canonical not in (USER, ITEM)]
    as_text = set()

    def read(text_columns: set[str]) -> pa.Table:
        types = {name: _ID_TYPE for canonical, name in wanted.items() if canonical in (USER, ITEM)}
        for name in numeric:
            types.setdefault(name, pa.string() if name in text_columns else pa.float64())
        return pacsv.read_csv(
            str(path),
            read_options=pacsv.ReadOptions(encoding=encoding, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=sep, ignore_empty_lines=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=used,
                column_types=types,
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    while True:
        try:
            table = read(as_text)
            break
        except pa.ArrowInvalid as error:
            message = str(error)
            match = re.search(r"In CSV column #(\d+): CSV conversion error to double", message)
            if match and available[int(match.group(1))] in numeric and available[int(match.group(1))] not in as_text:
                as_text.add(available[int(match.group(1))])  # validated below, line by line
                continue
            raise _diagnose_csv(path, sep, encoding, len(available), message) from None
        except UnicodeDecodeError as error:
            raise _diagnose_csv(path, sep, encoding, len(available), str(error)) from None
    if table.num_rows == 0:
        raise InteractionDataError(f"{path}: the file has a header line but no data rows; nothing to read")
    numbers = np.arange(2, 2 + table.num_rows, dtype=np.int64)
    raw = {canonical: table.column(name) for canonical, name in wanted.items()}
    return _canonical_columns(path, raw, numbers, assume_file_order, order_col, wanted, first_line=2)


def _diagnose_csv(path: Path, sep: str, encoding: str, n_fields: int, message: str) -> InteractionDataError:
    """Find the line behind a CSV reader error (slow, only on the error path)."""
    with _open_bytes(path) as handle:
        for number, raw_line in enumerate(handle, start=1):
            if number == 1 and raw_line.startswith(_BOM):
                raw_line = raw_line[len(_BOM) :]
            try:
                text = raw_line.decode(encoding)
            except UnicodeDecodeError as error:
                return MalformedLineError(
                    path,
                    number,
                    f"column {error.start + 1}: byte {raw_line[error.start:error.start + 1]!r} is not valid "
                    f"{encoding}; pass the file's encoding (encoding='latin-1', --encoding latin-1)",
                )
            stripped = text.rstrip("\r\n")
            if number == 1 or not stripped.strip():
                continue
            fields = next(csv.reader([stripped], delimiter=sep))
            if len(fields) != n_fields:
                return MalformedLineError(
                    path,
                    number,
                    f"expected {n_fields} fields separated by {sep!r} (as in the header), found {len(fields)}",
                    stripped,
                )
    return InteractionDataError(f"{path}: cannot parse as csv: {message.splitlines()[0]}")


def _part_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))


def _read_typed(
    path: Path,
    format: str,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    rating_col: str | None,
    assume_file_order: bool,
) -> tuple[pa.Table, dict[str, Any], int, np.ndarray]:
    """Parquet (file or folder of parts), JSON Lines and Arrow IPC: typed columns."""
    if format == "parquet":
        import pyarrow.parquet as pq

        files = _part_files(path) if path.is_dir() else [path]
        if not files:
            raise InteractionDataError(f"{path} is a folder without .parquet files")
        try:
            schema = pq.read_schema(files[0])
        except (pa.ArrowInvalid, OSError) as error:
            raise InteractionDataError(f"{files[0]}: not a readable Parquet file ({error}); check the file") from None
        available = list(schema.names)
        lists = item_col in available and _is_list(schema.field(item_col).type)
        wanted = _wanted_columns(
            path, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order or lists
        )
        used = list(dict.fromkeys(wanted.values()))
        strings = [n for n in {wanted[USER], wanted[ITEM]} if pa.types.is_string(schema.field(n).type)]
        try:
            parts = [pq.read_table(f, columns=used, memory_map=True, read_dictionary=strings) for f in files]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        except (pa.ArrowInvalid, OSError) as error:
            raise InteractionDataError(f"{path}: cannot read the Parquet data ({error})") from None
    elif format == "arrow":
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except pa.ArrowInvalid:
            try:
                table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
            except pa.ArrowInvalid as error:
                raise InteractionDataError(f"{path}: not an Arrow IPC file or stream ({error})") from None
        available = list(table.column_names)
        lists = item_col in available and _is_list(table.schema.field(item_col).type)
        wanted = _wanted_columns(
            path, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order or lists
        )
    else:
        table = _read_json_lines(path)
        available = list(table.column_names)
        lists = item_col in available and _is_list(table.schema.field(item_col).type)
        wanted = _wanted_columns(
            path, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order or lists
        )
    if table.num_rows == 0:
        raise InteractionDataError(f"{path}: the {format} data hold no rows; nothing to read")
    raw = {canonical: table.column(name) for canonical, name in wanted.items()}
    numbers = np.arange(1, 1 + table.num_rows, dtype=np.int64)
    if _is_list(raw[ITEM].type):
        return _explode_sequences(path, raw, numbers, wanted)
    return _canonical_columns(path, raw, numbers, assume_file_order, order_col, wanted, first_line=1)


def _read_json_lines(path: Path) -> pa.Table:
    import pyarrow.json as pajson

    with _open_bytes(path) as handle:
        data = handle.read()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as error:
        raise _diagnose_json(path, data, str(error)) from None


def _diagnose_json(path: Path, data: bytes, message: str) -> InteractionDataError:
    """Find the line behind a JSON reader error (slow, only on the error path)."""
    kinds: dict[str, tuple[str, int]] = {}
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            record = json.loads(raw_line)
        except UnicodeDecodeError as error:
            return MalformedLineError(path, number, f"column {error.start + 1}: not valid UTF-8 ({error.reason})")
        except json.JSONDecodeError as error:
            return MalformedLineError(
                path, number, f"column {error.colno}: invalid JSON ({error.msg})", raw_line.decode(errors="replace")
            )
        if not isinstance(record, dict):
            return MalformedLineError(path, number, "each line must be one JSON object {\"column\": value, ...}")
        for key, value in record.items():
            kind = "text" if isinstance(value, str) else "number" if isinstance(value, int | float) else None
            if kind is None or value is None:
                continue
            first = kinds.setdefault(key, (kind, number))
            if first[0] != kind:
                return MalformedLineError(
                    path,
                    number,
                    f"field {key!r} is a {kind} here but a {first[0]} on line {first[1]}: write every value of a "
                    "column the same way (ids as strings, for example)",
                )
    return InteractionDataError(f"{path}: cannot read as JSON Lines: {message.splitlines()[0]}")


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _explode_sequences(
    path: Path, raw: dict[str, pa.ChunkedArray], numbers: np.ndarray, wanted: dict[str, str]
) -> tuple[pa.Table, dict[str, Any], int, np.ndarray]:
    """Rows of (user, [items...], optional [times...]) -> one canonical row per item, in list order."""
    items = raw[ITEM].combine_chunks()
    parent = np.asarray(pc.list_parent_indices(items).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(items)
    if _is_list(raw[USER].type):
        raise InteractionDataError(f"{path}: the user column {wanted[USER]!r} is a list; it must hold one id per row")
    lines = numbers[parent]
    columns: dict[str, pa.Array] = {
        USER: pc.take(_id_column(path, raw[USER], numbers, USER), pa.array(parent)),
        ITEM: _id_column(path, flat, lines, ITEM),
    }
    for canonical in (TIME, RATING):
        if canonical not in raw:
            continue
        values = raw[canonical].combine_chunks()
        if not _is_list(values.type):
            raise InteractionDataError(
                f"{path}: the item column {wanted[ITEM]!r} holds lists, so the {canonical} column "
                f"{wanted[canonical]!r} must hold lists of the same lengths (it is {values.type})"
            )
        lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
        expected = pc.fill_null(pc.list_value_length(items), 0).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != expected)
        if bad.size:
            row = int(bad[0])
            raise MalformedLineError(
                path, int(numbers[row]), f"{wanted[canonical]!r} has {lengths[row]} values but "
                f"{wanted[ITEM]!r} has {expected[row]}: the lists must be aligned"
            )  # fmt: skip
        flat_values = pc.list_flatten(values)
        if canonical == TIME:
            columns[TIME] = _parse_times(path, flat_values, lines)
        else:
            columns[RATING] = _parse_numbers(path, flat_values, lines, RATING)
    if ORDER in raw:
        raise InteractionDataError(
            f"{path}: per-user sequences are ordered by their lists; drop order_col {wanted[ORDER]!r}"
        )
    columns[ORDER] = pa.array(np.arange(len(parent), dtype=np.float64))
    columns[LINE] = pa.array(lines)
    source = {
        "columns": dict(wanted),
        "layout": "per-user sequences (list column, oldest first)",
        "sequence_rows": int(len(numbers)),
    }
    return pa.table(columns), source, 1, np.zeros(0, dtype=np.int64)


def _canonical_columns(
    path: Path,
    raw: dict[str, pa.ChunkedArray],
    numbers: np.ndarray,
    assume_file_order: bool,
    order_col: str | None,
    wanted: dict[str, str],
    first_line: int,
) -> tuple[pa.Table, dict[str, Any], int, np.ndarray]:
    # rows where every used field is empty are blank lines (only possible in CSV/TSV): skip them
    all_null = np.ones(len(numbers), dtype=bool)
    for values in raw.values():
        all_null &= _is_empty(values)
        if not all_null.any():
            break
    n_blank = int(all_null.sum())
    removed = np.flatnonzero(all_null).astype(np.int64)
    if n_blank:
        keep = pa.array(~all_null)
        raw = {k: pc.filter(v, keep) for k, v in raw.items()}
        numbers = numbers[~all_null]
    columns: dict[str, pa.Array] = {}
    for canonical, values in raw.items():
        if canonical in (USER, ITEM):
            columns[canonical] = _id_column(path, values, numbers, canonical, column=wanted[canonical])
        elif canonical == TIME:
            columns[canonical] = _parse_times(path, values, numbers)
        else:
            columns[canonical] = _parse_numbers(path, values, numbers, canonical)
    if assume_file_order and ORDER not in columns:
        columns[ORDER] = pa.array(numbers.astype(np.float64))
    source = {
        "columns": dict(wanted),
        "blank_lines": n_blank,
        "order": "file order" if assume_file_order and order_col is None else None,
    }
    return pa.table(columns), source, first_line, removed


# --------------------------------------------------------------------------------------------------
# value conversion with line-numbered errors


def _is_empty(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(values.type):
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        parts = []
        for chunk in chunks:
            empty_value = pc.equal(pc.utf8_trim_whitespace(chunk.dictionary), "").to_numpy(zero_copy_only=False)
            indices = chunk.indices.to_numpy(zero_copy_only=False)
            part = empty_value[indices] if len(empty_value) else np.ones(len(chunk), dtype=bool)
            if chunk.null_count:
                part = part | np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            parts.append(np.asarray(part, dtype=bool))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    empty = pc.is_null(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(values), ""))
    return np.asarray(pc.fill_null(empty, True).to_numpy(zero_copy_only=False), dtype=bool)


def _content(lines: pa.ChunkedArray | None, values: pa.ChunkedArray | pa.Array, index: int) -> str:
    if lines is not None:
        return lines[index].as_py()
    return str(values[index].as_py())


def _id_column(
    path: Path,
    values: pa.ChunkedArray | pa.Array,
    numbers: np.ndarray,
    role: str,
    lines: pa.ChunkedArray | None = None,
    column: str | None = None,
) -> pa.DictionaryArray:
    """Raw ids as a compact dictionary array (every value used once in the dictionary, trimmed text).

    Text stays text; integers become plain decimal text; floating-point ids are refused (see module doc).
    """
    chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    kind = chunked.type.value_type if pa.types.is_dictionary(chunked.type) else chunked.type
    named = f" {column!r}" if column else ""
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        raise InteractionDataError(
            f"{path}: the {role} column{named} holds {kind} numbers; ids are compared as text and a float "
            "does not say how the id was written (7.0 or 7?): store the ids as integers or strings"
        )
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InteractionDataError(
            f"{path}: the {role} column{named} has type {kind}; ids must be strings or integers"
        )
    if chunked.null_count:
        row = int(np.flatnonzero(np.asarray(chunked.is_null().to_numpy(zero_copy_only=False)))[0])
        raise MalformedLineError(
            path, int(numbers[row]), f"empty {role} ({chunked.null_count} such row(s))", _content(lines, chunked, row)
        )
    if not pa.types.is_dictionary(chunked.type):
        chunked = chunked.dictionary_encode()
    if chunked.num_chunks > 1:
        chunked = chunked.unify_dictionaries()
    if chunked.num_chunks == 0:
        return pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))
    dictionary = chunked.chunk(0).dictionary
    indices = np.concatenate(
        [np.asarray(c.indices.to_numpy(zero_copy_only=False)).astype(np.int32, copy=False) for c in chunked.chunks]
    )
    if pa.types.is_integer(dictionary.type):
        text = pc.cast(dictionary, pa.string())
    else:
        text = pc.cast(pc.utf8_trim_whitespace(dictionary), pa.string())
    empty_value = np.asarray(pc.equal(text, "").to_numpy(zero_copy_only=False), dtype=bool)
    used = np.bincount(indices, minlength=len(text)) > 0
    if (empty_value & used).any():
        empty_rows = np.flatnonzero(empty_value[indices])
        row = int(empty_rows[0])
        raise MalformedLineError(
            path, int(numbers[row]), f"empty {role} ({empty_rows.size} such row(s))", _content(lines, chunked, row)
        )
    encoded = pc.dictionary_encode(text)
    remap = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int32)
    values_out = encoded.dictionary
    if len(values_out) != len(text):  # trimming merged some values
        indices = remap[indices]
        used = np.bincount(indices, minlength=len(values_out)) > 0
    if not used.all():
        keep = np.flatnonzero(used)
        new_code = np.full(len(used), -1, dtype=np.int32)
        new_code[keep] = np.arange(len(keep), dtype=np.int32)
        indices = new_code[indices]
        values_out = pc.take(values_out, pa.array(keep))
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pc.cast(values_out, pa.string()))


def _parse_numbers(
    path: Path,
    values: pa.ChunkedArray | pa.Array,
    numbers: np.ndarray,
    role: str,
    lines: pa.ChunkedArray | None = None,
) -> pa.Array:
    """Numbers as float64; empty fields become null; non-numbers and infinities are errors."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type):
        result = pc.cast(values, pa.float64())
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        trimmed = pc.utf8_trim_whitespace(values)
        empty = pc.fill_null(pc.equal(trimmed, ""), True)
        non_empty = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
        numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN), False)
        bad = pc.and_(pc.invert(numeric), pc.invert(empty)).to_numpy(zero_copy_only=False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MalformedLineError(
                path,
                int(numbers[i]),
                f"{role} {trimmed[i].as_py()!r} is not a number ({int(bad.sum())} such row(s))",
                _content(lines, values, i),
            )
        result = pc.cast(non_empty, pa.float64())
    else:
        raise InteractionDataError(f"{path}: the {role} column has type {values.type}, expected numbers")
    _refuse_infinite(path, result, numbers, role, lines)
    return result


def _refuse_infinite(
    path: Path, values: pa.Array, numbers: np.ndarray, role: str, lines: pa.ChunkedArray | None = None
) -> None:
    as_float = np.asarray(pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    infinite = np.isinf(as_float)
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        raise MalformedLineError(
            path,
            int(numbers[i]),
            f"{role} is {as_float[i]} ({int(infinite.sum())} such row(s)): it must be a finite number; "
            "fix or drop those rows",
            _content(lines, values, i) if lines is not None else None,
        )


def _parse_times(
    path: Path, values: pa.ChunkedArray | pa.Array, numbers: np.ndarray, lines: pa.ChunkedArray | None = None
) -> pa.Array:
    """Times as float64 seconds: numbers pass through; Arrow date-times and ISO 8601 text are converted.

    ISO 8601 text may carry a zone (``Z`` or ``+02:00``): it is converted to UTC; text without a zone is
    read as UTC too. A column mixing time scales (seconds and milliseconds, say) is reported in a warning.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        target = pa.timestamp("us", tz=kind.tz) if pa.types.is_timestamp(kind) and kind.tz else pa.timestamp("us")
        seconds = pc.cast(pc.cast(values, target), pa.int64())
        return pc.divide(pc.cast(seconds, pa.float64()), 1e6)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(values)
        numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN), True)
        empty = pc.fill_null(pc.equal(trimmed, ""), True)
        if not pc.all(pc.or_(numeric, empty)).as_py():
            return _iso_seconds(path, trimmed, empty, numeric, numbers, lines)
    result = _parse_numbers(path, values, numbers, "timestamp" if lines is not None else "time", lines)
    _warn_mixed_scales(path, result, numbers)
    return result


def _iso_seconds(
    path: Path,
    trimmed: pa.Array,
    empty: pa.Array,
    numeric: pa.Array,
    numbers: np.ndarray,
    lines: pa.ChunkedArray | None,
) -> pa.Array:
    non_empty = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
    zoned = pc.fill_null(pc.match_substring_regex(non_empty, _ZONED_TIME_PATTERN), False)
    try:
        naive = pc.cast(pc.if_else(zoned, pa.scalar(None, pa.string()), non_empty), pa.timestamp("us"))
        with_zone = pc.cast(pc.if_else(zoned, non_empty, pa.scalar(None, pa.string())), pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        bad = pc.invert(empty).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(bad):
            text = trimmed[int(i)].as_py()
            try:
                pc.cast(pa.array([text]), pa.timestamp("us", tz="UTC") if zoned[int(i)].as_py() else pa.timestamp("us"))
            except pa.ArrowInvalid:
                raise MalformedLineError(
                    path,
                    int(numbers[i]),
                    "time is neither a number nor an ISO 8601 date-time (such as 2020-01-31T12:00:00Z); "
                    "fix the value or give time_col a column of one kind",
                    text,
                ) from None
        raise
    naive_us = pc.cast(naive, pa.int64())
    zoned_us = pc.cast(pc.cast(with_zone, pa.timestamp("us")), pa.int64())
    micro = pc.if_else(zoned, zoned_us, naive_us)
    return pc.divide(pc.cast(micro, pa.float64()), 1e6)


_SCALES = (
    ("seconds", 1e8, 1e11),
    ("milliseconds", 1e11, 1e14),
    ("microseconds", 1e14, 1e17),
    ("nanoseconds", 1e17, np.inf),
)


def _warn_mixed_scales(path: Path, times: pa.Array, numbers: np.ndarray) -> None:
    """Warn when epoch-like times come in more than one unit (e.g. seconds and milliseconds)."""
    values = np.abs(np.asarray(pc.fill_null(times, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64))
    large = values >= 1e8
    if not large.any():
        return
    found = []
    for name, low, high in _SCALES:
        inside = large & (values >= low) & (values < high)
        count = int(inside.sum())
        if count:
            first = int(np.flatnonzero(inside)[0])
            found.append(f"{count} look like {name} (first: line {int(numbers[first])}, {values[first]:.6g})")
    if len(found) > 1:
        logger.warning(
            "%s: the time column mixes units: %s; histories would be ordered wrongly. Convert every time to "
            "one unit before training",
            path,
            "; ".join(found),
        )
