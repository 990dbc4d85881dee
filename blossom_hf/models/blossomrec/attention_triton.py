"""Fused Triton backend ``attn_implementation="triton"``: BlossomRec attention (docs MODEL.md) in a few
kernels, with its own backward. This file holds the input checks, the autograd function, the module adapter
and the registration; the launches and the kernels are in flat files beside it:

* ``triton_launch.py``  tile geometry and strategy (:class:`TritonGeometry`, :func:`plan`), kernel launches
* ``triton_common.py``  interpreter switch, integer helpers, shared ``@triton.jit`` helpers (tile masks)
* ``triton_select.py``  LTIS top-n selection and its straight-through backward
* ``triton_fwd.py``     fine attention forward, two strategies (dense tiles / gathered key sets)
* ``triton_bwd_tile.py``, ``triton_bwd_gather.py``  the backward of each strategy
* ``triton_rope.py``    the layer's fused RoPE (used by ``layers_blossomrec.apply_rotary`` on CUDA, every backend)

Strategy (:func:`plan`): histories up to :data:`TILE_MAX_SEQ_LEN` use FlashAttention-style dense key tiles
with the LTIS/STIS masks computed in registers and empty tiles skipped (short histories pay no gather
machinery); longer ones use per-query gathered key sets (work linear in ``L``). Both compute the same
function; ``strategy="tile"`` / ``"gather"`` forces one. The dense tiles are 16 queries x the group's heads up to
L = 512; from ``SMALL_BWD_MIN_SEQ_LEN`` (backward) and ``SMALL_FWD_MIN_SEQ_LEN`` (forward) they are 4 queries x 4 heads
against one-block key tiles at 1 warp (head dim 16, bf16/fp16), so fewer queries share each tile's union of selected
blocks and fewer masked-out scores are visited.

Memory is linear in ``L``: no ``L x L`` or ``L x L/b`` tensor exists in the forward or the backward. What is
kept for the backward: the inputs, the two branch outputs ``o_L, o_S`` (input dtype), per-row logsumexps,
the selection ``[B, G, L, n]`` (int32) with its probabilities and the logsumexp of the selection scores.

Numerics: fp32 accumulation everywhere; bf16/fp16 inputs go through the tensor cores as bf16/fp16, fp32
inputs use exact fp32 products (``input_precision="ieee"``). The LTIS selection scores are always computed
in fp32 from the (upcast) inputs, so the selection matches :func:`attention_patterns.ltis_select` except
for true near-ties (scores within rounding of each other).

Serving path (registered with ``query_subset=True``): when the model asks for a few query positions only
(``query_positions [B, Q]``: the last layer of ``model(..., output_last_hidden_state=False)`` and
``recommend()``, one query per row), :func:`triton_serving_attention` runs the selection and the gathered
forward kernel for those queries only (one query x g heads per program). That path is forward-only: under
autograd the queried positions go through the differentiable gathered key sets of
:func:`attention_sdpa.sdpa_blossom_attention` (``positions=``, the same function; logged once at INFO).

Limits (each raises a clear error; apart from the documented autograd case of the serving path above, nothing
falls back to another implementation): CUDA tensors, or CPU tensors
under ``TRITON_INTERPRET=1``; head dim 16..128; query/key/value in fp16, bf16 or fp32 (one dtype);
``attention_type="full"`` is not implemented here (use "sdpa", FlashAttention, for the dense baseline).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Unpack

import torch
from torch.autograd.function import once_differentiable

from .attention_patterns import BlossomPattern
from .attention_sdpa import sdpa_blossom_attention
from .registry import BlossomAttentionKwargs, register_attention_backend
from .triton_common import interpret_requested
from .triton_launch import (
    STRATEGIES,
    TILE_MAX_SEQ_LEN,
    TritonGeometry,
    dense_layout,
    launch_backward,
    launch_forward,
    launch_select,
    plan,
)

__all__ = ["triton_blossom_attention", "triton_serving_attention", "triton_attention_forward",
           "triton_availability", "triton_ltis_select", "plan", "TritonGeometry", "TILE_MAX_SEQ_LEN"]

logger = logging.getLogger(__name__)

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 128


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


_KERNELS: list = []  # [interpreter mode, kernel modules] once imported


def _kernels():
    """The kernel modules, imported on first use (so ``import blossom_hf`` never imports triton).

    Triton fixes compiled-vs-interpreted when it is imported, so ``TRITON_INTERPRET`` must be set before the
    first call of this backend (or any other ``import triton``) in the process.
    """
    if _KERNELS and _KERNELS[0] == interpret_requested():
        return _KERNELS[1]  # looked up once: the imports below cost ~10 us a call
    if not _triton_installed():
        raise RuntimeError("the 'triton' attention backend needs the triton package (pip install triton)")
    # The ``from .module import name`` form (never ``from . import module``): transformers' remote-code loader
    # finds the files a Hub folder's code needs by that form, so the kernel files travel with the folder.
    from . import triton_common
    from .triton_bwd_gather import __name__ as bwd_gather_name
    from .triton_bwd_tile import __name__ as bwd_tile_name
    from .triton_fwd import __name__ as fwd_name
    from .triton_select import __name__ as select_name

    if triton_common.INTERPRET != interpret_requested():
        raise RuntimeError(
            "TRITON_INTERPRET changed after triton was imported in this process (it was "
            f"{'on' if triton_common.INTERPRET else 'off'}); set it before the first import of triton"
        )
    modules = tuple(sys.modules[name] for name in (select_name, fwd_name, bwd_tile_name, bwd_gather_name))
    _KERNELS[:] = [triton_common.INTERPRET, modules]
    return modules


def triton_availability() -> str | None:
    """None when the backend can run here, else a sentence saying why not."""
    if not _triton_installed():
        return "the triton package is not installed (pip install triton)."
    if torch.cuda.is_available() or interpret_requested():
        return None
    return ("its Triton kernels need a CUDA GPU, and none is visible (set TRITON_INTERPRET=1 to run them, slowly, "
            "on the CPU).")


# --------------------------------------------------------------------------------------------------
# validation and tile geometry
# --------------------------------------------------------------------------------------------------
def _check_inputs(query, key, value, compressed_key, gate, lengths, pattern, positions=None) -> None:
    if not isinstance(pattern, BlossomPattern):
        raise TypeError(f"pattern must be a BlossomPattern, got {type(pattern).__name__}")
    names = ("query", "key", "value", "compressed_key", "gate")
    for name, x in zip(names, (query, key, value, compressed_key, gate), strict=True):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"triton backend: {name} must be a 4-d tensor, got {shape}")
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    if positions is None and num_queries != seq_len:
        raise ValueError(f"triton backend: query covers {num_queries} positions but key {seq_len}; pass "
                         "query_positions for a subset of queries")
    if positions is not None and (not isinstance(positions, torch.Tensor) or positions.is_floating_point()
                                  or tuple(positions.shape) != (batch, num_queries)):
        raise ValueError(f"triton backend: query_positions must be an integer tensor [B, Q] = {(batch, num_queries)}")
    if tuple(key.shape) != (batch, groups, seq_len, head_dim) or tuple(value.shape) != tuple(key.shape):
        raise ValueError(f"triton backend: key/value must be [B, G, L, D] = [{batch}, G, {seq_len}, {head_dim}], "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    if groups < 1 or heads % groups != 0:
        raise ValueError(f"triton backend: query heads ({heads}) must be a multiple of kv heads ({groups})")
    num_windows = seq_len // pattern.block_size
    if tuple(compressed_key.shape) != (batch, groups, num_windows, head_dim):
        raise ValueError(f"triton backend: compressed_key must be [B, G, L // block_size, D] = "
                         f"{(batch, groups, num_windows, head_dim)}, got {tuple(compressed_key.shape)}")
    if tuple(gate.shape) != (batch, heads, num_queries, 2):
        raise ValueError(f"triton backend: gate must be [B, H, L, 2] = {(batch, heads, num_queries, 2)}, "
                         f"got {tuple(gate.shape)}")
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (batch,) or lengths.is_floating_point():
        raise ValueError(f"triton backend: lengths must be an integer tensor of shape [{batch}]")
    if query.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"triton backend supports float16, bfloat16 and float32 inputs, got {query.dtype}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"triton backend: query, key and value must share one dtype, got {query.dtype}, "
                        f"{key.dtype}, {value.dtype}")
    for name, x in (("compressed_key", compressed_key), ("gate", gate)):
        if x.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"triton backend: {name} must be float16, bfloat16 or float32, got {x.dtype}")
    if not _MIN_HEAD_DIM <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(f"triton backend supports head dims {_MIN_HEAD_DIM}..{_MAX_HEAD_DIM}, got {head_dim}")
    devices = {x.device for x in (query, key, value, compressed_key, gate)}
    if len(devices) != 1:
        raise ValueError(f"triton backend: all inputs must be on one device, got {sorted(map(str, devices))}")
    device = query.device
    if device.type == "cuda":
        if interpret_requested():
            raise RuntimeError("triton backend: TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it "
                               "for compiled kernels or move the tensors to the CPU for the interpreter")
    elif device.type == "cpu":
        if not interpret_requested():
            raise RuntimeError("triton backend: tensors are on the CPU; the Triton kernels need CUDA tensors "
                               "(or TRITON_INTERPRET=1 to run them, slowly, on the CPU)")
    else:
        raise RuntimeError(f"triton backend: unsupported device {device} (CUDA, or CPU under TRITON_INTERPRET=1)")
    if not _triton_installed():
        raise RuntimeError("triton backend: the triton package is not installed (pip install triton)")


def _forward(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks, strategy,
             geometry, save, positions=None):
    """Selection + fine attention; returns ``out`` and the tensors the backward needs (when ``save``)."""
    if not scaling > 0:  # the kernels take the row maximum of the raw scores q.k, which needs a positive factor
        raise ValueError(f"triton backend: scaling must be a positive number, got {scaling!r}")
    kernels = _kernels()
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    geo = geometry or plan(heads, groups, seq_len, head_dim, pattern, query.element_size(), strategy,
                           positions is not None)
    lens = lengths.to(query.device).contiguous()  # the kernels clamp it to 0..L (no launch here)
    query, key, value = dense_layout(query), dense_layout(key), dense_layout(value)
    sel, psel, lse_z, union = launch_select(kernels[0], geo, query, compressed_key, lens, scaling, pattern,
                                            selected_blocks, positions, seq_len)
    out, o_l, o_s, lse = launch_forward(kernels[1], geo, query, key, value, gate, sel, lens, scaling, pattern, save,
                                        positions, union)
    # union: the dense-tile strategy's union words, None for the gathered one (save_for_backward keeps a None)
    saved = (query, key, value, compressed_key, gate, lens, sel, psel, lse_z, o_l, o_s, lse, union) if save else None
    return out, geo, saved


class _BlossomTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks, strategy,
                geometry):
        save = any(ctx.needs_input_grad[:5])
        out, geo, saved = _forward(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                   selected_blocks, strategy, geometry, save)
        if save:
            ctx.save_for_backward(*saved)
            ctx.scaling = float(scaling)
            ctx.pattern = pattern
            ctx.geo = geo
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grads = launch_backward(_kernels(), ctx.geo, ctx.saved_tensors, grad_out, ctx.scaling, ctx.pattern,
                                ctx.needs_input_grad[0], ctx.needs_input_grad[3])
        return (*grads, None, None, None, None, None, None)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in tensors)


def _interpreter_bf16(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """Triton's CPU interpreter multiplies bf16 tiles wrongly (numpy has no bf16): there the kernels run on the
    exactly upcast values (a differentiable cast; compiled GPU kernels never take this path)."""
    if tensors[0].dtype == torch.bfloat16 and tensors[0].device.type == "cpu":
        return tuple(x.float() for x in tensors)
    return None


def triton_blossom_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed_key: torch.Tensor,
    gate: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scaling: float,
    pattern: BlossomPattern,
    selected_blocks: torch.Tensor | None = None,
    strategy: str = "auto",
    geometry: TritonGeometry | None = None,
) -> torch.Tensor:
    """Same contract as :func:`attention_eager.eager_blossom_attention`, computed by fused Triton kernels.

    Returns ``[B, H, L, D]`` in the input dtype (padded query rows exactly 0), differentiable with respect
    to query, key, value, compressed_key (straight-through, when ``pattern.straight_through``) and gate.
    ``selected_blocks [B, G, L, n]`` (optional) replaces the selection; each row's blocks must be distinct
    and eligible (ending before the query), as :func:`attention_patterns.ltis_select` would pick them.
    ``geometry`` (tuning and benchmarks) replaces :func:`plan`'s choice of strategy and tile sizes.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"triton backend: strategy must be one of {STRATEGIES}, got {strategy!r}")
    _check_inputs(query, key, value, compressed_key, gate, lengths, pattern)
    if query.shape[0] == 0 or query.shape[1] == 0:
        return query.new_zeros(query.shape)
    dtype = query.dtype
    upcast = _interpreter_bf16(query, key, value, compressed_key, gate)
    if upcast is not None:
        query, key, value, compressed_key, gate = upcast
    args = (query, key, value, compressed_key, gate, lengths, float(scaling), pattern, selected_blocks, strategy,
            geometry)
    if _needs_grad(query, key, value, compressed_key, gate):
        out = _BlossomTritonFunction.apply(*args)
    else:  # inference: the same kernels without the autograd machinery
        out = _forward(*args, save=False)[0]
    return out.to(dtype)


@torch.no_grad()
def triton_serving_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed_key: torch.Tensor,
    gate: torch.Tensor,
    lengths: torch.Tensor,
    positions: torch.Tensor,
    *,
    scaling: float,
    pattern: BlossomPattern,
) -> torch.Tensor:
    """The serving path (forward only): ``query [B, H, Q, D]`` and ``gate [B, H, Q, 2]`` hold the queries at
    ``positions [B, Q]``; keys, values and compressed keys cover all ``L`` positions. The selection and the
    gathered forward kernels run for those ``Q`` queries only. Returns ``[B, H, Q, D]`` (0 where the position
    is padding)."""
    _check_inputs(query, key, value, compressed_key, gate, lengths, pattern, positions)
    if query.shape[0] == 0 or query.shape[1] == 0 or query.shape[2] == 0:
        return query.new_zeros(query.shape)
    dtype = query.dtype
    upcast = _interpreter_bf16(query, key, value, compressed_key, gate)
    if upcast is not None:
        query, key, value, compressed_key, gate = upcast
    positions = positions.to(query.device).contiguous()
    out = _forward(query, key, value, compressed_key, gate, lengths, float(scaling), pattern, None, "auto", None,
                   False, positions)[0]
    return out.to(dtype)


@torch.no_grad()
def triton_ltis_select(
    query: torch.Tensor,
    compressed_key: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scaling: float,
    pattern: BlossomPattern,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection kernel alone: ``selected [B, G, L, n]`` (long, -1 = none, slots by decreasing score)
    and the probability ``p`` of each selected window (fp32), as :func:`attention_patterns.ltis_select`."""
    if query.dtype == torch.bfloat16 and query.device.type == "cpu":
        query, compressed_key = query.float(), compressed_key.float()
    ksel = _kernels()[0]
    batch, heads, seq_len, head_dim = query.shape
    geo = plan(heads, compressed_key.shape[1], seq_len, head_dim, pattern, query.element_size())
    lens = lengths.to(query.device).contiguous()
    sel, psel, _, _ = launch_select(ksel, geo, query, compressed_key, lens, scaling, pattern, None)
    return sel.long(), psel


_SERVING_NOTED: list[bool] = []


def triton_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0,
                             **kwargs: Unpack[BlossomAttentionKwargs]):
    """Fused Triton kernels: LTIS selection + fine attention + STIS in one pass each way (``attention_triton``).

    With ``query_positions [B, Q]`` (the serving path's last layer: one query per row) the kernels run for those
    queries only (:func:`triton_serving_attention`). Should a gradient be needed there (the serving path is
    forward-only; a user calling it under autograd), those queries go through the differentiable gathered
    key sets of :func:`attention_sdpa.sdpa_blossom_attention` (``positions=``; logged once at INFO).
    """
    if module.config.attention_type == "full":
        raise NotImplementedError(
            "the 'triton' backend implements BlossomRec's sparse attention only; for attention_type='full' (the "
            "dense causal baseline) use attn_implementation='sdpa', which runs FlashAttention"
        )
    if dropout:
        raise NotImplementedError("the 'triton' backend has no attention dropout (BlossomRec uses none)")
    compressed_key, gate, lengths, pattern = kwargs["compressed_key"], kwargs["gate"], kwargs["lengths"], kwargs[
        "pattern"]
    positions = kwargs.get("query_positions")
    if positions is None:
        out = triton_blossom_attention(query, key, value, compressed_key, gate, lengths, scaling=scaling,
                                       pattern=pattern)
    elif not _needs_grad(query, key, value, compressed_key, gate):
        out = triton_serving_attention(query, key, value, compressed_key, gate, lengths, positions, scaling=scaling,
                                       pattern=pattern)
    else:
        if not _SERVING_NOTED and not torch.compiler.is_compiling():
            _SERVING_NOTED.append(True)
            logger.info("triton backend: query_positions with autograd on: the %d queried positions use the "
                        "differentiable gathered key sets of attention_sdpa.sdpa_blossom_attention(positions=...)",
                        positions.shape[1])
        out = sdpa_blossom_attention(query, key, value, compressed_key, gate, lengths, scaling=scaling,
                                     pattern=pattern, positions=positions)
    return out.transpose(1, 2).contiguous(), None


register_attention_backend(
    "triton", triton_attention_forward,
    description="fused Triton kernels (selection, fine LTIS + STIS attention, backward); linear memory",
    availability=triton_availability, query_subset=True,
)
