"""BlossomRec: a SASRec-style post-LN transformer recommender whose attention is BlossomRec's
LTIS + STIS sparse attention (arXiv 2512.13368; docs/MODEL.md), with swappable attention backends.

Layout of the model (docs/MODEL.md, "Backbone"):

    h0 = Dropout(LayerNorm(E[items]))
    per layer:  h = LayerNorm(h + Dropout(Attention(h)));  h = LayerNorm(h + Dropout(FFN(h)))
    scores(t) = h[t] @ E^T   (tied item embedding, id 0 = padding is never recommended)

Histories may be left- or right-padded (item 0 = padding). The model moves the real items of every row
to the front ("compaction"), keeps the most recent ``max_history_length`` of them, runs the layers, and
maps the hidden states back to the input positions. So RoPE positions and LTIS blocks count from the
first real item, and left and right padding give the same scores (docs/MODEL.md, "Padding").

Serving path (docs/MODEL.md, "Serving"): ``forward(..., output_last_hidden_state=False)`` and ``recommend()``
need only the scores of the last real position, so the last layer computes attention, FFN and scores for that
one query per row (keys, values and compressed keys still cover the history). Training and the default
``forward`` keep every position.

Input checks (:func:`validate_input_ids`) run in eager mode; under ``torch.compile``/``torch.export`` the forward
is free of data-dependent Python checks and the compacted length is static (``min(L, max_history_length)``);
call :meth:`BlossomRecModel.validate_inputs` yourself before a compiled/exported model if inputs are untrusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .attention_patterns import BlossomPattern
from .configuration_blossomrec import BlossomRecConfig
from .inputs_blossomrec import CompactedBatch, checked_input_ids, compact_histories, validate_input_ids
from .item_vocabulary import ItemVocabulary
from .layers_blossomrec import (  # noqa: F401  (BlossomRecAttention, BlossomRecRotaryEmbedding: public here too)
    BlossomRecAttention,
    BlossomRecBlockCompressor,
    BlossomRecLayer,
    BlossomRecRotaryEmbedding,
)
from .recommend_blossomrec import Recommendations, RecommendMixin
from .registry import resolve_attention_backend
from .save_load_blossomrec import SaveLoadMixin

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers without the initialization module
    from torch.nn import init

logger = logging.getLogger(__name__)

_IGNORE_INDEX = -100


@dataclass
class BlossomRecOutput(ModelOutput):
    """Outputs of :class:`BlossomRecModel`.

    Attributes:
        loss: cross-entropy over all items (when ``labels`` are given).
        logits: ``[B, vocab_size]`` scores of every item for the last real position of each history
            (column 0, padding, is ``-inf``).
        last_hidden_state: ``[B, L, hidden]`` user states aligned with the input positions (zeros at padding
            and at items dropped because the history was longer than the window); ``None`` on the serving path
            (``output_last_hidden_state=False``).
        hidden_states: per-layer states (embedding output first) in the compacted layout, if asked.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None



class BlossomRecPreTrainedModel(PreTrainedModel):
    config_class = BlossomRecConfig
    base_model_prefix = "blossomrec"
    main_input_name = "input_ids"
    _supports_sdpa = True
    #: BlossomRec's own backends by name, plus functions registered with transformers' AttentionInterface for
    #: attention_type="full" (registry.py)
    _supports_attention_backend = True
    _no_split_modules = ["BlossomRecLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                if getattr(module, "_is_blossom_gate", False):
                    ltis_bias, stis_bias = self.config.gate_bias_init
                    bias = torch.tensor([ltis_bias, stis_bias], dtype=module.bias.dtype)
                    init.copy_(module.bias, bias.repeat(module.bias.shape[0] // 2).to(module.bias.device))
                else:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BlossomRecBlockCompressor):
            init.zeros_(module.intra_window_position)

    # --- attention backend selection: BlossomRec's own registry (see registry.py) ---------------
    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        return resolve_attention_backend(attn_implementation, self.config.attention_type)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        return resolve_attention_backend(requested_attention, self.config.attention_type)

    def set_attn_implementation(self, attn_implementation: str, allow_all_kernels: bool = False) -> None:
        """Switch the attention backend at run time ("eager", "sdpa", "triton", a name registered with
        ``blossom_hf.register_attention_backend``, or, for ``attention_type="full"``, a function registered with
        ``transformers.AttentionInterface``). Availability is checked here, once.

        The weights are untouched: the scores change only by floating-point rounding.
        """
        if isinstance(attn_implementation, dict):
            attn_implementation = attn_implementation.get("", self.config._attn_implementation)
        self.config._attn_implementation_internal = resolve_attention_backend(
            attn_implementation, self.config.attention_type)



class BlossomRecModel(RecommendMixin, SaveLoadMixin, BlossomRecPreTrainedModel):
    """BlossomRec sequential recommender: item histories in, next-item scores out.

    ``model(input_ids)`` returns :class:`BlossomRecOutput`; ``model.recommend(histories, k)`` maps raw item
    ids through ``model.vocabulary`` (an :class:`ItemVocabulary`, saved beside the weights).
    """

    def __init__(self, config: BlossomRecConfig):
        super().__init__(config)
        self.item_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(BlossomRecLayer(config, i) for i in range(config.num_hidden_layers))
        self.rotary = BlossomRecRotaryEmbedding(config)
        self.vocabulary: ItemVocabulary | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embeddings = value

    # ----------------------------------------------------------------------------------------------
    def validate_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The checks ``forward`` runs in eager mode (shape, dtype, id range, empty rows, mask agreement); returns
        ``real [B, L]``. Call it before a ``torch.compile``d or exported model, which skips them."""
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids[None]
        return validate_input_ids(input_ids, self.config.vocab_size, attention_mask)

    def encode(self, compact: CompactedBatch, output_hidden_states: bool = False, last_only: bool = False):
        """Run the layers on a compacted batch; returns ``hidden [B, Lc, d]`` (and all layer states).

        With ``last_only`` the last layer computes only the last real position of each row and ``hidden`` is
        ``[B, 1, d]`` (the serving path; ``output_hidden_states`` then holds the earlier layers only).
        """
        pattern = BlossomPattern.from_config(self.config)
        hidden = self.embedding_dropout(self.embedding_norm(self.item_embeddings(compact.input_ids)))
        rotary = self.rotary(hidden.shape[1], hidden.device)
        states = [hidden] if output_hidden_states else None
        last_index = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            positions = (compact.lengths - 1)[:, None] if last_only and index == last_index else None
            hidden = layer(hidden, rotary, compact.valid, compact.lengths, pattern, positions)
            if states is not None and positions is None:
                states.append(hidden)
        return hidden, states

    def score_items(self, hidden: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``hidden [..., d] @ E^T``: all items (column 0 = -inf) or the candidates ``item_ids [..., C]``."""
        weight = self.item_embeddings.weight
        if item_ids is None:
            scores = hidden @ weight.t().to(hidden.dtype)
            scores[..., 0] = float("-inf")
            return scores
        candidates = weight[item_ids].to(hidden.dtype)  # [..., C, d]
        return (candidates @ hidden.unsqueeze(-1)).squeeze(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool = True,
        output_last_hidden_state: bool = True,
        **kwargs,
    ) -> BlossomRecOutput | tuple:
        """Score the next item after each history.

        Args:
            input_ids: ``[B, L]`` item indices, 0 = padding (left, right or both).
            attention_mask: optional ``[B, L]``; must mark exactly the non-zero items.
            labels: ``[B]`` next item of each history (loss at the last position, RecBole style) or
                ``[B, L]`` next item at every position. Entries are item indices ``1..vocab_size-1``, or 0 /
                -100 for "no target"; anything else raises, and so do labels without any target.
            return_logits: set False to skip the ``[B, vocab_size]`` scores (e.g. when a training loop
                computes its own chunked or sampled loss from ``last_hidden_state``).
            output_last_hidden_state: set False (without labels) for the serving path: the last layer computes
                only the last real position of each row and ``last_hidden_state`` is ``None``.
        """
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids[None]
        compiling = torch.compiler.is_compiling()
        longest = None
        if compiling:  # no data-dependent checks inside a graph (validate_inputs() does them)
            real = input_ids != 0
        else:
            real, longest = checked_input_ids(input_ids, self.config.vocab_size, attention_mask)
        input_ids = input_ids.long()
        compact = compact_histories(input_ids, real, self.config.max_history_length, static=compiling,
                                    longest=longest)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        serving = labels is None and not output_last_hidden_state and not output_hidden_states
        hidden, states = self.encode(compact, output_hidden_states, last_only=serving)

        batch_index = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[:, 0] if serving else hidden[batch_index, compact.lengths - 1]
        needs_logits = return_logits or (labels is not None and labels.dim() == 1)
        logits = self.score_items(last) if needs_logits else None
        loss = None if labels is None else self._loss(hidden, last, logits, compact, labels, input_ids.shape)

        aligned = None
        if not serving:  # hidden states back at their input positions (a spare column takes the padding slots)
            in_len, width = input_ids.shape[1], hidden.shape[-1]
            target = torch.where(compact.valid, compact.source, in_len)[..., None].expand(-1, -1, width)
            aligned = hidden.new_zeros(input_ids.shape[0], in_len + 1, width).scatter(1, target, hidden)[:, :in_len]
        output = BlossomRecOutput(
            loss=loss, logits=logits, last_hidden_state=aligned,
            hidden_states=tuple(states) if states is not None else None,
        )
        if not return_logits:
            output.logits = None
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()

    def _loss(self, hidden, last, logits, compact: CompactedBatch, labels: torch.Tensor, input_shape) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError("labels must be an integer tensor of item indices")
        labels = labels.to(hidden.device).long()
        vocab_size = self.config.vocab_size
        per_row = labels.dim() == 1 and labels.shape[0] == input_shape[0]
        if not per_row and tuple(labels.shape) != tuple(input_shape):
            raise ValueError(
                f"labels must have shape [batch]={input_shape[0]} or [batch, length]={tuple(input_shape)}, "
                f"got {tuple(labels.shape)}"
            )
        bad = ((labels < 0) & (labels != _IGNORE_INDEX)) | (labels >= vocab_size)
        if per_row:
            keep = labels > 0
        else:
            gathered = torch.gather(labels, 1, compact.source.clamp_min(0))
            keep = compact.valid & (gathered > 0)
        any_bad, any_target = torch.stack([bad.any(), keep.any()]).tolist()  # one wait for the device
        if any_bad:
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"label {int(labels[where])} at {list(where)} is not an item index: labels must be in "
                f"[1, {vocab_size}) or 0 / {_IGNORE_INDEX} for 'no target'"
            )
        if per_row:
            targets, scores = torch.where(keep, labels, _IGNORE_INDEX), logits
        else:
            targets, scores = gathered[keep], self.score_items(hidden[keep])
        if not any_target:
            raise ValueError(
                "labels hold no target (every entry is 0 or -100, or sits at a padded/dropped position): the loss "
                "would be NaN; drop this batch or give at least one next-item label"
            )
        return F.cross_entropy(scores.float(), targets, ignore_index=_IGNORE_INDEX)


# plain save_pretrained / push_to_hub write the flat code files and auto_map (transformers' own mechanism)
BlossomRecConfig.register_for_auto_class()
BlossomRecModel.register_for_auto_class("AutoModel")

__all__ = ["BlossomRecModel", "BlossomRecPreTrainedModel", "BlossomRecOutput", "Recommendations"]
