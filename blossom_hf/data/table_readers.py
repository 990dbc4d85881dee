"""Readers of tables with named columns: CSV/TSV (``pyarrow.csv``), Parquet files and folders of Parquet part
files, JSON lines and Arrow IPC, including per-user sequence tables (one row per user, list columns), each
returning the canonical table of :mod:`blossom_hf.data.values`. :func:`blossom_hf.data.readers.read_file`
picks the reader; the line-oriented text formats are there."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InteractionDataError, MalformedLineError, UnknownColumnError
from .values import (
    _BOM,
    _ID_TYPE,
    _NUMBER_PATTERN,
    ITEM,
    LINE,
    ORDER,
    RATING,
    TIME,
    USER,
    _id_column,
    _is_empty,
    _parse_numbers,
    _parse_times,
)


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return fsspec.open(str(path), "rb", compression="infer").open()


def _decode_error(path: Path, raw: bytes, error: UnicodeDecodeError, encoding: str) -> MalformedLineError:
    line = raw.count(b"\n", 0, error.start) + 1
    column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
    return MalformedLineError(
        path,
        line,
        f"column {column}: byte {raw[error.start:error.start + 1]!r} is not valid {encoding}; "
        "pass the file's encoding (encoding='latin-1', --encoding latin-1)",
    )


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
    as_text = _text_columns_in_first_row(path, sep, encoding, available, numeric)

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


def _text_columns_in_first_row(
    path: Path, sep: str, encoding: str, available: list[str], numeric: list[str]
) -> set[str]:
    """Numeric columns whose first value is not a number (ISO times, say): read those as text at once."""
    with _open_bytes(path) as handle:
        handle.readline()
        first = handle.readline().decode(encoding, errors="replace").rstrip("\r\n")
    fields = next(csv.reader([first], delimiter=sep), [])
    if len(fields) != len(available):
        return set()
    values = dict(zip(available, fields, strict=True))
    return {name for name in numeric if values[name].strip() and not re.match(_NUMBER_PATTERN, values[name])}


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


def part_files(path: Path) -> list[Path]:
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

        files = part_files(path) if path.is_dir() else [path]
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
