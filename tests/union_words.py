"""The dense-tile strategy's union words (``select_kernel`` writes them, the tile kernels skip key tiles by them),
checked against the selection they summarise: shared by test_triton_backend.py (interpreter) and
test_triton_gpu.py (compiled kernels)."""

from __future__ import annotations

import dataclasses

import torch

from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
from blossom_hf.models.blossomrec.attention_triton import _kernels
from blossom_hf.models.blossomrec.triton_launch import launch_select, plan


def union_words_reference(sel: torch.Tensor, lengths: torch.Tensor, tile: int, words: int) -> torch.Tensor:
    """``[B, G, cdiv(L, tile), words]`` int32: bit ``w % 32`` of word ``w // 32`` set when a real query of the tile
    selected block ``w`` (``sel [B, G, L, n]``, -1 = none)."""
    batch, groups, seq_len, _ = sel.shape
    out = torch.zeros(batch, groups, -(-seq_len // tile), words, dtype=torch.int64)
    real = torch.arange(seq_len)[None, :] < lengths.cpu()[:, None]
    for b, g, t, k in (sel.cpu() >= 0).nonzero().tolist():
        if real[b, t]:
            w = int(sel[b, g, t, k])
            out[b, g, t // tile, w // 32] |= 1 << (w % 32)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)  # the int32 bit pattern


def check_union_words(device, heads, groups, seq_len, head_dim, dtype, pattern: BlossomPattern, seed: int,
                      variant: dict | None = None) -> None:
    """The union words of one selection equal :func:`union_words_reference` of it, bit for bit (``variant``: fields
    of plan()'s geometry to replace, e.g. smaller backward query tiles, which make the words' rows finer)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    batch = 2
    q = torch.randn(batch, heads, seq_len, head_dim, generator=gen, device=device).to(dtype)
    ck = torch.randn(batch, groups, seq_len // pattern.block_size, head_dim, generator=gen, device=device).to(dtype)
    lengths = torch.tensor([seq_len, max(1, seq_len - 37)], device=device)
    geo = plan(heads, groups, seq_len, head_dim, pattern, q.element_size(), "tile")
    geo = dataclasses.replace(geo, **(variant or {}))
    sel, _, _, union = launch_select(_kernels()[0], geo, q, ck, lengths, head_dim**-0.5, pattern, None)
    want = union_words_reference(sel, lengths, geo.UBM, union.shape[-1])
    # rows past the last query tile (padding to whole tiles of the larger query tile) stay 0
    assert bool((union[:, :, want.shape[2]:] == 0).all())
    torch.testing.assert_close(union[:, :, :want.shape[2]].cpu(), want, rtol=0, atol=0)
