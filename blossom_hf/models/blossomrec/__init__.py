"""BlossomRec model folder. Every file here is flat and imports only torch/transformers/triton and its
siblings, so the folder doubles as the code of a Hub repo loaded with ``trust_remote_code=True``."""

from .attention_patterns import BlossomPattern
from .configuration_blossomrec import BLOSSOMREC_FORMAT_VERSION, BlossomRecConfig
from .item_vocabulary import ItemVocabulary, UnknownItemError
from .modeling_blossomrec import BlossomRecModel, BlossomRecOutput, BlossomRecPreTrainedModel, Recommendations
from .registry import (
    AttentionBackend,
    BlossomAttentionKwargs,
    available_attention_backends,
    list_attention_backends,
    register_attention_backend,
    unregister_attention_backend,
)

__all__ = [
    "AttentionBackend",
    "BLOSSOMREC_FORMAT_VERSION",
    "BlossomAttentionKwargs",
    "BlossomPattern",
    "BlossomRecConfig",
    "BlossomRecModel",
    "BlossomRecOutput",
    "BlossomRecPreTrainedModel",
    "ItemVocabulary",
    "Recommendations",
    "UnknownItemError",
    "available_attention_backends",
    "list_attention_backends",
    "register_attention_backend",
    "unregister_attention_backend",
]
