"""The building blocks of a BlossomRec layer (docs/MODEL.md, "Backbone" and "Attention layer"): RoPE, the LTIS
block compressor, the attention module (Q/K/V projections, the (alpha, beta) gate, the backend call), the FFN and
the post-LN layer.

The attention module looks its backend up by name in ``registry.py``; importing this file registers the built-in
backends ("eager", "sdpa", "triton"), each from its own ``attention_<name>.py``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from . import cpu_kernel

# importing the backend files registers "eager", "sdpa" and "triton" (each file holds its own registration)
from .attention_eager import eager_attention_forward  # noqa: F401
from .attention_patterns import BlossomPattern, every_window_selected, ltis_window_keys
from .attention_sdpa import sdpa_attention_forward  # noqa: F401
from .attention_triton import triton_attention_forward  # noqa: F401
from .configuration_blossomrec import BlossomRecConfig
from .registry import get_attention_backend

logger = logging.getLogger(__name__)

__all__ = ["BlossomRecRotaryEmbedding", "BlossomRecBlockCompressor", "BlossomRecAttention", "BlossomRecFeedForward",
           "BlossomRecLayer", "apply_rotary", "apply_rotary_pair", "apply_rotary_reference", "blossom_gate",
           "rotate_half", "take_positions"]


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


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x [B, heads, L, D]`` in PyTorch ops (computed in fp32, returned in x's dtype):
    ``x * cos + rotate_half(x) * sin``, evaluated per half (``x1 c1 - x2 s1``, ``x2 c2 + x1 s2``: the same products
    and sums, so the same bits, without materialising ``rotate_half(x)`` and a full-width product: 20.4 against
    38.5 ms at 64 x 1024 positions on a 2-core CPU, ``scripts/dev/rope_cpu.py``)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    return torch.cat([x1 * c1 - x2 * s1, x2 * c2 + x1 * s2], dim=-1).to(x.dtype)


#: CUDA tensors go through the fused RoPE kernel (``triton_rope.py``: one read, fp32 math in registers, one write,
#: and the same for the gradient) instead of the ~7 element-wise PyTorch kernels of :func:`apply_rotary_reference`
#: forward and ~10 backward. Same function (fp32 math, result rounded once to x's dtype); set to False to compare.
FUSED_ROPE = True
#: CUDA tensors build the LTIS compressor's windows (masked keys + P, flattened) in one Triton kernel each way
#: (``triton_layer_ops.CompressorWindows``) instead of the masked fill, pad, unfold and add of
#: :func:`attention_patterns.ltis_window_keys` (four kernels forward, four or five backward). Same values.
FUSED_COMPRESSOR_WINDOWS = True
#: CUDA tensors run the whole compressor (windows + P, ``fc1``, ReLU, ``fc2``) as one Triton kernel where no gradient
#: is recorded (the serving/evaluation forward; ``triton_compressor.launch_compressor``) instead of the windows kernel
#: and the two linear layers (8 launches under autocast, by count): 0.36-0.53 ms off a bf16-autocast serving forward
#: on an H200 with the committed tiles (docs/BENCHMARKS.md, "Kernel round v11", call 5). Used where the key is in the
#: compute dtype (autocast's, else the weights'; the model's always is) and there is at least one window; other cases
#: take the PyTorch form. The same roundings up to the fp32 summation order of the products. Needs
#: :data:`FUSED_COMPRESSOR_WINDOWS`.
FUSED_COMPRESSOR_MLP = True
#: Also where a gradient is recorded (``triton_compressor.FusedCompressor``: one kernel + two GEMMs + fp32 sums
#: backward, 9 launches against 14, by count). Off by default: alone it takes 0.3-0.45 ms off a compressor
#: fwd+bwd, but in the benchmark's layer and model steps it measured within noise of the PyTorch form, and slower
#: in some rounds (its backward kernel's GPU time exceeds cuBLAS's where the step is not host-bound; "Kernel round
#: v11").
FUSED_COMPRESSOR_MLP_TRAINING = False
#: Also where the compute dtype is fp32. Off by default: the kernel's exact-fp32 products (``input_precision="ieee"``,
#: no tensor cores) made a fp32 serving forward 3.8x slower than cuBLAS's fp32 GEMMs (11.61 against 3.06 ms at
#: L = 200 on an H200; docs/BENCHMARKS.md, "Release check 9"), so fp32 takes the PyTorch form.
FUSED_COMPRESSOR_MLP_FP32 = False
#: CUDA tensors compute the gate ``sigmoid(logits.float())`` in one Triton kernel each way
#: (``triton_layer_ops.GateSigmoid``; the backward writes ``d logits`` in their layout and dtype directly).
FUSED_GATE = True
#: CUDA tensors project the query and the gate logits in one matrix product (``x [Wq; Wg]^T``, the two weights
#: concatenated at each call; ``triton_layer_ops.QueryGate``: the gate's bias is added inside the gate kernel)
#: instead of ``q_proj`` and ``gate_proj`` apart: one GEMM fewer forward and two fewer backward, and under autocast
#: one cast of the input and of the weights instead of two. The same products; the gate logits are no longer rounded
#: to the input dtype before the bias is added (one rounding fewer). Needs :data:`FUSED_GATE`.
FUSED_QUERY_GATE = True
_LAYER_OPS: list = []  # [the triton_rope / triton_layer_ops functions] once imported, or [None] where triton is missing


def _fused_layer_ops():
    """The fused kernels of the layer (RoPE, compressor windows, gate), or None where triton cannot run them."""
    if not _LAYER_OPS:
        from .triton_common import interpret_requested, triton

        if triton is None or interpret_requested():
            _LAYER_OPS.append(None)
            logger.info("RoPE, the compressor windows and the gate on CUDA run as PyTorch ops (%s), not the fused "
                        "kernels", "triton is not installed" if triton is None else "TRITON_INTERPRET is set")
        else:
            from .triton_compressor import FusedCompressor, launch_compressor
            from .triton_layer_ops import CompressorWindows, GateSigmoid, QueryGate, launch_gate
            from .triton_rope import FusedRotary, FusedRotaryPair, launch_rope

            _LAYER_OPS.append(SimpleNamespace(FusedRotary=FusedRotary, FusedRotaryPair=FusedRotaryPair,
                                         launch_rope=launch_rope, CompressorWindows=CompressorWindows,
                                         GateSigmoid=GateSigmoid, QueryGate=QueryGate, launch_gate=launch_gate,
                                         FusedCompressor=FusedCompressor, launch_compressor=launch_compressor))
    return _LAYER_OPS[0]


def _eager_mode() -> bool:
    """Not under ``torch.compile``/export/tracing (which fuse the PyTorch ops themselves)."""
    return not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def _fusable(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    return (FUSED_ROPE and x.is_cuda and x.shape[-1] % 2 == 0 and cos.dtype == torch.float32
            and sin.dtype == cos.dtype and cos.dim() in (2, 4) and cos.stride() == sin.stride() and _eager_mode())


def blossom_gate(logits: torch.Tensor, heads: int) -> torch.Tensor:
    """The (alpha, beta) gate ``sigmoid(logits.float())`` of ``logits [B, Q, 2H]`` as ``[B, H, Q, 2]`` fp32: on
    CUDA one fused kernel each way (:data:`FUSED_GATE`), else the PyTorch ops."""
    batch, num_queries, _ = logits.shape
    if FUSED_GATE and logits.is_cuda and _eager_mode() and (ops := _fused_layer_ops()) is not None:
        if torch.is_grad_enabled() and logits.requires_grad:
            return ops.GateSigmoid.apply(logits, heads)
        return ops.launch_gate(logits, heads)
    gate = torch.sigmoid(logits.float())
    return gate.view(batch, num_queries, heads, 2).transpose(1, 2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x [B, heads, L, D]`` with ``cos, sin [L, D]`` or ``[B, 1, L, D]`` (fp32 tables): computed in fp32,
    returned in x's dtype. On CUDA one fused Triton kernel each way (:data:`FUSED_ROPE`); CPU inference in fp32 one
    compiled pass (``cpu_kernel.rotary``, the same bits; where the CPU kernel is available); otherwise (training on the
    CPU, ``torch.compile``/export/tracing, which fuse the ops themselves, odd head dims) the PyTorch ops."""
    if _fusable(x, cos, sin) and (ops := _fused_layer_ops()) is not None:
        if torch.is_grad_enabled() and x.requires_grad:
            return ops.FusedRotary.apply(x, cos, sin)
        return ops.launch_rope(x, cos, sin)  # no autograd node needed (inference)
    if x.device.type == "cpu" and (out := cpu_kernel.rotary(x, cos, sin)) is not None:
        return out
    return apply_rotary_reference(x, cos, sin)


def apply_rotary_pair(query: torch.Tensor, key: torch.Tensor, q_cos: torch.Tensor, q_sin: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_rotary` of the query (tables ``q_cos, q_sin``) and the key (``cos, sin``): on CUDA one launch
    for both, each way."""
    if (_fusable(query, q_cos, q_sin) and _fusable(key, cos, sin) and query.shape[-1] == key.shape[-1]
            and (ops := _fused_layer_ops()) is not None):
        if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
            return ops.FusedRotaryPair.apply(query, q_cos, q_sin, key, cos, sin)
        return ops.launch_rope(query, q_cos, q_sin, x2=key, cos2=cos, sin2=sin)
    return apply_rotary(query, q_cos, q_sin), apply_rotary(key, cos, sin)


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
        """``key [B, G, L, D]`` -> ``k~ [B, G, M, D]``: the definition as written (docs/MODEL.md, LTIS step 2),
        materialised windows then the MLP (on CUDA the windows + P come from one Triton kernel each way,
        :data:`FUSED_COMPRESSOR_WINDOWS`; in CPU inference from one compiled pass, ``cpu_kernel.compressor_windows``,
        where the CPU kernel is available; the same values). (A per-block form without the windows, ``fc1`` as
        ``l / b`` column slices and a shifted sum, was measured 0.4-0.65 ms slower per layer step on an H200: its
        strided slice adds and their gradients cost more than the window copy; docs/triton_notes.md, "v4".)"""
        position = self.intra_window_position
        if (fused := self._fused(key, pattern)) is not None:
            return fused(key, lengths, position)
        if (FUSED_COMPRESSOR_WINDOWS and key.is_cuda and position.device == key.device and _eager_mode()
                and (ops := _fused_layer_ops()) is not None):  # one kernel each way, same values
            flat = ops.CompressorWindows.apply(key, lengths, position, pattern.block_size, pattern.compression_window)
        elif key.device.type != "cpu" or (flat := cpu_kernel.compressor_windows(
                key, lengths, position, pattern.block_size, pattern.compression_window)) is None:
            windows = ltis_window_keys(key, lengths, pattern)  # [B, G, M, l, D]
            windows = windows + position[None, :, None].to(windows.dtype)
            flat = windows.flatten(-2)
        hidden = self.fc1(flat)
        # in place where no gradient is recorded (inference: one pass less over the M x l*D activations)
        hidden = F.relu(hidden) if torch.is_grad_enabled() else hidden.relu_()
        return self.fc2(hidden)  # [B, G, M, D]

    def _fused(self, key: torch.Tensor, pattern: BlossomPattern):
        """The whole compressor in Triton (:data:`FUSED_COMPRESSOR_MLP`, :data:`FUSED_COMPRESSOR_MLP_TRAINING`) as
        ``fn(key, lengths, position)``, or None where the PyTorch form runs instead (CPU, no triton,
        compiling/tracing, no window, the key in another dtype than the compute dtype, fp32 or a recorded gradient
        unless their flag is on)."""
        if not (FUSED_COMPRESSOR_MLP and FUSED_COMPRESSOR_WINDOWS and key.is_cuda and _eager_mode()
                and key.shape[2] >= pattern.block_size and self.fc1.weight.device == key.device):
            return None
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else self.fc1.weight.dtype
        if key.dtype != dtype or (dtype == torch.float32 and not FUSED_COMPRESSOR_MLP_FP32):
            return None
        if (ops := _fused_layer_ops()) is None:
            return None
        fc1, fc2, block, window = self.fc1, self.fc2, pattern.block_size, pattern.compression_window
        if not torch.is_autocast_enabled("cuda") and any(
                t.dtype != dtype for t in (fc1.bias, fc2.weight, fc2.bias, self.intra_window_position)):
            return None  # mixed dtypes without autocast: the PyTorch form (and its own error, where there is one)
        if torch.is_grad_enabled() and (key.requires_grad or any(p.requires_grad for p in self.parameters())):
            if not FUSED_COMPRESSOR_MLP_TRAINING:
                return None
            return lambda k, lens, pos: ops.FusedCompressor.apply(k, lens, pos, fc1.weight, fc1.bias, fc2.weight,
                                                                  fc2.bias, block, window, dtype)
        return lambda k, lens, pos: ops.launch_compressor(k, lens.to(k.device), pos, fc1.weight, fc1.bias,
                                                          fc2.weight, fc2.bias, block, window, dtype)[0]


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
        if query_positions is None:
            query_states, q_cos, q_sin = hidden_states, cos, sin
        else:
            query_states = take_positions(hidden_states, query_positions)
            q_cos, q_sin = cos[query_positions][:, None], sin[query_positions][:, None]  # [B, 1, Q, D]
        num_queries = query_states.shape[1]
        query, gate = self._query_and_gate(query_states)
        query = query.view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        query, key = apply_rotary_pair(query, key, q_cos, q_sin, cos, sin)

        extra = {"lengths": lengths, "pattern": pattern, "compressed_key": None, "gate": None}
        if query_positions is not None:
            extra["query_positions"] = query_positions
        if self.config.attention_type == "blossom":
            if torch.is_grad_enabled() or not every_window_selected(seq_len, pattern):
                extra["compressed_key"] = self.compressor(key, lengths, pattern)
            else:  # inference where the top-n keeps every eligible window whatever the scores: nothing reads them
                extra["compressed_key"] = key.new_zeros(batch, self.num_key_value_heads, seq_len // pattern.block_size,
                                                        self.head_dim)
            extra["gate"] = gate  # [B, H, Q, 2] fp32

        attention_interface = get_attention_backend(self.config._attn_implementation).function
        attn_output, _ = attention_interface(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **extra
        )
        attn_output = attn_output.reshape(batch, num_queries, -1).to(hidden_states.dtype)
        return self.o_proj(attn_output)


    def _query_and_gate(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(q_proj(states) [B, Q, H*D], gate [B, H, Q, 2] fp32 or None for attention_type="full")``: on CUDA one
        product for both (:data:`FUSED_QUERY_GATE`), else the two linear layers and :func:`blossom_gate`."""
        if self.config.attention_type != "blossom":
            return self.q_proj(states), None
        if (FUSED_QUERY_GATE and FUSED_GATE and states.is_cuda and _eager_mode()
                and (ops := _fused_layer_ops()) is not None):
            weight = torch.cat([self.q_proj.weight, self.gate_proj.weight])
            both = F.linear(states, weight)  # [B, Q, H*D + 2H]
            if torch.is_grad_enabled() and (both.requires_grad or self.gate_proj.bias.requires_grad):
                return ops.QueryGate.apply(both, self.gate_proj.bias, self.num_heads)
            width = both.shape[-1] - 2 * self.num_heads
            return both[..., :width], ops.launch_gate(both[..., width:], self.num_heads, self.gate_proj.bias)
        return self.q_proj(states), blossom_gate(self.gate_proj(states), self.num_heads)


def take_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
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
            residual = take_positions(hidden_states, query_positions)
            name = self.self_attn.config._attn_implementation
            if get_attention_backend(name).query_subset:
                attn = self.self_attn(hidden_states, rotary, attention_mask, lengths, pattern, query_positions)
            else:  # the backend computes every position: keep the queried ones (documented, logged once)
                if name not in _FULL_LAYER_NOTED and not torch.compiler.is_compiling():
                    _FULL_LAYER_NOTED.add(name)
                    logger.warning(
                        "attention backend %r has no query_subset support: the serving path runs its last layer's "
                        "attention at every position (FFN and scores still only at the last one)", name)
                attn = take_positions(self.self_attn(hidden_states, rotary, attention_mask, lengths, pattern),
                                       query_positions)
        hidden_states = self.attn_norm(residual + self.dropout(attn))
        return self.mlp_norm(hidden_states + self.dropout(self.mlp(hidden_states)))
