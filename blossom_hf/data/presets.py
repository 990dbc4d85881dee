"""The dataset registry: every fact the package knows about a named dataset, in one place.

One :class:`DatasetPreset` per dataset (``ml-1m``, ``ml-100k``, ``beauty``, ``video-games``; the record types are
in ``preset_types.py``) holds

* the file layouts it may be found in (:class:`FileLayout`: a path relative to a data folder, the reader
  format of :func:`blossom_hf.data.formats.load_interactions` and its options), the preferred one first;
* where to download it (:class:`DownloadSource`: URL, size, checksums, archive type);
* its terms of use (:class:`DataTerms`: the licence line shown before a download, whether the user must
  consent first, where the full text is);
* what a model card says about it (:class:`DatasetInfo`) and fixed sample histories for ``sample_scores.json``.

Where a preset is looked for (:func:`find_preset`, :func:`resolve_preset`), first match wins:

1. ``data_dir`` (the ``--data-dir`` option), when given;
2. ``$BLOSSOM_DATA_DIR``, when set;
3. the user cache :func:`dataset_cache_dir` (``$BLOSSOM_HF_HOME/datasets``, else
   ``$XDG_CACHE_HOME/blossom_hf/datasets``, else ``~/.cache/blossom_hf/datasets``), where downloads go.

Within a folder every layout of the preset is tried in order. The library never looks anywhere else (in
particular not beside the source tree). This module imports only the standard library, so the registry can
be read where ``datasets`` is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from .errors import InteractionDataError
from .preset_types import DatasetInfo, DatasetPreset, DataTerms, DownloadSource, FileLayout, ResolvedPreset

DATA_DIR_ENV = "BLOSSOM_DATA_DIR"
HOME_ENV = "BLOSSOM_HF_HOME"
ACCEPT_LICENSE_ENV = "BLOSSOM_ACCEPT_LICENSE"
OFFLINE_ENV = "BLOSSOM_OFFLINE"
MIRROR_ENV = "BLOSSOM_DATASETS_MIRROR"


# --------------------------------------------------------------------------------------------------
# terms and citations

MOVIELENS_CITATION = """@article{harper2015movielens,
  title   = {The MovieLens Datasets: History and Context},
  author  = {Harper, F. Maxwell and Konstan, Joseph A.},
  journal = {ACM Transactions on Interactive Intelligent Systems (TiiS)},
  volume  = {5},
  number  = {4},
  pages   = {19:1--19:19},
  year    = {2015},
  doi     = {10.1145/2827872}
}"""
AMAZON_CITATIONS = """@inproceedings{he2016ups,
  title     = {Ups and Downs: Modeling the Visual Evolution of Fashion Trends with One-Class Collaborative Filtering},
  author    = {He, Ruining and McAuley, Julian},
  booktitle = {Proceedings of the 25th International Conference on World Wide Web (WWW)},
  pages     = {507--517},
  year      = {2016}
}
@inproceedings{mcauley2015image,
  title     = {Image-Based Recommendations on Styles and Substitutes},
  author    = {McAuley, Julian and Targett, Christopher and Shi, Qinfeng and van den Hengel, Anton},
  booktitle = {Proceedings of the 38th International ACM SIGIR Conference on Research and Development in
               Information Retrieval (SIGIR)},
  pages     = {43--52},
  year      = {2015}
}"""
MOVIELENS_CARD_TERMS = (
    "MovieLens data: GroupLens Research, University of Minnesota. Research use only; no commercial use "
    "without permission. The University of Minnesota and GroupLens do not endorse this model or any "
    "result obtained with it. The MovieLens licence forbids redistributing the data, so this repository "
    "holds none of it: only the model weights, the item vocabulary (the MovieLens movie ids the model "
    "knows) and aggregate metrics. Work that uses the data must cite Harper & Konstan (2015)."
)
AMAZON_CARD_TERMS = (
    "Amazon review data (McAuley et al., UCSD, 2014 release), for research use. This repository holds "
    "none of the reviews or interactions: only the model weights, the item vocabulary (the dataset's "
    "re-indexed item ids) and aggregate metrics. Work that uses the data must cite He & McAuley (WWW 2016) "
    "and McAuley et al. (SIGIR 2015)."
)

MOVIELENS_TERMS = DataTerms(
    licence_id="movielens",
    line=(
        "MovieLens licence (GroupLens Research, University of Minnesota): research use only; no commercial use "
        "without GroupLens' permission; do not redistribute the data; do not state or imply endorsement by the "
        "University of Minnesota or GroupLens; acknowledge the data in publications (cite Harper & Konstan, "
        "ACM TiiS 2015)."
    ),
    url="https://files.grouplens.org/datasets/movielens/ml-1m-README.txt",
    requires_consent=True,
)
AMAZON_TERMS = DataTerms(
    licence_id="amazon-2014",
    line=(
        "Amazon review data (McAuley et al., UCSD, 2014 release), preprocessed by the cited paper's authors: "
        "research use; cite He & McAuley (WWW 2016) and McAuley et al. (SIGIR 2015)."
    ),
    url="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
    requires_consent=False,
)

# --------------------------------------------------------------------------------------------------
# the registry

_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_TFDS_CHECKSUMS = (
    "size and SHA-256 as recorded by tensorflow/datasets (tensorflow_datasets/url_checksums/movielens.txt); "
    "MD5 as published by GroupLens beside the file"
)
# Raw files of the paper authors' repositories, pinned to the commits the project's copies were checked against.
_S3REC_BEAUTY = (
    "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data/Beauty.txt"
)
_SASREC_VIDEO = "https://raw.githubusercontent.com/kang205/SASRec/e3738967fddab206d6eeb4fda433e7a7034dd8b1/data/Video.txt"

PRESETS: Mapping[str, DatasetPreset] = MappingProxyType(
    {
        "ml-1m": DatasetPreset(
            name="ml-1m",
            description="MovieLens-1M: 1,000,209 ratings of 3,706 movies by 6,040 users (GroupLens, 2003).",
            layouts=(
                FileLayout(
                    "ml-1m/ratings_ordered.tsv.gz",
                    "tsv",
                    MappingProxyType(
                        {
                            "user_col": "user_id",
                            "item_col": "item_id",
                            "time_col": "timestamp",
                            "order_col": "seq_idx",
                            "rating_col": "rating",
                        }
                    ),
                    "the project's reconstructed copy, ordered by the per-user chronological index seq_idx "
                    "(20% of its timestamps are missing, so seq_idx, not timestamp, orders the histories)",
                ),
                FileLayout(
                    "ml-1m/ratings.dat",
                    "movielens",
                    MappingProxyType({}),
                    "the GroupLens original (UserID::MovieID::Rating::Timestamp), ordered by timestamp; "
                    "equal timestamps keep file order",
                ),
            ),
            terms=MOVIELENS_TERMS,
            card=DatasetInfo(
                "ml-1m", "movielens-1m", "MovieLens-1M",
                "MovieLens-1M (GroupLens): 1,000,209 ratings of 3,706 movies by 6,040 users, 2000-2003; every "
                "rating is an interaction, ordered by the per-user chronological index.",
                MOVIELENS_CARD_TERMS, MOVIELENS_CITATION, "NDCG@10 0.6128 (uni100, history window 50)", "movie",
            ),  # fmt: skip
            download=DownloadSource(
                url=f"{_GROUPLENS}/ml-1m.zip",
                filename="ml-1m.zip",
                size=5_917_549,
                sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                md5="c4d9eecfca2ab87c1945afe126590906",
                archive="zip",
                provides=("ml-1m/ratings.dat", "ml-1m/movies.dat", "ml-1m/users.dat", "ml-1m/README"),
                checksum_source=_TFDS_CHECKSUMS,
            ),
            # well-known movies (raw MovieLens ids), used as fixed sample histories of a model card
            sample_histories=((1, 1196, 260), (2571, 1210, 1198, 1240, 589), (318, 858, 50, 527, 593, 2028, 296, 608)),
        ),
        "ml-100k": DatasetPreset(
            name="ml-100k",
            description="MovieLens-100K: 100,000 ratings of 1,682 movies by 943 users (GroupLens, 1998).",
            layouts=(
                FileLayout(
                    "ml-100k/u.data",
                    "ml-100k",
                    MappingProxyType({}),
                    "the GroupLens original u.data, ordered by timestamp; equal timestamps keep file order",
                ),
            ),
            terms=replace(MOVIELENS_TERMS, url=f"{_GROUPLENS}/ml-100k-README.txt"),
            card=DatasetInfo(
                "ml-100k", "movielens-100k", "MovieLens-100K",
                "MovieLens-100K (GroupLens): 100,000 ratings of 1,682 movies by 943 users, 1997-1998, ordered by "
                "timestamp (ties in file order).",
                MOVIELENS_CARD_TERMS, MOVIELENS_CITATION, None, "movie",
            ),  # fmt: skip
            download=DownloadSource(
                url=f"{_GROUPLENS}/ml-100k.zip",
                filename="ml-100k.zip",
                size=4_924_029,
                sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                md5="0e33842e24a9c977be4e0107933c0723",
                archive="zip",
                provides=("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user", "ml-100k/README"),
                checksum_source=_TFDS_CHECKSUMS,
            ),
        ),
        "beauty": DatasetPreset(
            name="beauty",
            description="Amazon Beauty 5-core, S3Rec preprocessing: 22,363 users, 12,101 items, 198,502 interactions.",
            layouts=(
                FileLayout(
                    "beauty/Beauty.txt",
                    "sequences",
                    MappingProxyType({}),
                    "one chronological 'user item item ...' line per user; no timestamps",
                ),
            ),
            terms=AMAZON_TERMS,
            card=DatasetInfo(
                "beauty", "amazon-beauty", "Amazon Beauty (5-core)",
                "Amazon Beauty 5-core reviews, S3Rec preprocessing: 22,363 users, 12,101 items, 198,502 "
                "interactions in chronological order (item ids are the dataset's re-indexed ids, not ASINs).",
                AMAZON_CARD_TERMS, AMAZON_CITATIONS, "Recall@10 0.4734 (uni100, history window 50)", "product",
            ),  # fmt: skip
            download=DownloadSource(
                url=_S3REC_BEAUTY,
                filename="Beauty.txt",
                size=1_090_094,
                sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                provides=("beauty/Beauty.txt",),
                checksum_source="SHA-256 of the file as published in RUCAIBox/CIKM2020-S3Rec, byte-identical in "
                "salesforce/ICLRec and Woeee/FMLP-Rec",
            ),
        ),
        "video-games": DatasetPreset(
            name="video-games",
            description="Amazon Video Games, SASRec preprocessing: 31,013 users, 23,715 items, 287,107 interactions.",
            layouts=(
                FileLayout(
                    "video-games/Video.txt",
                    "user-item",
                    MappingProxyType({}),
                    "'user item' lines, each user's lines in chronological order; no timestamps",
                ),
            ),
            terms=AMAZON_TERMS,
            card=DatasetInfo(
                "video-games", "amazon-video-games", "Amazon Video Games",
                "Amazon Video Games reviews, SASRec preprocessing: 31,013 users, 23,715 items, 287,107 "
                "interactions in chronological order (item ids are the dataset's re-indexed ids, not ASINs).",
                AMAZON_CARD_TERMS, AMAZON_CITATIONS, "NDCG@10 0.5317 (uni100, history window 50)", "product",
            ),  # fmt: skip
            download=DownloadSource(
                url=_SASREC_VIDEO,
                filename="Video.txt",
                size=3_187_124,
                sha256="b7376fe24430743f411dc7f567285657b2adb3f74361cc7ba0aee94f3024b651",
                provides=("video-games/Video.txt",),
                checksum_source="SHA-256 of the file as published in kang205/SASRec",
            ),
        ),
    }
)

#: Card facts of every preset (the model card's view of the registry).
KNOWN_DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({name: p.card for name, p in PRESETS.items()})
#: Fixed ML-1M sample histories (raw MovieLens ids).
_ML1M_SAMPLE_HISTORIES = tuple(list(h) for h in PRESETS["ml-1m"].sample_histories)


# --------------------------------------------------------------------------------------------------
# where presets are looked for


def get_preset(name: str) -> DatasetPreset:
    """The preset ``name``; raises a one-line error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InteractionDataError(f"unknown dataset preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def dataset_cache_dir() -> Path:
    """The user cache downloads go to: ``$BLOSSOM_HF_HOME/datasets``, else ``$XDG_CACHE_HOME/blossom_hf/datasets``,
    else ``~/.cache/blossom_hf/datasets``."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "blossom_hf" / "datasets"


def data_search_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders a preset is looked for in, in order, each with a label for messages."""
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("--data-dir", Path(data_dir).expanduser()))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        roots.append((f"${DATA_DIR_ENV}", Path(env).expanduser()))
    roots.append(("cache", dataset_cache_dir()))
    return roots


def default_data_root() -> Path:
    """The first folder searched when no ``data_dir`` is given: ``$BLOSSOM_DATA_DIR`` if set, else the user cache."""
    return data_search_roots(None)[0][1]


def find_preset(name: str, data_dir: str | os.PathLike | None = None) -> ResolvedPreset | None:
    """The preset's file in the first search root (:func:`data_search_roots`) holding any of its layouts.

    A root is the folder that holds ``ml-1m/``; the ``ml-1m`` folder itself is accepted too.
    """
    preset = get_preset(name)
    for origin, root in data_search_roots(data_dir):
        for layout in preset.layouts:
            folder = Path(layout.relative_path).parts[0]
            # the folder holding ml-1m/, or (a common slip) the ml-1m folder itself
            for base in (root, root.parent) if root.name == folder else (root,):
                if (base / layout.relative_path).is_file():
                    return ResolvedPreset(preset, layout, base, origin)
    return None


def not_found_message(name: str, data_dir: str | os.PathLike | None = None) -> str:
    preset = get_preset(name)
    places = "; ".join(f"{label} {root}" for label, root in data_search_roots(data_dir))
    files = " or ".join(layout.relative_path for layout in preset.layouts)
    return f"dataset preset {name!r} not found (looked for {files} in: {places})"


def resolve_preset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    accept_license: bool | None = None,
    progress: bool = True,
) -> ResolvedPreset:
    """Find preset ``name`` (see the module doc); if absent, download it into the user cache.

    Args:
        name: a key of :data:`PRESETS`.
        data_dir: a folder searched first (``--data-dir``).
        download: fetch a missing preset from its official source; ``False`` raises instead.
        accept_license: the user accepts the data's terms (needed where they require consent, e.g.
            MovieLens); ``None`` reads ``$BLOSSOM_ACCEPT_LICENSE``.
        progress: show a progress bar while downloading.

    Raises:
        FileNotFoundError: not found and ``download`` is off or the preset has no download source.
        LicenseConsentRequired: the terms need consent and it was not given (a ``PermissionError``).
        DatasetDownloadError: offline, unreachable, or a checksum mismatch (a ``ValueError``).
    """
    found = find_preset(name, data_dir)
    if found is not None:
        return found
    preset = get_preset(name)
    if not download or preset.download is None:
        raise FileNotFoundError(
            not_found_message(name, data_dir)
            + f"; pass --data-dir / set ${DATA_DIR_ENV} to a folder holding it"
            + ("" if preset.download is None else ", or allow the download")
        )
    from .download import download_preset

    root = download_preset(preset, dataset_cache_dir(), accept_license=accept_license, progress=progress)
    found = find_preset(name, data_dir)
    if found is None:  # the download went to the cache, which is always searched
        raise FileNotFoundError(not_found_message(name, data_dir) + f" after downloading it into {root}")
    return found


def preset_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Absolute path of the file behind preset ``name`` (found without downloading); raises if missing."""
    return resolve_preset(name, data_dir, download=False).path


__all__ = [
    "ACCEPT_LICENSE_ENV",
    "AMAZON_CITATIONS",
    "DATA_DIR_ENV",
    "DataTerms",
    "DatasetInfo",
    "DatasetPreset",
    "DownloadSource",
    "FileLayout",
    "HOME_ENV",
    "KNOWN_DATASETS",
    "MIRROR_ENV",
    "MOVIELENS_CITATION",
    "OFFLINE_ENV",
    "PRESETS",
    "ResolvedPreset",
    "data_search_roots",
    "dataset_cache_dir",
    "default_data_root",
    "find_preset",
    "get_preset",
    "preset_path",
    "resolve_preset",
]
