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

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from .errors import InteractionDataError
from .presets import DATA_DIR_ENV, PRESETS, DatasetPreset, default_data_root, preset_path  # noqa: F401 (moved)
from .readers import read_file, refuse_empty
from .table_readers import part_files
from .values import ITEM, LINE, ORDER, RATING, TIME, USER

__all__ = [
    "FORMATS",
    "ITEM",
    "LINE",
    "ORDER",
    "PRESETS",
    "RATING",
    "TIME",
    "USER",
    "DatasetPreset",
    "Interactions",
    "content_fingerprint",
    "default_data_root",
    "guess_format",
    "load_interactions",
    "preset_path",
]

if TYPE_CHECKING:  # datasets is needed only for Interactions.dataset
    import datasets

logger = logging.getLogger(__name__)

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
CACHE_ENV = "BLOSSOM_HF_CACHE"
_CACHE_VERSION = 1  # bump when the canonical table of any reader changes


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
        import datasets

        return datasets.Dataset(table, fingerprint=(self.fingerprint or "interactions").replace(":", "-"))


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
        cache_dir: folder of the parsed-table cache (default ``$BLOSSOM_HF_CACHE/interactions``, else
            ``<datasets cache>/blossom_hf/interactions``); entries are keyed on content and options.

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
    refuse_empty(path, format)

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
        reader_result = read_file(path, format, user_col, item_col, time_col, order_col, rating_col,
                              assume_file_order, sep, encoding)  # fmt: skip
        interactions = _write_cache(cache, key, fingerprint, *reader_result)
        del reader_result
        pa.default_memory_pool().release_unused()  # the parsed copy is gone: give its memory back
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
        if part_files(path):
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
        return Path(os.environ[CACHE_ENV]) / "interactions"
    return default_cache_root() / "interactions"


def default_cache_root() -> Path:
    """``<datasets cache>/blossom_hf`` (``$HF_DATASETS_CACHE``, by default ``~/.cache/huggingface/datasets``)."""
    try:
        import datasets

        return Path(datasets.config.HF_DATASETS_CACHE) / "blossom_hf"
    except ImportError:  # the library reads data without datasets; use the same default place
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        return Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")) / "blossom_hf"


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
