"""Arrow value conversion for the readers: raw ids (the raw-id rule), numbers and times, with errors that
name the file and the line. See :mod:`blossom_hf.data.formats` for the canonical columns."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InteractionDataError, MalformedLineError

logger = logging.getLogger("blossom_hf.data.formats")  # one logger for everything the readers report

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
ORDER = "order"
RATING = "rating"
LINE = "line"

_NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_ZONED_TIME_PATTERN = r"\d{2}:\d{2}(:\d{2}(\.\d*)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"
_BOM = b"\xef\xbb\xbf"
_ID_TYPE = pa.dictionary(pa.int32(), pa.string())




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


def _one_dictionary(chunked: pa.ChunkedArray) -> bool:
    """Every chunk refers to the very same dictionary (as ``ChunkedArray.dictionary_encode`` makes them)."""
    first = chunked.chunk(0).dictionary
    address = first.buffers()[-1].address if first.buffers()[-1] is not None else None
    return all(
        len(chunk.dictionary) == len(first)
        and chunk.dictionary.buffers()[-1] is not None
        and chunk.dictionary.buffers()[-1].address == address
        for chunk in chunked.chunks[1:]
    )


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
    if chunked.num_chunks > 1 and not _one_dictionary(chunked):
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

