"""Dense causal FlexAttention registered as a BlossomRec backend (``flex_dense``, ``attention_type="full"``
only): the second dense baseline of :mod:`blossom_hf.benchmarks.gpu` beside SDPA/FlashAttention."""

from __future__ import annotations

import torch

__all__ = ["causal_block_mask", "flex_dense_forward", "flex_function", "register_flex_baseline"]

_FLEX: dict = {}


def flex_function():
    """``flex_attention`` compiled once (per process)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def causal_block_mask(seq_len: int, device):
    """FlexAttention's block mask of dense causal attention at ``seq_len`` (cached)."""
    key = ("mask", seq_len, str(device))
    if key not in _FLEX:
        from torch.nn.attention.flex_attention import create_block_mask

        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        _FLEX[key] = create_block_mask(causal, None, None, seq_len, seq_len, device=device)
    return _FLEX[key]


def flex_dense_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Dense causal FlexAttention with GQA (compacted histories: causal == causal over real keys)."""
    from blossom_hf.models.blossomrec.attention_patterns import query_is_real

    if module.config.attention_type != "full":
        raise NotImplementedError("flex_dense is a dense causal baseline (attention_type='full')")
    seq_len = query.shape[2]
    out = flex_function()(query, key, value, block_mask=causal_block_mask(seq_len, query.device), scale=scaling,
                     enable_gqa=True)
    real = query_is_real(kwargs["lengths"], seq_len)[:, None, :, None]
    return torch.where(real, out, 0.0).transpose(1, 2).contiguous(), None


def register_flex_baseline() -> None:
    """Register ``flex_dense`` (benchmark baseline) and let torch.compile keep one graph per shape."""
    from blossom_hf import register_attention_backend

    # every (L, batch) pair is a new shape for torch.compile: keep dynamo from falling back to the unfused
    # (L x L) FlexAttention after its default 8 recompiles
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    register_attention_backend("flex_dense", flex_dense_forward, overwrite=True,
                               description="dense causal FlexAttention with GQA (benchmark baseline)")


# --------------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------------
