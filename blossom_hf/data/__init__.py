"""Interaction data: sources -> readers -> preprocessing -> leave-one-out split -> examples -> collator.

Typical use::

    from blossom_hf.data import load_interactions, preprocess, PreprocessingConfig, leave_one_out

    interactions = load_interactions("ml-1m")                 # a preset (found or downloaded), a file,
                                                              # a Hub dataset id, an hf:// path, ...
    interactions = from_pandas(df, user_col="user", item_col="item", time_col="ts")   # or your own table
    data = preprocess(interactions, PreprocessingConfig())    # ordered histories, items 1..N
    split = leave_one_out(data)
    train = training_examples(split, "sasrec", max_length=50)

Names are imported on first use, so ``import blossom_hf.data.collator`` (used by training) and the dataset
registry (:mod:`blossom_hf.data.presets`) work without the ``datasets`` package; the readers need it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PAD_ID": "collator",
    "SequenceCollator": "collator",
    "pack_histories": "collator",
    "pad_sequences": "collator",
    "InteractionDataError": "errors",
    "MalformedLineError": "errors",
    "OrderingError": "errors",
    "UnknownColumnError": "errors",
    "PrefixExamples": "examples",
    "RankingDataset": "examples",
    "WindowExamples": "examples",
    "training_examples": "examples",
    "FORMATS": "formats",
    "Interactions": "formats",
    "PRESETS": "presets",
    "DatasetPreset": "presets",
    "ResolvedPreset": "presets",
    "dataset_cache_dir": "presets",
    "default_data_root": "presets",
    "find_preset": "presets",
    "preset_path": "presets",
    "resolve_preset": "presets",
    "ChecksumMismatchError": "download",
    "DatasetDownloadError": "download",
    "LicenseConsentRequired": "download",
    "download_preset": "download",
    "from_arrow": "sources",
    "from_dataset": "sources",
    "from_pandas": "sources",
    "load_interactions": "sources",
    "PreprocessingConfig": "preprocessing",
    "SequenceData": "preprocessing",
    "preprocess": "preprocessing",
    "SPEC_FILE": "spec",
    "DataSpec": "spec",
    "LeaveOneOutSplit": "splits",
    "RankingExamples": "splits",
    "leave_one_out": "splits",
}

__all__ = [
    "ChecksumMismatchError",
    "DataSpec",
    "DatasetDownloadError",
    "DatasetPreset",
    "FORMATS",
    "InteractionDataError",
    "Interactions",
    "LeaveOneOutSplit",
    "LicenseConsentRequired",
    "MalformedLineError",
    "OrderingError",
    "PAD_ID",
    "PRESETS",
    "PrefixExamples",
    "PreprocessingConfig",
    "RankingDataset",
    "RankingExamples",
    "ResolvedPreset",
    "SPEC_FILE",
    "SequenceCollator",
    "SequenceData",
    "UnknownColumnError",
    "WindowExamples",
    "dataset_cache_dir",
    "default_data_root",
    "download_preset",
    "find_preset",
    "from_arrow",
    "from_dataset",
    "from_pandas",
    "leave_one_out",
    "load_interactions",
    "pack_histories",
    "pad_sequences",
    "preprocess",
    "preset_path",
    "resolve_preset",
    "training_examples",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .collator import PAD_ID, SequenceCollator, pack_histories, pad_sequences
    from .download import ChecksumMismatchError, DatasetDownloadError, LicenseConsentRequired, download_preset
    from .errors import InteractionDataError, MalformedLineError, OrderingError, UnknownColumnError
    from .examples import PrefixExamples, RankingDataset, WindowExamples, training_examples
    from .formats import FORMATS, Interactions
    from .preprocessing import PreprocessingConfig, SequenceData, preprocess
    from .presets import (
        PRESETS,
        DatasetPreset,
        ResolvedPreset,
        dataset_cache_dir,
        default_data_root,
        find_preset,
        preset_path,
        resolve_preset,
    )
    from .sources import from_arrow, from_dataset, from_pandas, load_interactions
    from .spec import SPEC_FILE, DataSpec
    from .splits import LeaveOneOutSplit, RankingExamples, leave_one_out
