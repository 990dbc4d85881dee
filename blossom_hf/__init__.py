"""blossom_hf: the BlossomRec sparse-attention sequential recommender as a Hugging Face model.

Importing the package registers ``BlossomRecConfig``/``BlossomRecModel`` with ``AutoConfig``/``AutoModel``
and the attention backends ("eager", "sdpa", and "triton" where Triton can run).
"""

from transformers import AutoConfig, AutoModel

from .models.blossomrec import (
    BLOSSOMREC_FORMAT_VERSION,
    AttentionBackend,
    BlossomAttentionKwargs,
    BlossomPattern,
    BlossomRecConfig,
    BlossomRecModel,
    BlossomRecOutput,
    BlossomRecPreTrainedModel,
    ItemVocabulary,
    Recommendations,
    UnknownItemError,
    available_attention_backends,
    list_attention_backends,
    register_attention_backend,
    unregister_attention_backend,
)
from .tables import recommend_table

__version__ = "0.1.0"

AutoConfig.register(BlossomRecConfig.model_type, BlossomRecConfig, exist_ok=True)
AutoModel.register(BlossomRecConfig, BlossomRecModel, exist_ok=True)

__all__ = [
    "recommend_table",
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
    "__version__",
]
