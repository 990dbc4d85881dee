"""triton_rope's and triton_layer_ops' kernels (the layer's RoPE, the LTIS compressor's windows, the gate) against
the PyTorch ops, forward and backward, on the CPU through Triton's interpreter (run with test_triton_backend.py's
interpreter subprocess: see tests/triton_interpreter.py). Tolerances per test; fp16 within a few fp16 roundings."""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import needs_interpreter

from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("per_row_table", [False, True])
@needs_interpreter
def test_fused_rope_matches_the_pytorch_ops(generator, dtype, per_row_table):
    """triton_rope's kernel (forward and its transposed-rotation backward; one tensor, and the query + key pair in
    one launch) against apply_rotary_reference, on the projections' non-contiguous view layout; per_row_table: the
    serving path's [B, 1, Q, D] query tables."""
    from blossom_hf.models.blossomrec.layers_blossomrec import BlossomRecRotaryEmbedding, apply_rotary_reference
    from blossom_hf.models.blossomrec.triton_rope import FusedRotary, FusedRotaryPair

    batch, seq_len, heads, head_dim = 2, 7, 3, 24
    cos, sin = BlossomRecRotaryEmbedding(_RopeConfig(head_dim))(seq_len + 5, torch.device("cpu"))
    x = torch.randn(batch, seq_len, heads, head_dim, generator=generator).to(dtype).transpose(1, 2)  # [B, h, Q, D]
    if per_row_table:
        positions = torch.randint(0, seq_len + 5, (batch, seq_len), generator=generator)
        cos, sin = cos[positions][:, None], sin[positions][:, None]
    else:
        cos, sin = cos[:seq_len], sin[:seq_len]
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    got, want = FusedRotary.apply(xa, cos, sin), apply_rotary_reference(xb, cos, sin)
    assert got.dtype == dtype and got.stride() == x.stride()
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    grad = torch.randn(got.shape, generator=generator).to(dtype)
    (ga,), (gb,) = torch.autograd.grad(got, [xa], grad), torch.autograd.grad(want, [xb], grad)
    torch.testing.assert_close(ga.float(), gb.float(), **tol)
    # the layer's pair form: query (these tables) and a key of other shape (the full [L, D] table) in one launch
    full_cos, full_sin = BlossomRecRotaryEmbedding(_RopeConfig(head_dim))(seq_len + 5, torch.device("cpu"))
    key = torch.randn(batch, seq_len + 5, 2, head_dim, generator=generator).to(dtype).transpose(1, 2)
    ka, kb = key.detach().clone().requires_grad_(), key.detach().clone().requires_grad_()
    xa = x.detach().clone().requires_grad_()
    got_q, got_k = FusedRotaryPair.apply(xa, cos, sin, ka, full_cos, full_sin)
    want_k = apply_rotary_reference(kb, full_cos, full_sin)
    torch.testing.assert_close(got_q.float(), want.float(), **tol)
    torch.testing.assert_close(got_k.float(), want_k.float(), **tol)
    grad_k = torch.randn(got_k.shape, generator=generator).to(dtype)
    ga, gka = torch.autograd.grad((got_q, got_k), [xa, ka], (grad, grad_k))
    (gkb,) = torch.autograd.grad(want_k, [kb], grad_k)
    torch.testing.assert_close(ga.float(), gb.float(), **tol)
    torch.testing.assert_close(gka.float(), gkb.float(), **tol)


class _RopeConfig:
    def __init__(self, head_dim: int):
        self.head_dim, self.rope_theta = head_dim, 10000.0


@pytest.mark.parametrize("block_size,window,head_dim", [(4, 8, 16), (3, 7, 24), (4, 4, 16), (16, 32, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@needs_interpreter
def test_fused_compressor_windows_match_the_pytorch_ops(generator, block_size, window, head_dim, dtype):
    """triton_layer_ops' windows kernel (masked keys + P, flattened) and its backward (d key by the sum over the
    window slots holding each position, d P by one sum) against ltis_window_keys + P, on the projections'
    transposed key layout with padded rows (a length 0, a length beyond L, a partial last block). Forward: the same
    roundings, so exactly equal; gradients: fp32 within 1e-6, fp16 within one fp16 rounding (d P accumulates in
    fp32 here, in fp16's own sum there)."""
    from blossom_hf.models.blossomrec.attention_patterns import ltis_window_keys
    from blossom_hf.models.blossomrec.triton_layer_ops import CompressorWindows

    batch, groups, seq_len = 4, 2, 4 * block_size + 2
    pattern = BlossomPattern(block_size=block_size, compression_window=window, num_selected_blocks=2, stis_window=2)
    key = torch.randn(batch, seq_len, groups, head_dim, generator=generator).to(dtype).transpose(1, 2)
    position = torch.randn(groups, window, head_dim, generator=generator)
    lengths = torch.tensor([seq_len, 0, seq_len + 3, seq_len // 2 + 1])
    ka, kb = key.detach().clone().requires_grad_(), key.detach().clone().requires_grad_()
    pa, pb = position.clone().requires_grad_(), position.clone().requires_grad_()
    got = CompressorWindows.apply(ka, lengths, pa, block_size, window)
    want = (ltis_window_keys(kb, lengths, pattern) + pb[None, :, None].to(dtype)).flatten(-2)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    grad = torch.randn(got.shape, generator=generator).to(dtype)
    gka, gpa = torch.autograd.grad(got, [ka, pa], grad)
    gkb, gpb = torch.autograd.grad(want, [kb, pb], grad)
    assert gka.dtype == dtype and gka.stride() == key.stride(), "d key in the key's layout"
    assert gpa.dtype == torch.float32
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(gka.float(), gkb.float(), **tol)
    torch.testing.assert_close(gpa, gpb, rtol=1e-5 if dtype == torch.float32 else 4e-3, atol=1e-5 if dtype ==
                               torch.float32 else 4e-3 * float(gpb.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@needs_interpreter
def test_fused_gate_matches_the_pytorch_ops(generator, dtype):
    """triton_layer_ops' gate kernel (fp32 sigmoid of the logits as the [B, H, Q, 2] view) and its backward
    (d logits in the logits' layout and dtype) against sigmoid(logits.float()).view().transpose()."""
    from blossom_hf.models.blossomrec.triton_layer_ops import GateSigmoid

    batch, num_queries, heads = 2, 5, 3
    logits = (3 * torch.randn(batch, num_queries, 2 * heads, generator=generator)).to(dtype)
    la, lb = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = GateSigmoid.apply(la, heads)
    want = torch.sigmoid(lb.float()).view(batch, num_queries, heads, 2).transpose(1, 2)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    grad = torch.randn(batch, heads, num_queries, 2, generator=generator)  # contiguous, as the backends give it
    (ga,), (gb,) = torch.autograd.grad(got, [la], grad), torch.autograd.grad(want, [lb], grad)
    assert ga.dtype == dtype and ga.is_contiguous()
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ga.float(), gb.float(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@needs_interpreter
def test_fused_query_gate_matches_the_pytorch_ops(generator, dtype):
    """triton_layer_ops.QueryGate (the query columns of one [Wq; Wg] product as a view, the gate from the other
    columns plus the bias in the gate kernel) and its backward (d both in one buffer, d bias as an fp32 sum) against
    the slice, add and sigmoid in PyTorch ops."""
    from blossom_hf.models.blossomrec.triton_layer_ops import QueryGate

    batch, num_queries, heads, head_dim = 2, 5, 3, 4
    width = heads * head_dim
    both = (3 * torch.randn(batch, num_queries, width + 2 * heads, generator=generator)).to(dtype)
    bias = torch.randn(2 * heads, generator=generator)
    ba, bb = both.clone().requires_grad_(), both.clone().requires_grad_()
    pa, pb = bias.clone().requires_grad_(), bias.clone().requires_grad_()
    query, gate = QueryGate.apply(ba, pa, heads)
    want_q = bb[..., :width]
    want_gate = torch.sigmoid(bb[..., width:].float() + pb).view(batch, num_queries, heads, 2).transpose(1, 2)
    assert query.dtype == dtype and torch.equal(query, want_q.detach())
    assert gate.dtype == torch.float32 and gate.stride() == want_gate.stride()
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gate, want_gate, rtol=1e-6, atol=1e-6)
    gq = torch.randn(query.shape, generator=generator).to(dtype)
    gg = torch.randn(batch, heads, num_queries, 2, generator=generator)
    da = torch.autograd.grad((query, gate), (ba, pa), (gq, gg))
    db = torch.autograd.grad((want_q, want_gate), (bb, pb), (gq, gg))
    assert da[0].dtype == dtype and da[1].dtype == torch.float32
    torch.testing.assert_close(da[0].float(), db[0].float(), **tol)
    torch.testing.assert_close(da[1], db[1], **tol)


_COMPRESSOR_KNOBS = [{}, {"BLOCK_ROWS": 32, "FWD_BLOCK_COLS": 64, "FWD_BLOCK_K": 32, "BWD_BLOCK_COLS": 64,
                          "BWD_BLOCK_K": 32, "CAST_WEIGHTS": True, "DX_BY_GEMM": True}]


@pytest.mark.parametrize("knobs", _COMPRESSOR_KNOBS, ids=["default", "other-tiles-cast-gemm"])
@pytest.mark.parametrize("block_size,window,head_dim", [(4, 8, 16), (3, 7, 24), (16, 32, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@needs_interpreter
def test_fused_compressor_matches_the_pytorch_form(generator, monkeypatch, block_size, window, head_dim, dtype,
                                                    knobs):
    """triton_compressor.FusedCompressor (windows + P, fc1, ReLU, fc2 in one kernel; its backward: one kernel for
    dh and dx, two GEMMs, fp32 bias sums) against the PyTorch form of BlossomRecBlockCompressor (ltis_window_keys +
    P, two nn.Linear, ReLU), forward and every gradient, on the projections' transposed key layout with padded rows
    (a length 0, a length beyond L, a partial last block), more windows than one program's 64 rows, widths l * D
    that are not a multiple of the 64-column chunks (7 * 24), fp32 weights read as stored. Tolerances: fp32 within
    1e-5 relative (ieee products, other summation order); fp16 within a few fp16 roundings."""
    from blossom_hf.models.blossomrec import triton_compressor
    from blossom_hf.models.blossomrec.attention_patterns import ltis_window_keys
    from blossom_hf.models.blossomrec.triton_compressor import FusedCompressor, launch_compressor

    for name, value in knobs.items():  # the module's other configurations (rows per program, casts, dx by GEMM)
        monkeypatch.setattr(triton_compressor, name, value)
    batch, groups, seq_len = 5, 2, 7 * block_size + 2
    pattern = BlossomPattern(block_size=block_size, compression_window=window, num_selected_blocks=2, stis_window=2)
    width = window * head_dim
    key = torch.randn(batch, seq_len, groups, head_dim, generator=generator).to(dtype).transpose(1, 2)
    lengths = torch.tensor([seq_len, 0, seq_len + 3, seq_len // 2 + 1, 1])
    params = [torch.randn(groups, window, head_dim, generator=generator),  # P
              torch.randn(width, width, generator=generator) / width**0.5, torch.randn(width, generator=generator),
              torch.randn(head_dim, width, generator=generator) / width**0.5,
              torch.randn(head_dim, generator=generator)]
    ka, kb = key.detach().clone().requires_grad_(), key.detach().clone().requires_grad_()
    pa = [p.clone().requires_grad_() for p in params]
    pb = [p.clone().requires_grad_() for p in params]
    got = FusedCompressor.apply(ka, lengths, *pa, block_size, window, dtype)
    flat = (ltis_window_keys(kb, lengths, pattern) + pb[0][None, :, None].to(dtype)).flatten(-2)
    hidden = torch.relu(torch.nn.functional.linear(flat, pb[1].to(dtype), pb[2].to(dtype)))
    want = torch.nn.functional.linear(hidden, pb[3].to(dtype), pb[4].to(dtype))
    assert got.dtype == dtype and got.shape == want.shape == (batch, groups, seq_len // block_size, head_dim)
    fp32 = dtype == torch.float32
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-5 if fp32 else 4e-3, atol=1e-5 if fp32 else 4e-3)
    # no grad: the same values from the launcher alone
    with torch.no_grad():
        alone = launch_compressor(key, lengths, *params, block_size, window, dtype)[0]
    torch.testing.assert_close(alone, got.detach(), rtol=0, atol=0)
    grad = torch.randn(got.shape, generator=generator).to(dtype)
    ga = torch.autograd.grad(got, [ka, *pa], grad)
    gb = torch.autograd.grad(want, [kb, *pb], grad)
    assert ga[0].dtype == dtype and ga[0].stride() == key.stride(), "d key in the key's layout"
    for name, a, b in zip(("key", "P", "W1", "b1", "W2", "b2"), ga, gb, strict=True):
        assert a.dtype == b.dtype, name
        scale = float(b.float().abs().max())
        tol = 1e-5 if fp32 else 8e-3
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * scale, msg=lambda m, n=name: f"{n}: {m}")
