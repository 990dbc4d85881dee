"""The readers behind :func:`blossom_hf.data.formats.load_interactions`: one per layout, each returning
the canonical table (pyarrow readers and compute kernels, no Python loop over rows).

This module: :func:`read_file` (the dispatch on the format) and the line-oriented text formats (``movielens``,
``ml-100k``, ``sequences``, ``user-item``, ``recbole``). Tables with named columns (CSV/TSV, Parquet, JSON
lines, Arrow) are read by :mod:`blossom_hf.data.table_readers`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InteractionDataError, MalformedLineError
from .table_readers import _decode_error, _open_bytes, _read_csv, _read_typed, _wanted_columns
from .values import _BOM, ITEM, LINE, ORDER, RATING, TIME, USER, _id_column, _parse_numbers, _parse_times

logger = logging.getLogger("blossom_hf.data.formats")

# --------------------------------------------------------------------------------------------------
# dispatch and checks shared by every format


def read_file(
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


def refuse_empty(path: Path, format: str) -> None:
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
