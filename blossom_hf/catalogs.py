"""Item catalogues (raw item id -> title) and matching two catalogues by title and year.

Used to show titles beside recommendations (``blossom-hf recommend --titles``) and to build an item mapping
between two catalogues that number the same items differently, e.g. MovieLens-100K ``u.item`` and
MovieLens-1M ``movies.dat`` (``blossom-hf finetune --map-titles``; as a TSV to inspect:
``write_item_mapping(build_title_mapping(old, new).pairs, "mapping.tsv")`` of :mod:`blossom_hf.finetuning`).

Readers (all latin-1 unless told otherwise, as GroupLens ships them):

* ``movielens`` -- ML-1M/10M ``movies.dat``: ``MovieID::Title (Year)::Genres``;
* ``ml-100k`` -- ML-100K ``u.item``: ``movie id|title (year)|release date|...``;
* ``csv`` / ``tsv`` -- a table with a header naming an id column and a title column.

Nothing here reads interaction data; the module imports only the standard library, so the command-line
tools that need titles start fast.
"""

from __future__ import annotations

import csv
import logging
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CATALOG_FORMATS = ("auto", "movielens", "ml-100k", "csv", "tsv")

# Articles that MovieLens moves to the end ("Shawshank Redemption, The (1994)"), in the languages present.
_TRAILING_ARTICLES = (
    "the", "a", "an", "les", "la", "le", "l'", "il", "lo", "los", "las", "el", "das", "der", "die", "den",
    "det", "de", "het", "een", "une", "un", "une", "i", "gli", "o", "os", "as",
)  # fmt: skip
_YEAR = re.compile(r"\((\d{4})(?:[-/]\d{2,4})?\)")
_AKA = re.compile(r"^\s*a\.?k\.?a\.?\s+", re.IGNORECASE)
_PARENTHESISED = re.compile(r"\([^()]*\)")
_ARTICLE_AT_END = re.compile(r",\s*(" + "|".join(re.escape(a) for a in _TRAILING_ARTICLES) + r")\s*$", re.IGNORECASE)


class CatalogError(ValueError):
    """A catalogue file that cannot be read (the message names the file and the line)."""


# --------------------------------------------------------------------------------------------------
# reading


def guess_catalog_format(path: str | Path) -> str:
    """``movielens`` for ``*.dat``, ``ml-100k`` for ``u.item``, ``tsv``/``csv`` by extension."""
    name = Path(path).name.lower()
    if name.endswith(".dat"):
        return "movielens"
    if name == "u.item" or name.endswith(".item"):
        return "ml-100k"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    raise CatalogError(
        f"cannot tell the format of catalogue {path} from its name; pass one of {', '.join(CATALOG_FORMATS[1:])}"
    )


def read_item_titles(
    path: str | Path,
    format: str = "auto",
    *,
    encoding: str | None = None,
    id_col: str = "item_id",
    title_col: str = "title",
) -> dict[str, str]:
    """Raw item id (as text) -> title, in file order.

    Args:
        path: the catalogue file.
        format: one of :data:`CATALOG_FORMATS`.
        encoding: default latin-1 for the MovieLens formats, utf-8 otherwise.
        id_col, title_col: header names for ``csv``/``tsv``.

    Raises:
        FileNotFoundError, CatalogError: missing file, unknown format, malformed line, duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item catalogue {path} does not exist")
    if format not in CATALOG_FORMATS:
        raise CatalogError(f"unknown catalogue format {format!r}; choose one of {', '.join(CATALOG_FORMATS)}")
    if format == "auto":
        format = guess_catalog_format(path)
    titles: dict[str, str] = {}

    def add(item_id: str, title: str, line: int) -> None:
        item_id = item_id.strip()
        if not item_id:
            raise CatalogError(f"{path}, line {line}: empty item id")
        if item_id in titles:
            raise CatalogError(f"{path}, line {line}: item id {item_id!r} appears twice")
        titles[item_id] = title.strip()

    if format in ("movielens", "ml-100k"):
        sep, minimum = ("::", 3) if format == "movielens" else ("|", 2)
        with path.open(encoding=encoding or "latin-1", newline="") as handle:
            for line_no, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split(sep)
                if len(fields) < minimum:
                    raise CatalogError(
                        f"{path}, line {line_no}: expected at least {minimum} {sep!r}-separated fields "
                        f"({format} catalogue), got {len(fields)}: {line[:80]!r}"
                    )
                add(fields[0], fields[1], line_no)
    else:
        delimiter = "\t" if format == "tsv" else ","
        with path.open(encoding=encoding or "utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            missing = [c for c in (id_col, title_col) if c not in (reader.fieldnames or [])]
            if missing:
                raise CatalogError(f"{path}: no column(s) {missing}; the header has {reader.fieldnames}")
            for line_no, row in enumerate(reader, start=2):
                add(row[id_col] or "", row[title_col] or "", line_no)
    if not titles:
        what = "only a header" if format in ("csv", "tsv") else "no item lines"
        raise CatalogError(f"item catalogue {path} holds no items ({what}); pass the catalogue file itself "
                           "(e.g. movies.dat, u.item)")  # fmt: skip
    logger.info("Read %d item titles from %s (%s)", len(titles), path, format)
    return titles


# --------------------------------------------------------------------------------------------------
# normalising titles


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("&", " and ")
    text = re.sub(r"[^0-9a-z]+", " ", text)
    return " ".join(text.split())


def split_title(title: str) -> tuple[str, str | None, list[str]]:
    """``"City of Lost Children, The (Cité des enfants perdus, La) (1995)"`` ->
    ``("City of Lost Children, The", "1995", ["Cité des enfants perdus, La"])``.

    The year is the last ``(YYYY)`` group; parenthesised groups between the main title and the year are
    alternative titles; anything after the year (``"(V)"``) is dropped.
    """
    title = " ".join(title.split())
    years = list(_YEAR.finditer(title))
    year = years[-1].group(1) if years else None
    head = title[: years[-1].start()] if years else title
    alternatives = [m.group(0)[1:-1].strip() for m in _PARENTHESISED.finditer(head)]
    main = _PARENTHESISED.sub(" ", head)
    return " ".join(main.split()).strip(" ,"), year, [a for a in alternatives if a]


def _move_article(name: str) -> str:
    match = _ARTICLE_AT_END.search(name)
    if not match:
        return name
    article = match.group(1)
    rest = name[: match.start()].strip()
    return f"{article}{rest}" if article.endswith("'") else f"{article} {rest}"


def normalize_title(title: str) -> tuple[str, str | None]:
    """A comparable key and the year: ``"Shawshank Redemption, The (1994)"`` -> ``("the shawshank
    redemption", "1994")``. Case, accents, punctuation, ``&``/``and``, alternative titles in
    parentheses and MovieLens' trailing articles are normalised away."""
    main, year, _ = split_title(title)
    return _fold(_move_article(main)), year


def title_keys(title: str) -> list[str]:
    """Every key a title may match under: the main title, then each parenthesised alternative."""
    main, _, alternatives = split_title(title)
    keys = [_fold(_move_article(main))]
    for alternative in alternatives:  # "(a.k.a. Sydney, a.k.a. Hard Eight)" holds two
        keys += [_fold(_move_article(_AKA.sub("", part))) for part in re.split(r",\s*(?=a\.?k\.?a)", alternative)]
    keys += [k.replace(" ", "") for k in keys]  # "Alien³" ~ "Alien 3"
    return [k for i, k in enumerate(keys) if k and k not in keys[:i]]


def title_segments(title: str) -> list[str]:
    """Keys of the parts of a main title split at ``:`` and `` - ``: ``"Star Wars: Episode V - The Empire
    Strikes Back"`` -> ``["star wars", "episode v", "the empire strikes back"]``."""
    main, _, _ = split_title(title)
    parts = re.split(r":\s+|\s+-\s+", _move_article(main))
    return [key for key in (_fold(part) for part in parts) if key] if len(parts) > 1 else []


# --------------------------------------------------------------------------------------------------
# matching


@dataclass
class TitleMatch:
    """Result of :func:`match_titles`.

    Attributes:
        pairs: ``(old_id, new_id)`` of every match (an old id may match several new ids when the new
            catalogue lists the same film twice).
        stages: how many new items each stage matched (``exact``, ``alternative_title``, ``year_off_by_one``,
            ``title_segment``).
        unmatched_new: new ids without a match (``unknown``/title-less entries included).
        ambiguous_new: new ids whose title fits several old items (left unmatched).
    """

    pairs: list[tuple[str, str]]
    n_old: int
    n_new: int
    stages: dict[str, int] = field(default_factory=dict)
    unmatched_new: list[str] = field(default_factory=list)
    ambiguous_new: list[str] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        """Fraction of new items matched to an old item."""
        return len({new for _, new in self.pairs}) / self.n_new if self.n_new else 0.0

    @property
    def old_coverage(self) -> float:
        """Fraction of old items matched by at least one new item."""
        return len({old for old, _ in self.pairs}) / self.n_old if self.n_old else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "old_items": self.n_old,
            "new_items": self.n_new,
            "matched_new_items": len({new for _, new in self.pairs}),
            "match_rate": round(self.match_rate, 6),
            "old_coverage": round(self.old_coverage, 6),
            "stages": dict(self.stages),
            "unmatched_new": len(self.unmatched_new),
            "ambiguous_new": len(self.ambiguous_new),
            "unmatched_new_examples": self.unmatched_new[:10],
        }


def match_titles(old: dict[str, str], new: dict[str, str]) -> TitleMatch:
    """Match every item of the ``new`` catalogue to at most one item of the ``old`` one by title and year.

    Stages, each only for items the previous ones left: (1) the same normalised main title and year;
    (2) a main or alternative title of one equal to a main or alternative title of the other, same year;
    (3) the same normalised main title with the year off by one (release vs. festival years); (4) the
    main title equal to a ``:``/`` - `` part of an old title, same year ("Star Wars (1977)" ~ "Star Wars:
    Episode IV - A New Hope (1977)"). A new item
    whose key fits several old items is ambiguous and left unmatched (never guessed).
    """
    exact: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    any_key: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    segment: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    for old_id, title in old.items():
        main, year = normalize_title(title)
        exact[(main, year)].add(old_id)
        for key in title_keys(title):
            any_key[(key, year)].add(old_id)
        for key in title_segments(title):
            segment[(key, year)].add(old_id)

    pairs: list[tuple[str, str]] = []
    stages = {"exact": 0, "alternative_title": 0, "year_off_by_one": 0, "title_segment": 0}
    unmatched: list[str] = []
    ambiguous: list[str] = []
    for new_id, title in new.items():
        main, year = normalize_title(title)
        if not main or main == "unknown":
            unmatched.append(new_id)
            continue
        found: tuple[str, set[str]] | None = None
        candidates = exact.get((main, year), set())
        if candidates:
            found = ("exact", candidates)
        else:
            alternative: set[str] = set()
            for key in title_keys(title):
                alternative |= any_key.get((key, year), set())
            if alternative:
                found = ("alternative_title", alternative)
            elif year is not None and year.isdigit():
                nearby = exact.get((main, str(int(year) - 1)), set()) | exact.get((main, str(int(year) + 1)), set())
                if nearby:
                    found = ("year_off_by_one", nearby)
            if found is None and segment.get((main, year)):
                found = ("title_segment", segment[(main, year)])
        if found is None:
            unmatched.append(new_id)
        elif len(found[1]) > 1:
            ambiguous.append(new_id)
        else:
            stages[found[0]] += 1
            pairs.append((next(iter(found[1])), new_id))
    result = TitleMatch(pairs, len(old), len(new), stages, unmatched, ambiguous)
    logger.info(
        "Matched %d of %d new items by title (%.1f%%; %s); %d ambiguous, %d unmatched",
        len(pairs), len(new), 100 * result.match_rate, stages, len(ambiguous), len(unmatched),
    )  # fmt: skip
    return result


def build_title_mapping(
    old_catalog: str | Path, new_catalog: str | Path, old_format: str = "auto", new_format: str = "auto"
) -> TitleMatch:
    """Read two catalogues and match them (see :func:`match_titles`); ``pairs`` are ``(old_id, new_id)``."""
    return match_titles(read_item_titles(old_catalog, old_format), read_item_titles(new_catalog, new_format))


__all__ = [
    "CATALOG_FORMATS",
    "CatalogError",
    "TitleMatch",
    "build_title_mapping",
    "guess_catalog_format",
    "match_titles",
    "normalize_title",
    "read_item_titles",
    "split_title",
    "title_keys",
    "title_segments",
]
