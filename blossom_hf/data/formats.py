"""Readers: every supported interaction file becomes one canonical, Arrow-backed ``datasets.Dataset``.

All files go through the ``datasets`` library (``load_dataset("text" | "csv" | "parquet" | "json")``),
so the data sit in memory-mapped Arrow files in the ``datasets`` cache; parsing and validation are
vectorised Arrow compute kernels, never a Python loop over rows.

Canonical columns of the returned dataset (:data:`USER`, :data:`ITEM`, ...):

============  =========  ====================================================================
column        type       meaning
============  =========  ====================================================================
``user_id``   string     raw user id (a token, compared as text)
``item_id``   string     raw item id (a token, compared as text)
``timestamp`` float64    interaction time (seconds or any number; may be null). Optional.
``order``     float64    explicit position of the interaction in its user's history. Optional.
``rating``    float64    explicit rating. Optional.
``line``      int64      1-based line of the row in the file (Parquet / JSON Lines: 1-based row);
                         also the file order used to break ties.
============  =========  ====================================================================

Supported formats (``format=``):

* ``movielens`` -- MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, latin-1.
* ``ml-100k`` -- MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header.
* ``recbole`` -- RecBole atomic ``.inter``: TSV whose header fields are typed, ``user_id:token``.
* ``csv`` / ``tsv`` / ``parquet`` / ``jsonl`` -- a table with a header and user-chosen column names
  (``user_col``, ``item_col``, and ``time_col`` and/or ``order_col``, optional ``rating_col``).
* ``sequences`` -- one line per user, ``user item item ...`` in chronological order (S3Rec ``Beauty.txt``).
* ``user-item`` -- one ``user item`` pair per line, each user's lines in chronological order
  (SASRec ``Video.txt``).
* ``auto`` -- chosen from the file name (``.dat``, ``.data``, ``.inter``, ``.csv``, ``.tsv``,
  ``.parquet``, ``.jsonl``/``.json``, ``.txt`` sniffed between ``sequences`` and ``user-item``).

Named presets for the datasets in ``../shared/data`` are in :data:`PRESETS` (``ml-1m``, ``ml-100k``,
``beauty``, ``video-games``); :func:`load_interactions` accepts a preset name instead of a path.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from .errors import InteractionDataError, MalformedLineError, UnknownColumnError
from .presets import DATA_DIR_ENV, PRESETS, DatasetPreset, default_data_root, preset_path  # noqa: F401 (moved)

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
    "sequences",
    "user-item",
)
_FIXED_LAYOUT_FORMATS = ("movielens", "ml-100k", "sequences", "user-item")
_NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclass
class Interactions:
    """Interactions in canonical columns plus a description of where they came from.

    Attributes:
        dataset: Arrow-backed ``datasets.Dataset`` with the canonical columns listed in the module doc.
        source: JSON-serialisable description (path, format, column mapping, row counts, skips).
    """

    dataset: datasets.Dataset
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.dataset.num_rows

    @property
    def has_time(self) -> bool:
        return TIME in self.dataset.column_names

    @property
    def has_order(self) -> bool:
        return ORDER in self.dataset.column_names

    @property
    def has_rating(self) -> bool:
        return RATING in self.dataset.column_names

    def column(self, name: str) -> pa.ChunkedArray:
        """The Arrow column ``name`` (no copy)."""
        return self.dataset.data.column(name)


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
        path: a file, or a preset name from :data:`PRESETS` (``ml-1m``, ``ml-100k``, ``beauty``,
            ``video-games``) resolved under ``data_dir`` (default :func:`default_data_root`).
        format: one of :data:`FORMATS`; ``auto`` guesses from the file name.
        user_col, item_col: column names for ``csv``/``tsv``/``parquet``/``jsonl`` (required there) and
            ``recbole`` (default ``user_id`` / ``item_id``). Not accepted for fixed layouts.
        time_col: column holding the interaction time (numbers, or date-times for Parquet/JSON/ISO text).
        order_col: column holding each interaction's position in its user's history. When both are
            given, the order column decides the order and the time is kept (e.g. for de-duplication).
        rating_col: optional rating column (needed only for a rating threshold).
        assume_file_order: for tables without a time or order column: the rows are already in
            chronological order per user, so the file order is the order.
        sep: field separator for ``csv`` (default ``,``) and ``tsv`` (default tab).
        encoding: text encoding (default utf-8; latin-1 for ``movielens``).
        cache_dir: ``datasets`` cache folder (default: the library's).

    Returns:
        :class:`Interactions`.

    Raises:
        MalformedLineError: a line cannot be parsed (message names the file and the 1-based line).
        UnknownColumnError: a named column is not in the file (message lists the available ones).
        InteractionDataError: other problems (unknown format, no way to order the interactions, ...).
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

    if format == "movielens":
        table, source = _read_fixed_fields(path, "::", [USER, ITEM, RATING, TIME], encoding or "latin-1", cache_dir)
    elif format == "ml-100k":
        table, source = _read_fixed_fields(path, "\t", [USER, ITEM, RATING, TIME], encoding or "utf-8", cache_dir)
    elif format == "sequences":
        table, source = _read_sequence_lines(path, encoding or "utf-8", cache_dir)
    elif format == "user-item":
        table, source = _read_user_item_lines(path, encoding or "utf-8", cache_dir)
    elif format == "recbole":
        table, source = _read_recbole(
            path,
            user_col,
            item_col,
            time_col,
            order_col,
            rating_col,
            assume_file_order,
            encoding or "utf-8",
            cache_dir,
        )
    else:
        table, source = _read_table(
            path,
            format,
            user_col,
            item_col,
            time_col,
            order_col,
            rating_col,
            assume_file_order,
            sep,
            encoding or "utf-8",
            cache_dir,
        )
    source.update({"path": str(path), "format": format})
    if preset is not None:
        source["preset"] = preset.name
    dataset = datasets.Dataset(InMemoryTable(table))
    logger.info("Read %d interactions from %s (%s)", dataset.num_rows, path, format)
    return Interactions(dataset=dataset, source=source)


def guess_format(path: Path) -> str:
    """Pick a format from the file name (and, for ``.txt``, from the first lines)."""
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
# line-oriented text formats (parsed with Arrow string kernels, line numbers exact)


def _read_lines(path: Path, encoding: str, cache_dir: str | None) -> pa.ChunkedArray:
    dataset = datasets.load_dataset("text", data_files=str(path), split="train", encoding=encoding, cache_dir=cache_dir)
    return dataset.data.column("text")


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


def _read_fixed_fields(
    path: Path, sep: str, names: list[str], encoding: str, cache_dir: str | None
) -> tuple[pa.Table, dict[str, Any]]:
    lines, numbers, n_blank = _drop_blank(_read_lines(path, encoding, cache_dir))
    split = pc.split_pattern(lines, sep)
    _check_field_counts(path, split, lines, numbers, len(names), repr(sep))
    columns: dict[str, pa.Array] = {}
    for index, name in enumerate(names):
        values = pc.utf8_trim_whitespace(pc.list_element(split, index))
        if name in (USER, ITEM):
            columns[name] = _id_strings(path, values, numbers, name, lines)
        else:
            columns[name] = _parse_numbers(path, values, numbers, name, lines)
    columns[LINE] = pa.array(numbers)
    source = {"columns": {name: f"field {i + 1}" for i, name in enumerate(names)}, "blank_lines": n_blank}
    return pa.table(columns), source


def _read_sequence_lines(path: Path, encoding: str, cache_dir: str | None) -> tuple[pa.Table, dict[str, Any]]:
    lines, numbers, n_blank = _drop_blank(_read_lines(path, encoding, cache_dir))
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
    user_strings = _id_strings(path, users, numbers, USER, lines)
    table = pa.table(
        {
            USER: pc.take(user_strings, pa.array(parent)),
            ITEM: items.combine_chunks() if isinstance(items, pa.ChunkedArray) else items,
            # a running index over the whole file: a user spread over several lines keeps file order
            ORDER: pa.array(np.arange(len(parent), dtype=np.float64)),
            LINE: pa.array(numbers[parent]),
        }
    )
    source = {
        "columns": {USER: "first token of each line", ITEM: "following tokens", ORDER: "position in file"},
        "blank_lines": n_blank,
        "lines_without_items": int(empty.sum()),
    }
    return table, source


def _read_user_item_lines(path: Path, encoding: str, cache_dir: str | None) -> tuple[pa.Table, dict[str, Any]]:
    lines, numbers, n_blank = _drop_blank(_read_lines(path, encoding, cache_dir))
    split = pc.utf8_split_whitespace(lines)
    _check_field_counts(path, split, lines, numbers, 2, "white space")
    table = pa.table(
        {
            USER: _id_strings(path, pc.list_element(split, 0), numbers, USER, lines),
            ITEM: _id_strings(path, pc.list_element(split, 1), numbers, ITEM, lines),
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
    cache_dir: str | None,
) -> tuple[pa.Table, dict[str, Any]]:
    raw = _read_lines(path, encoding, cache_dir)
    if len(raw) == 0:
        raise MalformedLineError(path, 1, "empty file: a RecBole atomic file needs a header line")
    header = raw[0].as_py().rstrip("\r\n").split("\t")
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
            columns[canonical] = _id_strings(path, values, numbers, canonical, lines)
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
            raise UnknownColumnError(path, name, role, available)
        wanted[canonical] = name
    return wanted


def _read_header(path: Path, sep: str, encoding: str) -> list[str]:
    with fsspec.open(str(path), "rt", compression="infer", encoding=encoding, newline="") as handle:
        first = handle.readline()
    if not first.strip():
        raise MalformedLineError(path, 1, "the first line must be a header naming the columns")
    return next(csv.reader([first.rstrip("\r\n")], delimiter=sep))


def _read_table(
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
    cache_dir: str | None,
) -> tuple[pa.Table, dict[str, Any]]:
    if format in ("csv", "tsv"):
        sep = sep or ("\t" if format == "tsv" else ",")
        available = _read_header(path, sep, encoding)
        wanted = _wanted_columns(
            path, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order
        )
        # every column read as text (so numbers are validated here, with line numbers); all columns, not
        # only the used ones, so that pandas reports lines with too many fields
        try:
            dataset = datasets.load_dataset(
                "csv",
                data_files=str(path),
                split="train",
                cache_dir=cache_dir,
                sep=sep,
                encoding=encoding,
                features=datasets.Features({c: datasets.Value("string") for c in available}),
                keep_default_na=False,
                na_values=[""],
                skip_blank_lines=False,
            )
        except datasets.exceptions.DatasetGenerationError as error:
            raise _malformed_from_parser(path, error) from error
        first_line = 2  # line 1 is the header; quoted fields spanning lines are not supported
    else:
        builder = "parquet" if format == "parquet" else "json"
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
        except datasets.exceptions.DatasetGenerationError as error:
            cause = error.__cause__ or error.__context__
            raise InteractionDataError(f"{path}: cannot read as {format}: {cause or error}") from error
        available = list(dataset.column_names)
        wanted = _wanted_columns(
            path, available, user_col, item_col, time_col, order_col, rating_col, assume_file_order
        )
        first_line = 1
    numbers = np.arange(first_line, first_line + dataset.num_rows, dtype=np.int64)
    raw = {canonical: dataset.data.column(name) for canonical, name in wanted.items()}
    # rows where every used field is empty are blank lines (only possible in CSV/TSV): skip them
    all_null = np.ones(dataset.num_rows, dtype=bool)
    for values in raw.values():
        all_null &= _is_empty(values)
    n_blank = int(all_null.sum())
    if n_blank:
        keep = pa.array(~all_null)
        raw = {k: pc.filter(v, keep) for k, v in raw.items()}
        numbers = numbers[~all_null]
    columns: dict[str, pa.Array] = {}
    for canonical, values in raw.items():
        if canonical in (USER, ITEM):
            columns[canonical] = _id_strings(path, values, numbers, canonical)
        elif canonical == TIME:
            columns[canonical] = _parse_times(path, values, numbers)
        else:
            columns[canonical] = _parse_numbers(path, values, numbers, canonical)
    if assume_file_order and ORDER not in columns:
        columns[ORDER] = pa.array(numbers.astype(np.float64))
    columns[LINE] = pa.array(numbers)
    source = {
        "columns": dict(wanted),
        "blank_lines": n_blank,
        "order": "file order" if assume_file_order and order_col is None else None,
    }
    return pa.table(columns), source


def _malformed_from_parser(path: Path, error: Exception) -> InteractionDataError:
    cause: BaseException | None = error
    while cause is not None and not type(cause).__name__.endswith("ParserError"):
        cause = cause.__cause__ or cause.__context__
    message = str(cause if cause is not None else error).strip()
    match = re.search(r"line (\d+)", message)
    if match:
        return MalformedLineError(path, int(match.group(1)), message)
    return InteractionDataError(f"{path}: cannot parse: {message}")


# --------------------------------------------------------------------------------------------------
# value conversion with line-numbered errors


def _is_empty(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    empty = pc.is_null(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(values), ""))
    return np.asarray(pc.fill_null(empty, True).to_numpy(zero_copy_only=False), dtype=bool)


def _content(lines: pa.ChunkedArray | None, values: pa.ChunkedArray | pa.Array, index: int) -> str:
    if lines is not None:
        return lines[index].as_py()
    return str(values[index].as_py())


def _id_strings(
    path: Path,
    values: pa.ChunkedArray | pa.Array,
    numbers: np.ndarray,
    role: str,
    lines: pa.ChunkedArray | None = None,
) -> pa.Array:
    """Ids as non-empty strings; integers (or integral floats) are written without a decimal point."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    empty = _is_empty(values)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise MalformedLineError(
            path,
            int(numbers[i]),
            f"empty {role} ({int(empty.sum())} such row(s))",
            _content(lines, values, i),
        )
    kind = values.type
    if pa.types.is_floating(kind):
        as_float = values.to_numpy(zero_copy_only=False)
        fractional = as_float != np.floor(as_float)
        if fractional.any():
            i = int(np.flatnonzero(fractional)[0])
            raise MalformedLineError(path, int(numbers[i]), f"{role} {as_float[i]!r} is not an integer id")
        values = pc.cast(values, pa.int64())
    elif pa.types.is_dictionary(kind):
        values = values.dictionary_decode()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    return pc.cast(pc.utf8_trim_whitespace(values), pa.string())


def _parse_numbers(
    path: Path,
    values: pa.ChunkedArray | pa.Array,
    numbers: np.ndarray,
    role: str,
    lines: pa.ChunkedArray | None = None,
) -> pa.Array:
    """Numbers as float64; empty fields become null; anything else non-numeric is an error."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type):
        return pc.cast(values, pa.float64())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise InteractionDataError(f"{path}: the {role} column has type {values.type}, expected numbers")
    trimmed = pc.utf8_trim_whitespace(values)
    empty = pc.fill_null(pc.equal(trimmed, ""), True)
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
    return pc.cast(pc.if_else(empty, pa.scalar(None, pa.string()), trimmed), pa.float64())


def _parse_times(path: Path, values: pa.ChunkedArray | pa.Array, numbers: np.ndarray) -> pa.Array:
    """Times as float64 seconds: numbers pass through; Arrow date-times and ISO 8601 text are converted."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        seconds = pc.cast(pc.cast(values, pa.timestamp("us")), pa.int64())
        return pc.divide(pc.cast(seconds, pa.float64()), 1e6)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(values)
        numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN), True)
        empty = pc.fill_null(pc.equal(trimmed, ""), True)
        if not pc.all(pc.or_(numeric, empty)).as_py():
            non_empty = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
            try:
                stamps = pc.cast(non_empty, pa.timestamp("us"))
            except pa.ArrowInvalid:
                bad = pc.and_(pc.invert(numeric), pc.invert(empty)).to_numpy(zero_copy_only=False)
                for i in np.flatnonzero(bad):
                    try:
                        pc.cast(pa.array([trimmed[int(i)].as_py()]), pa.timestamp("us"))
                    except pa.ArrowInvalid:
                        raise MalformedLineError(
                            path,
                            int(numbers[i]),
                            "time is neither a number nor an ISO 8601 date-time",
                            trimmed[int(i)].as_py(),
                        ) from None
                raise
            seconds = pc.cast(stamps, pa.int64())
            return pc.divide(pc.cast(seconds, pa.float64()), 1e6)
    return _parse_numbers(path, values, numbers, "time")
