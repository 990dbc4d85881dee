"""The record types of the dataset registry (``presets.py``): file layouts, download sources, terms of use, card
facts, a preset and a preset found on disk. Standard library only, like the registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataTerms", "DatasetInfo", "DatasetPreset", "DownloadSource", "FileLayout", "ResolvedPreset"]


@dataclass(frozen=True)
class FileLayout:
    """One way a dataset can sit in a data folder.

    Attributes:
        relative_path: the interaction file, relative to the data folder (``ml-1m/ratings.dat``).
        format: reader format (one of :data:`blossom_hf.data.formats.FORMATS`).
        options: reader options (``user_col``, ``order_col``, ...), passed to ``load_interactions``.
        description: one sentence: which copy this is and how its histories are ordered.
    """

    relative_path: str
    format: str
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class DownloadSource:
    """A file to fetch, and how to check it.

    Attributes:
        url: the official location.
        filename: the name it is stored and mirrored under (``ml-1m.zip``).
        size: expected size in bytes (checked; ``None`` = unknown).
        sha256: expected SHA-256 hex digest (``None`` only where no checksum could be established).
        md5: a second, independently published digest, checked when given.
        archive: ``"zip"`` (extracted into the data folder, which must then hold the layout) or ``None``
            (the file itself is stored at the layout's path).
        provides: the files, relative to the data folder, that the download must produce.
        checksum_source: where the checksums come from (for the docs and error messages).
    """

    url: str
    filename: str
    size: int | None
    sha256: str | None
    md5: str | None = None
    archive: str | None = None
    provides: tuple[str, ...] = ()
    checksum_source: str = ""


@dataclass(frozen=True)
class DataTerms:
    """Terms of use of a dataset.

    Attributes:
        licence_id: short id accepted by ``$BLOSSOM_ACCEPT_LICENSE`` (``movielens``).
        line: the licence line shown (logged) before a download.
        url: where the full licence text is.
        requires_consent: a download needs the user's explicit consent (``--accept-license``).
    """

    licence_id: str
    line: str
    url: str
    requires_consent: bool


@dataclass(frozen=True)
class DatasetInfo:
    """How a training dataset is named, credited and compared in a model card.

    Attributes:
        key: short name (the data preset of ``blossom_hf.data``, e.g. ``ml-1m``).
        dataset_id: identifier in the card's ``datasets`` metadata and ``model-index``.
        pretty_name: human-readable name.
        description: one sentence on the copy used.
        terms: markdown paragraph on the data's terms of use.
        citation: BibTeX of the data.
        published: the BlossomRec paper's number on this dataset, for context (or ``None``).
        item_kind: what an item is ("movie", "product").
    """

    key: str
    dataset_id: str
    pretty_name: str
    description: str
    terms: str
    citation: str
    published: str | None = None
    item_kind: str = "item"


@dataclass(frozen=True)
class DatasetPreset:
    """Everything known about one named dataset (see the module doc)."""

    name: str
    description: str
    layouts: tuple[FileLayout, ...]
    terms: DataTerms
    card: DatasetInfo
    download: DownloadSource | None = None
    sample_histories: tuple[tuple[int | str, ...], ...] = ()

    # The preferred layout, under the names the earlier single-layout preset had.
    @property
    def relative_path(self) -> str:
        return self.layouts[0].relative_path

    @property
    def format(self) -> str:
        return self.layouts[0].format

    @property
    def options(self) -> Mapping[str, Any]:
        return self.layouts[0].options


@dataclass(frozen=True)
class ResolvedPreset:
    """A preset found on disk: the file, the layout it matched and the folder it was found in."""

    preset: DatasetPreset
    layout: FileLayout
    root: Path
    origin: str

    @property
    def path(self) -> Path:
        return self.root / self.layout.relative_path

    @property
    def format(self) -> str:
        return self.layout.format

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.layout.options)
