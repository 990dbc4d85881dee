"""BlossomRec configuration: every hyper-parameter of docs/MODEL.md ("Symbols") as a typed, validated field."""

from __future__ import annotations

import dataclasses
import difflib
import logging

from transformers import PreTrainedConfig

logger = logging.getLogger(__name__)

#: Version of the on-disk format (config fields, vocabulary file). A checkpoint written by a newer
#: blossom_hf with a larger number is refused with a clear message instead of being misread.
BLOSSOMREC_FORMAT_VERSION = 1

_ACTIVATIONS = ("gelu", "relu", "silu", "gelu_new", "gelu_pytorch_tanh")
_ATTENTION_TYPES = ("blossom", "full")

#: Extra keyword arguments transformers itself passes to a config (from config.json, from_pretrained or the
#: PreTrainedConfig constructor); every other unknown name is refused, so a typo never goes unnoticed.
_TRANSFORMERS_KWARGS = frozenset({
    "auto_map", "model_type", "name_or_path", "torch_dtype", "num_labels", "output_attentions",
    "attn_implementation", "experts_implementation", "per_layer_config", "rope_scaling", "custom_pipelines",
    "use_cache", "tie_word_embeddings", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "cross_attention_hidden_size",
    "add_cross_attention", "tie_encoder_decoder", "is_decoder", "pruned_heads", "torchscript", "base_model_tp_plan",
    "base_model_pp_plan", "quantization_config", "use_return_dict", "transformers_version", "architectures",
    "output_hidden_states", "return_dict", "dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label",
    "label2id", "problem_type", "peft_config",
})


class BlossomRecConfig(PreTrainedConfig):
    r"""Configuration of a BlossomRec sequential recommender (arXiv 2512.13368; docs/MODEL.md).

    Item id 0 is padding, so ``vocab_size`` is the number of items + 1. The defaults are the paper's
    setting (d=128, 2 layers, 8 query heads over 2 kv heads, LTIS 16/32/4, STIS window 8) with a history
    window of 200.

    Args:
        vocab_size: number of item ids including padding id 0.
        hidden_size: model width d.
        num_hidden_layers: transformer layers.
        num_attention_heads: query heads H (head size d / H, must be even for RoPE).
        num_key_value_heads: key/value heads G (GQA); H must be a multiple of G.
        intermediate_size: FFN inner size.
        hidden_act: FFN activation ("gelu" is the erf form).
        hidden_dropout_prob: dropout on the embedding, the attention output and the FFN output.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: std of the N(0, std) init of Linear and Embedding weights.
        max_history_length: history window L; longer histories keep their most recent L items.
        rope_theta: RoPE base.
        attention_type: "blossom" (LTIS + STIS + gate) or "full" (dense causal baseline, SASRec with RoPE).
        ltis_block_size: LTIS block size b (= compression stride).
        ltis_compression_window: compression window l, a multiple of b.
        ltis_num_selected_blocks: selected blocks n per query and kv head.
        ltis_straight_through: pass a straight-through gradient to the block compressor.
        stis_window: STIS causal window W.
        stis_num_sinks: STIS attention sinks (the first S real items).
        gate_bias_init: initial bias of the (LTIS, STIS) gate logits, the same for every head.
        attn_implementation: attention backend ("eager", "sdpa", "triton" or a registered name); not saved.
    """

    model_type = "blossomrec"

    vocab_size: int = 3707
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    max_history_length: int = 200
    rope_theta: float = 10000.0
    attention_type: str = "blossom"
    ltis_block_size: int = 16
    ltis_compression_window: int = 32
    ltis_num_selected_blocks: int = 4
    ltis_straight_through: bool = True
    stis_window: int = 8
    stis_num_sinks: int = 0
    gate_bias_init: tuple[float, float] | list[float] = (0.0, 0.0)
    pad_token_id: int = 0
    blossomrec_format_version: int = BLOSSOMREC_FORMAT_VERSION

    def __post_init__(self, **kwargs):
        self._refuse_unknown(kwargs)
        self._validate_fields()
        super().__post_init__(**kwargs)

    @classmethod
    def _refuse_unknown(cls, kwargs: dict) -> None:
        """An unknown keyword (a typo such as ``stis_windw=16``) raises, naming the closest valid field."""
        try:
            from transformers import GenerationConfig

            generation = set(GenerationConfig._get_default_generation_params())
        except (ImportError, AttributeError):  # pragma: no cover - other transformers versions
            generation = set()
        unknown = [k for k in kwargs if k not in _TRANSFORMERS_KWARGS and k not in generation and not k.startswith("_")]
        if not unknown:
            return
        fields = [f.name for f in dataclasses.fields(cls)]
        name = unknown[0]
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"BlossomRecConfig has no field {name!r}: {hint}valid fields are "
            f"{sorted(f for f in fields if f in cls.__annotations__)}"
        )

    # ------------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def num_items(self) -> int:
        return self.vocab_size - 1

    def _validate_fields(self) -> None:
        def fail(field: str, message: str) -> None:
            raise ValueError(f"BlossomRecConfig.{field}: {message} (got {getattr(self, field)!r})")

        positive_ints = (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "max_history_length", "ltis_block_size", "ltis_compression_window",
            "ltis_num_selected_blocks", "stis_window",
        )
        for field in positive_ints:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, "must be a positive integer")
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            fail("vocab_size", "must be an integer >= 2 (id 0 is padding, so at least one item)")
        if isinstance(self.stis_num_sinks, bool) or not isinstance(self.stis_num_sinks, int) or self.stis_num_sinks < 0:
            fail("stis_num_sinks", "must be a non-negative integer")
        if self.pad_token_id != 0:
            fail("pad_token_id", "must be 0 (item id 0 is the padding id)")
        for field in ("hidden_dropout_prob",):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                fail(field, "must be a number in [0, 1)")
        for field in ("layer_norm_eps", "initializer_range", "rope_theta"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                fail(field, "must be a positive number")
        if self.hidden_act not in _ACTIVATIONS:
            fail("hidden_act", f"must be one of {list(_ACTIVATIONS)}")
        if self.attention_type not in _ATTENTION_TYPES:
            fail("attention_type", f"must be one of {list(_ATTENTION_TYPES)}")
        if not isinstance(self.ltis_straight_through, bool):
            fail("ltis_straight_through", "must be true or false")
        if self.hidden_size % self.num_attention_heads != 0:
            fail("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            fail("num_attention_heads", f"must be divisible by num_key_value_heads={self.num_key_value_heads}")
        if (self.hidden_size // self.num_attention_heads) % 2 != 0:
            fail("hidden_size", "hidden_size / num_attention_heads (the head size) must be even for RoPE")
        if self.ltis_compression_window % self.ltis_block_size != 0:
            fail("ltis_compression_window", f"must be a multiple of ltis_block_size={self.ltis_block_size}")
        gate = self.gate_bias_init
        if not isinstance(gate, list | tuple) or len(gate) != 2 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in gate
        ):
            fail("gate_bias_init", "must be two numbers: the LTIS and STIS gate bias")
        self.gate_bias_init = [float(gate[0]), float(gate[1])]
        version = self.blossomrec_format_version
        if not isinstance(version, int) or version < 1:
            fail("blossomrec_format_version", "must be a positive integer")
        if version > BLOSSOMREC_FORMAT_VERSION:
            raise ValueError(
                f"This checkpoint was written in BlossomRec format version {version}, newer than the "
                f"{BLOSSOMREC_FORMAT_VERSION} this code reads. Upgrade blossom_hf (or the checkpoint's remote code)."
            )


__all__ = ["BlossomRecConfig", "BLOSSOMREC_FORMAT_VERSION"]
