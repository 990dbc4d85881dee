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
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

# importing the backend files registers "eager", "sdpa" and "triton" (each file holds its own registration)
from .attention_eager import eager_attention_forward  # noqa: F401
from .attention_patterns import BlossomPattern, ltis_window_keys
from .attention_sdpa import sdpa_attention_forward  # noqa: F401
from .attention_triton import triton_attention_forward  # noqa: F401
from .configuration_blossomrec import BlossomRecConfig
from .item_vocabulary import VOCABULARY_FILE, ItemVocabulary, as_histories
from .registry import get_attention_backend, resolve_attention_backend

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


@dataclass
class Recommendations:
    """Top-k items of one history: raw item ids (best first) and their scores."""

    items: list
    scores: list[float]

    def __iter__(self):
        return iter(zip(self.items, self.scores, strict=True))


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
class BlossomRecRotaryEmbedding(nn.Module):
    """RoPE tables ``cos, sin [L, head_dim]`` for positions ``0..L-1`` (half-split rotation).

    The frequencies are recomputed at each call (a few dozen numbers) rather than kept in a buffer, so
    no state can be missed when weights are loaded onto a model built on the meta device.
    """

    def __init__(self, config: BlossomRecConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = float(config.rope_theta)

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.head_dim
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x [B, heads, L, D]`` (computed in fp32, returned in x's dtype)."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class BlossomRecBlockCompressor(nn.Module):
    """LTIS compressor φ: window keys + learned intra-window positions -> one key per window.

    ``k~[γ, w] = W2 ReLU(W1 flatten(K_win[γ, w] + P[γ]))``; φ is shared by the kv heads, P is per kv head.
    """

    def __init__(self, config: BlossomRecConfig):
        super().__init__()
        window, head_dim = config.ltis_compression_window, config.head_dim
        self.intra_window_position = nn.Parameter(torch.zeros(config.num_key_value_heads, window, head_dim))
        self.fc1 = nn.Linear(window * head_dim, window * head_dim)
        self.fc2 = nn.Linear(window * head_dim, head_dim)

    def forward(self, key: torch.Tensor, lengths: torch.Tensor, pattern: BlossomPattern) -> torch.Tensor:
        windows = ltis_window_keys(key, lengths, pattern)  # [B, G, M, l, D]
        windows = windows + self.intra_window_position[None, :, None].to(windows.dtype)
        flat = windows.flatten(-2)
        return self.fc2(F.relu(self.fc1(flat)))  # [B, G, M, D]


class BlossomRecAttention(nn.Module):
    """Q/K/V projections, RoPE, the backend (LTIS + STIS + gate, or dense causal), one output projection."""

    def __init__(self, config: BlossomRecConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_key_value_groups
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=True)
        if config.attention_type == "blossom":
            self.gate_proj = nn.Linear(d, 2 * self.num_heads, bias=True)
            self.gate_proj._is_blossom_gate = True
            self.compressor = BlossomRecBlockCompressor(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor,
        lengths: torch.Tensor,
        pattern: BlossomPattern,
        query_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, L, d]`` in, ``[B, Q, d]`` out: every position, or the queries at ``query_positions [B, Q]``
        (keys, values and compressed keys always cover all ``L`` positions)."""
        batch, seq_len, _ = hidden_states.shape
        cos, sin = rotary
        key = self.k_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        key = apply_rotary(key, cos, sin)
        if query_positions is None:
            query_states, q_cos, q_sin = hidden_states, cos, sin
        else:
            query_states = _take_positions(hidden_states, query_positions)
            q_cos, q_sin = cos[query_positions][:, None], sin[query_positions][:, None]  # [B, 1, Q, D]
        num_queries = query_states.shape[1]
        query = self.q_proj(query_states).view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        query = apply_rotary(query, q_cos, q_sin)

        extra = {"lengths": lengths, "pattern": pattern, "compressed_key": None, "gate": None}
        if query_positions is not None:
            extra["query_positions"] = query_positions
        if self.config.attention_type == "blossom":
            extra["compressed_key"] = self.compressor(key, lengths, pattern)
            gate = torch.sigmoid(self.gate_proj(query_states).float())  # [B, Q, 2H]
            extra["gate"] = gate.view(batch, num_queries, self.num_heads, 2).transpose(1, 2)

        attention_interface = get_attention_backend(self.config._attn_implementation).function
        attn_output, _ = attention_interface(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **extra
        )
        attn_output = attn_output.reshape(batch, num_queries, -1).to(hidden_states.dtype)
        return self.o_proj(attn_output)


def _take_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [B, L, d]`` at ``positions [B, Q]`` -> ``[B, Q, d]``."""
    return torch.gather(x, 1, positions[..., None].expand(-1, -1, x.shape[-1]))


_FULL_LAYER_NOTED: set[str] = set()


class BlossomRecFeedForward(nn.Module):
    def __init__(self, config: BlossomRecConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(hidden_states)))


class BlossomRecLayer(nn.Module):
    """Post-LN block: ``h = LN(h + Drop(Attn(h)))``, ``h = LN(h + Drop(FFN(h)))``."""

    def __init__(self, config: BlossomRecConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BlossomRecAttention(config, layer_idx)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BlossomRecFeedForward(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor,
        lengths: torch.Tensor,
        pattern: BlossomPattern,
        query_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, L, d]``, or ``[B, Q, d]`` for the queries at ``query_positions`` (serving path)."""
        if query_positions is None:
            attn = self.self_attn(hidden_states, rotary, attention_mask, lengths, pattern)
            residual = hidden_states
        else:
            residual = _take_positions(hidden_states, query_positions)
            name = self.self_attn.config._attn_implementation
            if get_attention_backend(name).query_subset:
                attn = self.self_attn(hidden_states, rotary, attention_mask, lengths, pattern, query_positions)
            else:  # the backend computes every position: keep the queried ones (documented, logged once)
                if name not in _FULL_LAYER_NOTED and not torch.compiler.is_compiling():
                    _FULL_LAYER_NOTED.add(name)
                    logger.warning(
                        "attention backend %r has no query_subset support: the serving path runs its last layer's "
                        "attention at every position (FFN and scores still only at the last one)", name)
                attn = _take_positions(self.self_attn(hidden_states, rotary, attention_mask, lengths, pattern),
                                       query_positions)
        hidden_states = self.attn_norm(residual + self.dropout(attn))
        return self.mlp_norm(hidden_states + self.dropout(self.mlp(hidden_states)))


# ------------------------------------------------------------------------------------------------
# input handling
# ------------------------------------------------------------------------------------------------
@dataclass
class CompactedBatch:
    """Real items moved to the front of each row and cut to the window.

    ``input_ids [B, Lc]``, ``lengths [B]``, ``source [B, Lc]`` (input position of each slot, -1 at padding)
    and ``valid [B, Lc]``.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    source: torch.Tensor
    valid: torch.Tensor


def validate_input_ids(input_ids: torch.Tensor, vocab_size: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Check shapes, dtype, id range and padding; return ``real [B, L]`` (bool). Raises ValueError/TypeError."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of item indices, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer item indices, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)})")
    input_ids = input_ids.long()  # uint8/int16 ids would wrap around in the comparison with vocab_size
    bad = (input_ids < 0) | (input_ids >= vocab_size)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"item index {int(input_ids[row, col])} at row {row}, position {col} is outside the vocabulary "
            f"[0, {vocab_size}) (0 = padding)"
        )
    real = input_ids != 0
    empty = ~real.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"empty history (only padding id 0) at row(s) {rows[:10]}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask has shape {shape} but input_ids has shape {tuple(input_ids.shape)}")
        mask = attention_mask.to(input_ids.device) != 0
        if not torch.equal(mask, real):
            row = int((mask != real).any(dim=1).nonzero()[0])
            raise ValueError(
                f"attention_mask disagrees with the padding id 0 of input_ids at row {row}: a position is real "
                "exactly when its item id is not 0"
            )
    return real


def compact_histories(input_ids: torch.Tensor, real: torch.Tensor, window: int, static: bool = False) -> CompactedBatch:
    """Move real items to the front (stable) and keep the most recent ``window`` of each row.

    The compacted width is the longest kept history (eager), or ``min(L, window)`` with ``static=True`` (no
    data-dependent shape: used under ``torch.compile``/``torch.export``; the extra slots are padding).
    """
    batch, in_len = input_ids.shape
    device = input_ids.device
    total = real.sum(dim=1)
    # real items first, each group in input order: the sort keys are unique, so no stable sort is needed
    # (aten.sort.stable has no ONNX form)
    key = torch.where(real, 0, in_len) + torch.arange(in_len, device=device)
    order = torch.argsort(key, dim=1)
    drop = (total - window).clamp_min(0)
    lengths = total - drop
    out_len = min(in_len, window) if static else int(lengths.max())
    slots = torch.arange(out_len, device=device)[None, :]
    valid = slots < lengths[:, None]
    source = torch.gather(order, 1, (slots + drop[:, None]).clamp_max(in_len - 1))
    ids = torch.where(valid, torch.gather(input_ids, 1, source), 0)
    return CompactedBatch(ids, lengths, torch.where(valid, source, -1), valid)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
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


class BlossomRecModel(BlossomRecPreTrainedModel):
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
        if compiling:  # no data-dependent checks inside a graph (validate_inputs() does them)
            real = input_ids != 0
        else:
            real = validate_input_ids(input_ids, self.config.vocab_size, attention_mask)
        input_ids = input_ids.long()
        compact = compact_histories(input_ids, real, self.config.max_history_length, static=compiling)
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
        bad = ((labels < 0) & (labels != _IGNORE_INDEX)) | (labels >= vocab_size)
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"label {int(labels[where])} at {list(where)} is not an item index: labels must be in "
                f"[1, {vocab_size}) or 0 / {_IGNORE_INDEX} for 'no target'"
            )
        if labels.dim() == 1 and labels.shape[0] == input_shape[0]:
            targets, scores = labels, logits
        elif tuple(labels.shape) == tuple(input_shape):
            gathered = torch.gather(labels, 1, compact.source.clamp_min(0))
            keep = compact.valid & (gathered > 0)
            targets, scores = gathered[keep], self.score_items(hidden[keep])
        else:
            raise ValueError(
                f"labels must have shape [batch]={input_shape[0]} or [batch, length]={tuple(input_shape)}, "
                f"got {tuple(labels.shape)}"
            )
        targets = torch.where(targets > 0, targets, _IGNORE_INDEX)
        if not bool((targets != _IGNORE_INDEX).any()):
            raise ValueError(
                "labels hold no target (every entry is 0 or -100, or sits at a padded/dropped position): the loss "
                "would be NaN; drop this batch or give at least one next-item label"
            )
        return F.cross_entropy(scores.float(), targets, ignore_index=_IGNORE_INDEX)

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence,
        k: int = 10,
        exclude_seen: bool = False,
        unknown: str = "error",
        batch_size: int = 256,
    ) -> list[Recommendations]:
        """Top-``k`` next items for each history of raw item ids (oldest first).

        Args:
            histories: one history (a list, or a 1-D numpy array / torch tensor, of raw ids) or a list of
                histories (or a 2-D array: one history per row). Ids are ints or strings; floats are refused.
            k: how many items to return per history.
            exclude_seen: drop every item of the history (all of it, not only the window the model reads) from
                the ranking; fewer than ``k`` items come back when fewer remain.
            unknown: "error" (default) raises on a raw id the vocabulary does not know; "skip" drops it.
            batch_size: histories scored per forward pass (a positive integer).

        Without ``model.vocabulary`` the ids are model indices (1..vocab_size-1). Runs the serving path (the last
        layer computes the last position only). Raises ValueError if the model produces NaN/inf scores.
        """
        batch = as_histories(histories)
        if not batch:
            raise ValueError("recommend() needs at least one history")
        num_items = self.config.num_items
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_items:
            raise ValueError(f"k must be an integer in [1, {num_items}], got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        vocab = self.vocabulary
        encoded = []
        for row, history in enumerate(batch):
            if vocab is not None:
                try:
                    indices = vocab.encode(history, unknown=unknown)
                except KeyError as err:
                    raise type(err)(f"history {row}: {err}") from None
            else:
                indices = [int(i) for i in history]
                outside = [i for i in indices if not 1 <= i <= num_items]
                if outside:
                    raise ValueError(f"history {row}: item index {outside[0]} is outside 1..{num_items}")
            if not indices:
                raise ValueError(f"history {row} is empty" + (" after skipping unknown ids" if history else ""))
            encoded.append(indices)

        window = self.config.max_history_length
        was_training = self.training
        self.eval()
        results: list[Recommendations] = []
        try:
            device = self.item_embeddings.weight.device
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start:start + batch_size]
                ids = _padded([h[-window:] for h in chunk]).to(device)
                scores = self(input_ids=ids, output_last_hidden_state=False).logits.float()
                finite = torch.isfinite(scores[:, 1:]).all(dim=1)
                if not bool(finite.all()):
                    row = start + int((~finite).nonzero()[0])
                    raise ValueError(
                        f"the model produced NaN/inf scores for history {row}: its weights are probably not finite "
                        "(check the checkpoint, e.g. a diverged training run); no ranking is returned"
                    )
                if exclude_seen:  # the whole history, not only the window the model read
                    scores.scatter_(1, _padded(chunk).to(device), float("-inf"))
                top = scores.topk(k, dim=1)
                for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    kept = [(i, v) for i, v in zip(indices, values, strict=True) if v != float("-inf")]
                    items = vocab.decode([i for i, _ in kept]) if vocab is not None else [i for i, _ in kept]
                    results.append(Recommendations(items=items, scores=[v for _, v in kept]))
        finally:
            self.train(was_training)
        return results

    # ----------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` made safe, plus what a Hub repo of this model needs.

        The folder gets the weights and config, the item vocabulary, the flat code files of this model folder
        with an ``auto_map`` (``register_for_auto_class``, so ``AutoModel.from_pretrained(folder,
        trust_remote_code=True)`` works without blossom_hf) and, if it has none, a short model card. Everything
        is written into a sibling staging folder and swapped in only when complete (saving_blossomrec.py): a
        failed or killed save leaves an existing folder as it was.

        Raises:
            ValueError: a weight tensor holds NaN or inf (nothing is written).
            PermissionError: the folder, or a file the save would replace, is read-only (nothing is changed).
        """
        from .saving_blossomrec import (
            basic_model_card,
            check_finite,
            check_writable,
            copy_model_code,
            real_target,
            recover_folder,
            replace_folder,
            staging_folder,
        )

        if "remote_code" in kwargs:
            raise TypeError("save_pretrained(remote_code=...) was removed: every save writes the code files and "
                            "auto_map (register_for_auto_class); drop the argument")  # fmt: skip
        is_main = args[0] if args else kwargs.get("is_main_process", True)
        if not is_main:
            return super().save_pretrained(save_directory, *args, **kwargs)
        push = kwargs.pop("push_to_hub", False)
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
        state = kwargs.get("state_dict")
        check_finite(state if state is not None else self.state_dict())
        target = real_target(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_folder(target)
        check_writable(target, ["config.json", "model.safetensors", VOCABULARY_FILE])
        staging = staging_folder(target)
        try:
            result = super().save_pretrained(staging, *args, **kwargs)
            if self.vocabulary is not None:
                self.vocabulary.save(staging)
            copy_model_code(staging)  # every module, also those no relative import names
            if not (target / "README.md").is_file():
                (staging / "README.md").write_text(basic_model_card(self.config, self.vocabulary), encoding="utf-8")
            replace_folder(staging, target, merge=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if push:
            self.push_to_hub(hub_kwargs.pop("repo_id", target.resolve().name), token=kwargs.get("token"), **hub_kwargs)
        return result

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, max_shard_size: int | str | None = "50GB",
                    tags: list[str] | None = None, **kwargs):
        """Upload what :meth:`save_pretrained` writes (weights, config with ``auto_map``, flat code, item
        vocabulary) to the Hub; the repo's own model card is kept, a new repo gets this model's short card
        (not transformers' template). A full card with metrics: ``blossom-hf export`` then ``blossom-hf push``."""
        import tempfile

        from huggingface_hub import HfApi, ModelCard

        from .saving_blossomrec import basic_model_card

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            card_path = folder / "README.md"
            try:
                has_card = api.file_exists(repo_id, "README.md", revision=revision)
            except Exception:  # a revision that does not exist yet
                has_card = False
            if has_card:
                card_path.unlink()
            else:
                card = ModelCard(basic_model_card(self.config, self.vocabulary, repo_id))
                card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *(tags or [])]))
                card.save(card_path)
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision, create_pr=create_pr,
                commit_message=commit_message or "Upload BlossomRecModel", commit_description=commit_description,
            )  # fmt: skip

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """``PreTrainedModel.from_pretrained`` (safetensors only) plus the item vocabulary when present.

        Args:
            strict: a checkpoint whose weights do not match the model exactly (a missing tensor would be left at
                its random init; an unexpected one, e.g. blossom weights under ``attention_type: full``, means the
                config and the weights disagree) raises ValueError listing the keys. ``strict=False`` loads anyway
                and logs a warning.

        Raises:
            FileNotFoundError: a local path that does not exist (and cannot be a Hub repo id).
            OSError: ``model.safetensors`` is damaged (truncated download, corrupted header); the message names
                the file and how to get a good copy.
            ValueError: the config is invalid or from a newer format version, the weights do not match the config
                (``strict``), or ``item_vocabulary.json`` is unreadable or does not fit the weights.
        """
        _check_local_path(pretrained_model_name_or_path)
        kwargs.setdefault("use_safetensors", True)
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            local = Path(str(pretrained_model_name_or_path))
            where = (local / (kwargs.get("subfolder") or "") / "model.safetensors") if local.is_dir() else (
                f"model.safetensors of {pretrained_model_name_or_path} (revision {kwargs.get('revision') or 'main'})"
            )
            raise OSError(
                f"Cannot read the weights in {where}: the file is damaged or incomplete (safetensors says: {err}). "
                "If it was downloaded, download it again (from_pretrained(..., force_download=True), or delete it "
                "from the Hugging Face cache); if it was exported locally, export the checkpoint again."
            ) from err
        _check_loading_info(pretrained_model_name_or_path, model, info, strict,
                            ignore_mismatched=bool(kwargs.get("ignore_mismatched_sizes")))
        vocabulary = _load_vocabulary(pretrained_model_name_or_path, kwargs)
        if vocabulary is not None and len(vocabulary) + 1 != model.config.vocab_size:
            raise ValueError(
                f"{pretrained_model_name_or_path}: item_vocabulary.json has {len(vocabulary)} items but the model's "
                f"vocab_size is {model.config.vocab_size} (items + 1 for padding): the files do not belong together"
            )
        model.vocabulary = vocabulary
        return (model, info) if wants_info else model


def _padded(rows: list[list[int]]) -> torch.Tensor:
    """Right-padded ``[len(rows), longest]`` long tensor of index lists (0 = padding)."""
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids


def _check_local_path(path_or_repo) -> None:
    """A path that cannot be a Hub repo id ("name" or "org/name") and does not exist: say so in one line."""
    text = os.fspath(path_or_repo) if isinstance(path_or_repo, os.PathLike) else str(path_or_repo)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{text} is a file; from_pretrained needs the checkpoint folder that holds it")
        return
    parts = text.replace("\\", "/").split("/")
    looks_local = (isinstance(path_or_repo, os.PathLike) or text.startswith((".", "/", "~")) or len(parts) > 2
                   or "\\" in text or any(not p for p in parts))
    if looks_local:
        raise FileNotFoundError(
            f"no checkpoint folder at {text}: check the path (a Hugging Face Hub id has the form 'org/name')"
        )


def _check_loading_info(source, model: BlossomRecModel, info: dict, strict: bool, ignore_mismatched: bool) -> None:
    """Missing, unexpected or mismatched weights: ValueError (strict) or a warning (the load report)."""
    problems = []
    kinds = ("missing_keys", "unexpected_keys") + (() if ignore_mismatched else ("mismatched_keys",))
    for kind in kinds:
        keys = sorted(str(k) for k in (info.get(kind) or ()))
        if keys:
            problems.append(f"{kind.replace('_', ' ')}: {keys[:6]}{' ...' if len(keys) > 6 else ''}")
    if not problems:
        return
    message = (f"{source}: the weights do not match the config (attention_type={model.config.attention_type!r}); "
               + "; ".join(problems))
    if strict:
        raise ValueError(message + ". Re-export the checkpoint, fix config.json, or pass strict=False to load anyway "
                         "(missing weights keep their random init)")
    logger.warning("%s (strict=False: loaded anyway, missing weights keep their random init)", message)


def _load_vocabulary(path_or_repo, kwargs: dict) -> ItemVocabulary | None:
    """The checkpoint's ``item_vocabulary.json`` (local folder or Hub repo), or ``None`` if it has none."""
    local = Path(str(path_or_repo))
    subfolder = kwargs.get("subfolder") or ""
    if local.is_dir():
        candidate = local / subfolder / VOCABULARY_FILE
        return ItemVocabulary.load(candidate) if candidate.is_file() else None
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "force_download", "proxies", "token", "revision",
                                         "local_files_only", "subfolder") if k in kwargs}
    resolved = cached_file(str(path_or_repo), VOCABULARY_FILE, _raise_exceptions_for_missing_entries=False,
                           **hub_kwargs)
    return ItemVocabulary.load(resolved) if resolved else None


# plain save_pretrained / push_to_hub write the flat code files and auto_map (transformers' own mechanism)
BlossomRecConfig.register_for_auto_class()
BlossomRecModel.register_for_auto_class("AutoModel")

__all__ = ["BlossomRecModel", "BlossomRecPreTrainedModel", "BlossomRecOutput", "Recommendations"]
