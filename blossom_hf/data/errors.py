"""Exceptions raised while reading and preparing interaction data.

All of them derive from :class:`InteractionDataError` (a ``ValueError``), so a caller can catch the
whole family at once, and each message names the file, the line and the problem.
"""

from __future__ import annotations

from collections.abc import Iterable


class InteractionDataError(ValueError):
    """Base class of every data problem found by :mod:`blossom_hf.data`."""


class MalformedLineError(InteractionDataError):
    """A line (or row) of an interaction file cannot be parsed.

    Attributes:
        path: the file.
        line: 1-based line number in the file (for Parquet / JSON Lines: 1-based row number).
        content: the offending text, shortened, when known.
    """

    def __init__(self, path: str, line: int, problem: str, content: str | None = None):
        self.path = str(path)
        self.line = int(line)
        self.content = content
        shown = ""
        if content is not None:
            shown = f": {content[:120]!r}" + ("..." if len(content) > 120 else "")
        super().__init__(f"{self.path}, line {self.line}: {problem}{shown}")


class UnknownColumnError(InteractionDataError, KeyError):
    """A column named by the caller is not in the file.

    Attributes:
        column: the requested name.
        available: the column names the file does have.
    """

    def __init__(self, path: str, column: str, role: str, available: Iterable[str]):
        self.path = str(path)
        self.column = column
        self.available = list(available)
        super().__init__(
            f"{self.path}: no column {column!r} (asked for as the {role} column); "
            f"available columns: {', '.join(map(repr, self.available)) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


class OrderingError(InteractionDataError):
    """The interactions of a user cannot be put in a well-defined order."""


class DataChangedError(InteractionDataError):
    """The interaction file's content differs from the content recorded in a ``data_spec.json``."""
