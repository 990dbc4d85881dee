"""The eager reference and the shared key-set helpers against a brute-force reading of MODEL.md."""

from __future__ import annotations

import bruteforce_reference as brute
import pytest
import torch

from blossom_hf.models.blossomrec.attention_eager import eager_blossom_attention
from blossom_hf.models.blossomrec.attention_patterns import (
    BlossomPattern,
    ltis_select,
    ltis_window_keys,
    stis_dense_mask,
    stis_key_index,
)


def _inputs(generator, batch, heads, groups, seq_len, dim, block, lengths=None):
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    num_windows = seq_len // block
    if lengths is None:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    return dict(
        query=randn(batch, heads, seq_len, dim).requires_grad_(),
        key=randn(batch, groups, seq_len, dim).requires_grad_(),
        value=randn(batch, groups, seq_len, dim).requires_grad_(),
        compressed_key=randn(batch, groups, num_windows, dim).requires_grad_(),
        gate=torch.rand(batch, heads, seq_len, 2, generator=generator, dtype=torch.float64).requires_grad_(),
        lengths=lengths,
    )


@pytest.mark.parametrize("sinks", [0, 2])
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("heads,groups", [(4, 2), (2, 2), (4, 1)])
def test_eager_matches_bruteforce_forward_and_backward(generator, sinks, straight_through, heads, groups):
    block, seq_len, dim = 4, 21, 8
    pattern = BlossomPattern(block_size=block, compression_window=8, num_selected_blocks=2, stis_window=3,
                             stis_num_sinks=sinks, straight_through=straight_through)
    lengths = torch.tensor([seq_len, 9, 1])
    x = _inputs(generator, 3, heads, groups, seq_len, dim, block, lengths)
    scaling = brute.scaled(dim)
    # float64 everywhere: the eager backend computes in fp32, so compare it in fp64 through a cast-free path
    out = eager_blossom_attention(**x, scaling=scaling, pattern=pattern)
    ref = brute.attention(**x, scaling=scaling, block=block, num_selected=2, window=3, sinks=sinks,
                          straight_through=straight_through)
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=1e-5, atol=1e-6)
    assert (out[1, :, 9:] == 0).all() and (out[2, :, 1:] == 0).all()

    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    names = ["query", "key", "value", "compressed_key", "gate"]
    grads = torch.autograd.grad((out * weights).sum(), [x[n] for n in names], allow_unused=True,
                                materialize_grads=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x[n] for n in names], allow_unused=True,
                                    materialize_grads=True)
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"grad {n}: {m}")
    if straight_through:
        assert grads[3].abs().sum() > 0, "straight-through must reach the compressed keys"
    else:
        assert grads[3].abs().sum() == 0


def test_selection_matches_bruteforce_and_tie_rule(generator):
    block, seq_len, dim = 4, 33, 8
    pattern = BlossomPattern(block_size=block, compression_window=8, num_selected_blocks=3)
    x = _inputs(generator, 2, 4, 2, seq_len, dim, block, torch.tensor([33, 20]))
    selected, prob = ltis_select(x["query"], x["compressed_key"], x["lengths"], 0.35, pattern)
    want = brute.selection(x["query"], x["compressed_key"], x["lengths"], scaling=0.35, block=block,
                           num_selected=3)
    assert torch.equal(selected, want)
    assert ((prob > 0) == (selected >= 0)).all()

    # exact ties: every window scores the same -> the most recent eligible windows win, newest first
    tied_key = torch.ones_like(x["compressed_key"])
    selected, _ = ltis_select(torch.ones_like(x["query"]), tied_key, x["lengths"], 0.35, pattern)
    t = 30  # eligible windows: e_w = 4w + 3 < 30 -> w <= 6
    assert selected[0, 0, t].tolist() == [6, 5, 4]
    assert selected[0, 0, 3].tolist() == [-1, -1, -1]  # window 0 ends at 3: not strictly before t = 3
    assert selected[0, 0, 4].tolist() == [0, -1, -1]
    assert selected[1, 0, 25].tolist() == [-1, -1, -1]  # padded query (length 20) selects nothing


def test_window_keys_match_loop(generator):
    key = torch.randn(2, 3, 19, 5, generator=generator)
    lengths = torch.tensor([19, 10])
    pattern = BlossomPattern(block_size=4, compression_window=12)
    got = ltis_window_keys(key, lengths, pattern)
    for b in range(2):
        want = brute.window_keys(key[b], int(lengths[b]), 4, 12)
        torch.testing.assert_close(got[b], want, rtol=0, atol=0)
    assert ltis_window_keys(key[:, :, :3], lengths.clamp(max=3), pattern).shape == (2, 3, 0, 12, 5)


@pytest.mark.parametrize("seq_len,window,sinks", [(1, 8, 0), (40, 8, 0), (40, 3, 2), (70, 5, 9)])
def test_stis_key_sets(seq_len, window, sinks):
    mask = stis_dense_mask(seq_len, window, sinks)
    index, valid = stis_key_index(seq_len, window, sinks)
    for t in range(seq_len):
        want = brute.stis_keys(t, window, sinks)
        assert set(mask[t].nonzero().flatten().tolist()) == want
        listed = index[t][valid[t]].tolist()
        assert sorted(listed) == sorted(want), "each key exactly once in the gather table"
