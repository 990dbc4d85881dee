"""Interaction data: readers -> preprocessing -> leave-one-out split -> examples -> collator.

Typical use::

    from blossom_hf.data import load_interactions, preprocess, PreprocessingConfig, leave_one_out

    interactions = load_interactions("ml-1m")                 # a preset, or a path + format options
    data = preprocess(interactions, PreprocessingConfig())    # ordered histories, items 1..N
    split = leave_one_out(data)
    train = training_examples(split, "sasrec", max_length=50)
"""

from .collator import PAD_ID, SequenceCollator, pack_histories, pad_sequences
from .errors import InteractionDataError, MalformedLineError, OrderingError, UnknownColumnError
from .examples import PrefixExamples, RankingDataset, WindowExamples, training_examples
from .formats import FORMATS, PRESETS, Interactions, default_data_root, load_interactions, preset_path
from .preprocessing import PreprocessingConfig, SequenceData, preprocess
from .spec import SPEC_FILE, DataSpec
from .splits import LeaveOneOutSplit, RankingExamples, leave_one_out

__all__ = [
    "FORMATS",
    "PAD_ID",
    "SPEC_FILE",
    "DataSpec",
    "PRESETS",
    "InteractionDataError",
    "Interactions",
    "LeaveOneOutSplit",
    "MalformedLineError",
    "OrderingError",
    "PreprocessingConfig",
    "PrefixExamples",
    "RankingDataset",
    "RankingExamples",
    "SequenceCollator",
    "SequenceData",
    "UnknownColumnError",
    "WindowExamples",
    "default_data_root",
    "leave_one_out",
    "load_interactions",
    "pack_histories",
    "pad_sequences",
    "preprocess",
    "preset_path",
    "training_examples",
]
