"""The fused Triton backend against the eager reference, on the CPU through Triton's interpreter.

Triton fixes compiled-vs-interpreted when it is first imported, so this module needs ``TRITON_INTERPRET=1``
before that import (tests/triton_interpreter.py sets it when the module runs alone); collected after modules that
already imported triton, it re-runs itself and test_triton_layer_ops.py in one fresh interpreter
(``test_interpreter_suite_in_subprocess``) and skips the in-process copies. Shapes are small (B <= 3, L <= 40,
D = 16/24) because the interpreter runs every program in numpy. Both kernel strategies ("tile" and "gather", see
``attention_triton.plan``) are checked on the same inputs.

Comparisons run on fresh random inputs (seed printed; ``BLOSSOM_TEST_SEED`` replays one). Where a near-tie
in the LTIS scores could make two correct implementations select differently, the eager reference is
given the Triton kernel's own selection (``selected_blocks=``); the selections themselves are compared
separately (equal except where the two competing scores differ by < 1e-5).

Tolerances, fp32 (exact fp32 products, different summation order): outputs and every input gradient
within ``rtol=1e-4, atol=1e-5 x max|ref|``. fp16 inputs: ``rtol=atol=1e-2`` (relative to max|ref|).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_histories, tiny_config
from triton_interpreter import IN_PROCESS, INTERPRETER_FILES, needs_interpreter
from union_words import check_union_words

from blossom_hf import BlossomRecModel
from blossom_hf.models.blossomrec.attention_eager import eager_blossom_attention
from blossom_hf.models.blossomrec.attention_patterns import (
    BlossomPattern,
    ltis_scores,
    ltis_select,
)
from blossom_hf.models.blossomrec.attention_triton import (
    TILE_MAX_SEQ_LEN,
    plan,
    triton_availability,
    triton_blossom_attention,
    triton_ltis_select,
    triton_serving_attention,
)
from blossom_hf.models.blossomrec.triton_common import interpret_requested

STRATEGIES = ("tile", "gather")


@pytest.mark.slow
@pytest.mark.skipif(IN_PROCESS or os.environ.get("BLOSSOM_TRITON_SUBPROCESS") == "1",
                    reason="the interpreter is active in this process: the tests below run directly")
def test_interpreter_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", BLOSSOM_TRITON_SUBPROCESS="1")
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(str(here / f) for f in INTERPRETER_FILES)]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=1800)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"interpreter tests failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"


def _inputs(gen, batch, heads, groups, seq_len, head_dim, pattern, lengths=None, dtype=torch.float32):
    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).requires_grad_()

    num_windows = seq_len // pattern.block_size
    q = rnd(batch, heads, seq_len, head_dim)
    k = rnd(batch, groups, seq_len, head_dim)
    v = rnd(batch, groups, seq_len, head_dim)
    ck = rnd(batch, groups, num_windows, head_dim)
    gate = torch.rand(batch, heads, seq_len, 2, generator=gen).requires_grad_()
    if lengths is None:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
        lengths[0] = seq_len
    return q, k, v, ck, gate, torch.as_tensor(lengths)


def _close(actual, expected, name, rtol=1e-4, atol=1e-5):
    peak = expected.detach().abs().max()
    if peak == 0:  # e.g. d query with a single key per row: exactly 0 in exact arithmetic
        assert float(actual.detach().abs().max()) <= 10 * atol, f"{name}: expected ~0"
        return
    scale = peak
    torch.testing.assert_close(actual.detach().float() / scale, expected.detach().float() / scale,
                               rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _compare(gen, batch, heads, groups, seq_len, head_dim, pattern, lengths=None, dtype=torch.float32,
             rtol=1e-4, atol=1e-5, strategy="auto", geometry=None):
    q, k, v, ck, gate, lengths = _inputs(gen, batch, heads, groups, seq_len, head_dim, pattern, lengths, dtype)
    scaling = head_dim**-0.5
    selected, _ = triton_ltis_select(q, ck, lengths, scaling=scaling, pattern=pattern)
    out = triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=scaling, pattern=pattern, strategy=strategy,
                                   geometry=geometry)
    assert out.dtype == dtype and out.shape == q.shape
    # reference in fp32 from the same (possibly low-precision) values, with the kernel's selection
    ref_inputs = [x.detach().float().requires_grad_() for x in (q, k, v, ck, gate)]
    ref = eager_blossom_attention(*ref_inputs, lengths, scaling=scaling, pattern=pattern,
                                  selected_blocks=selected)
    _close(out, ref, "output", rtol, atol)
    padded = torch.arange(seq_len)[None, :] >= lengths[:, None]
    assert bool((out.detach()[padded[:, None, :, None].expand_as(out)] == 0).all()), "padded rows must be 0"
    grad_out = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, [q, k, v, ck, gate], grad_out, allow_unused=True)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out.float(), allow_unused=True)
    for name, got, want in zip(("query", "key", "value", "compressed_key", "gate"), grads, ref_grads, strict=True):
        if want is None or not pattern.straight_through and name == "compressed_key":
            assert got is None or bool((got == 0).all()), f"{name}: expected no gradient"
            continue
        assert got is not None, f"{name}: missing gradient"
        assert got.dtype == (torch.float32 if name == "gate" else dtype)
        _close(got, want, f"d {name}", rtol, atol)


CASES = {
    # name: (batch, heads, groups, seq_len, head_dim, pattern kwargs)
    "gqa2_g2": (2, 4, 2, 40, 16, dict(block_size=4, num_selected_blocks=2, stis_window=3)),
    "mha_g1_no_st": (2, 2, 2, 33, 16, dict(block_size=4, num_selected_blocks=3, stis_window=2,
                                           straight_through=False)),
    "g4_sinks": (2, 4, 1, 36, 16, dict(block_size=4, num_selected_blocks=2, stis_window=3, stis_num_sinks=2)),
    "odd_block_dim24_sinks": (2, 4, 2, 37, 24, dict(block_size=6, num_selected_blocks=3, stis_window=9,
                                                    stis_num_sinks=3)),
    "b16_n1": (2, 2, 1, 40, 16, dict(block_size=16, num_selected_blocks=1, stis_window=1)),
    # b = 8, n = 4: a 32-key tile is 4 whole blocks <= n, so the dq kernel sums the straight-through gradient per
    # block first (the other cases take one pass per selected slot)
    "b8_n4_block_sums": (2, 4, 2, 72, 16, dict(block_size=8, num_selected_blocks=4, stis_window=3)),
    # b = 32: a key tile is one whole block (the kernels' one-flag LTIS test)
    "b32_one_block_tiles": (1, 4, 2, 100, 16, dict(block_size=32, num_selected_blocks=2, stis_window=3)),
    # g = 8 (8 heads per kv head: 8-query tiles, the selection's dq in its own kernel), b = 2: a key tile
    # spans 16 blocks
    "g8_b2_many_windows": (1, 8, 1, 40, 16, dict(block_size=2, num_selected_blocks=4, stis_window=2,
                                                 stis_num_sinks=1)),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", sorted(CASES))
@needs_interpreter
def test_matches_eager_forward_and_backward(generator, case, strategy):
    batch, heads, groups, seq_len, head_dim, kwargs = CASES[case]
    pattern = BlossomPattern(compression_window=2 * kwargs["block_size"], **kwargs)
    _compare(generator, batch, heads, groups, seq_len, head_dim, pattern, strategy=strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seq_len,lengths", [(1, [1, 1]), (3, [3, 1]), (9, [9, 1, 4])])
@needs_interpreter
def test_short_histories(generator, seq_len, lengths, strategy):
    """L < b (no compression window at all, M = 0) and L < 2b; length-1 rows."""
    pattern = BlossomPattern(block_size=4 if seq_len > 3 else 8, compression_window=16, num_selected_blocks=2,
                             stis_window=2, stis_num_sinks=1)
    _compare(generator, len(lengths), 4, 2, seq_len, 16, pattern, lengths=lengths, strategy=strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
@needs_interpreter
def test_fp16_and_bf16(generator, strategy):
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    _compare(generator, 2, 4, 2, 24, 16, pattern, dtype=torch.float16, rtol=1e-2, atol=1e-2, strategy=strategy)
    _compare(generator, 2, 4, 2, 24, 16, pattern, dtype=torch.bfloat16, rtol=1e-2, atol=1e-2, strategy=strategy)


@pytest.mark.parametrize("variant", [
    dict(BNQ=32, BN=16, warps_bwd_q=4), dict(BN=64, BNK=64, num_warps=2), dict(BM=4, R=16),
    # plan()'s backward at L >= SMALL_BWD_MIN_SEQ_LEN in bf16: 4-query, one-block tiles at 1 warp (union rows of 4
    # queries, read 4 at a time by the 16-query forward)
    dict(BMB=4, RB=16, BNQ=16, BNK=16, warps_bwd_q=1, warps_bwd_kv=1, maxreg_bwd_q=0),
    dict(BM=4, R=16, BN=16, BMB=4, RB=16, BNQ=16, BNK=16, num_warps=1, warps_bwd_q=1, warps_bwd_kv=1),
    dict(BM=8, R=32, BN=16, BMB=4, RB=16, BNQ=16),
    # the selection's share of dq inside the dq kernel at 4-query tiles (broadcast products instead of tl.dot)
    dict(BMB=4, RB=16, BNQ=16, BNK=16, warps_bwd_q=1, warps_bwd_kv=1, SELQ_MIN_BM=1),
], ids=["bnq32_bn16", "bn64", "bm4", "small_bwd", "all_small", "bm8_bmb4", "small_bwd_fused_selq"])
@needs_interpreter
def test_tile_geometry_variants_match_eager(generator, variant):
    """The tuning knobs of the dense-tile kernels (TritonGeometry) change speed only: key tiles of 16, 32 or 64
    in each kernel, 4- and 8-query tiles in the forward and the backward apart (the selection's dq then in its own
    kernel), one-block key tiles."""
    import dataclasses

    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3,
                             stis_num_sinks=1)
    geometry = dataclasses.replace(plan(4, 1, 37, 16, pattern, strategy="tile"), **variant)
    _compare(generator, 2, 4, 1, 37, 16, pattern, geometry=geometry)


@pytest.mark.parametrize("variant", [dict(BMB=4, RB=16, BNQ=16, BNK=16, warps_bwd_q=1, warps_bwd_kv=1),
                                     dict(BM=8, R=32, BMB=4, RB=16, SELQ_MIN_BM=1)], ids=["small_bwd", "bm8_bmb4"])
@needs_interpreter
def test_union_rows_finer_than_the_tile(generator, variant):
    """A query tile that spans several rows of union words (backward tiles smaller than the forward's) must read all
    of them: at L = 160 with no sinks many key tiles hold only LTIS pairs, so a tile that read only its first row
    would skip blocks its later queries selected."""
    import dataclasses

    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=2)
    geometry = dataclasses.replace(plan(4, 1, 160, 16, pattern, strategy="tile"), **variant)
    _compare(generator, 1, 4, 1, 160, 16, pattern, lengths=[150], geometry=geometry)


def test_plan_picks_the_strategy_by_length():
    pattern = BlossomPattern()
    assert plan(8, 2, TILE_MAX_SEQ_LEN, 16, pattern).strategy == "tile"
    assert plan(8, 2, TILE_MAX_SEQ_LEN + 1, 16, pattern).strategy == "gather"
    assert plan(8, 2, 50, 16, pattern, strategy="gather").strategy == "gather"
    geo = plan(6, 2, 200, 24, pattern)  # g = 3 -> rows padded to 4 heads per query
    assert (geo.GP, geo.DP, geo.R) == (4, 32, geo.BM * 4)
    with pytest.raises(ValueError, match="strategy must be one of"):
        plan(8, 2, 50, 16, pattern, strategy="fast")


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("ON", True), ("0", False),
                                            ("false", False), ("", False)])
def test_interpret_requested_reads_the_variable_as_triton_does(monkeypatch, value, expected):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpret_requested() is expected


@needs_interpreter
def test_selection_matches_ltis_select(generator):
    """Random scores: same selected windows (slot order too) and probabilities as the PyTorch reference,
    except where two competing scores are a near-tie (< 1e-5 apart). 80 windows: two window tiles."""
    batch, heads, groups, seq_len, head_dim = 3, 4, 2, 160, 16
    pattern = BlossomPattern(block_size=2, compression_window=4, num_selected_blocks=3)
    q, _, _, ck, _, lengths = _inputs(generator, batch, heads, groups, seq_len, head_dim, pattern)
    q, ck = q.detach(), ck.detach()
    scaling = head_dim**-0.5
    got, got_p = triton_ltis_select(q, ck, lengths, scaling=scaling, pattern=pattern)
    want, want_p = ltis_select(q, ck, lengths, scaling, pattern)
    z = ltis_scores(q, ck, scaling)
    differ = (got != want).any(-1)
    for b_, g_, t_ in differ.nonzero().tolist():
        a, w = got[b_, g_, t_], want[b_, g_, t_]
        assert bool(((a >= 0) == (w >= 0)).all()), f"different number of selected blocks at {(b_, g_, t_)}"
        gap = (z[b_, g_, t_][a[a >= 0]] - z[b_, g_, t_][w[w >= 0]]).abs().max()
        assert gap < 1e-5, f"selection differs at {(b_, g_, t_)}: {a.tolist()} vs {w.tolist()} (gap {gap})"
    same = ~differ[..., None].expand_as(got)
    torch.testing.assert_close(got_p[same], want_p[same], rtol=1e-5, atol=1e-7)


@needs_interpreter
def test_selection_tie_rule_is_exact(generator):
    """Small-integer inputs make every score exact in fp32 (any summation order), with many exact ties:
    the selection must then equal the reference exactly (ties -> larger w, slots by decreasing score).
    L = 160 with b = 2 gives 80 windows: two window tiles, so the running top-n is merged across tiles."""
    batch, heads, groups, seq_len, head_dim = 3, 4, 2, 160, 16
    pattern = BlossomPattern(block_size=2, compression_window=4, num_selected_blocks=4)
    q = torch.randint(-1, 2, (batch, heads, seq_len, head_dim), generator=generator).float()
    ck = torch.randint(-1, 2, (batch, groups, seq_len // 2, head_dim), generator=generator).float()
    lengths = torch.tensor([seq_len, 97, 2])
    got, got_p = triton_ltis_select(q, ck, lengths, scaling=0.25, pattern=pattern)
    want, want_p = ltis_select(q, ck, lengths, 0.25, pattern)
    z = ltis_scores(q, ck, 0.25)
    sorted_z = z.sort(-1).values
    assert bool((sorted_z[..., 1:] == sorted_z[..., :-1]).any()), "the test needs exact ties"
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_p, want_p, rtol=1e-5, atol=1e-7)


@needs_interpreter
def test_selection_all_scores_tied():
    """A zero query scores every window exactly 0 (keys of either sign): all of them tie, so the tie rule alone picks
    the n most recent eligible windows, across three window tiles (40 windows) of the kernel's running top-n."""
    batch, heads, groups, seq_len, head_dim = 1, 4, 2, 80, 16
    pattern = BlossomPattern(block_size=2, compression_window=4, num_selected_blocks=4)
    q = torch.zeros(batch, heads, seq_len, head_dim)
    windows = torch.arange(seq_len // 2)
    ck = torch.where((windows % 2 == 0)[None, None, :, None], -1.0, 1.0).expand(batch, groups, -1, head_dim).clone()
    lengths = torch.tensor([seq_len])
    z = ltis_scores(q, ck, 0.25)
    assert bool((z == 0).all()), "every score must be zero"
    got, _ = triton_ltis_select(q, ck, lengths, scaling=0.25, pattern=pattern)
    want, _ = ltis_select(q, ck, lengths, 0.25, pattern)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    t = seq_len - 1  # eligible windows 0 .. t // b - 1; the top-4 are the last four, most recent first
    assert got[0, 0, t].tolist() == [t // 2 - 1 - k for k in range(4)]


@pytest.mark.parametrize("heads,groups,head_dim,seq_len,block_size,variant", [
    (4, 2, 16, 200, 16, None), (8, 1, 40, 300, 16, None), (2, 2, 128, 100, 16, None), (4, 2, 16, 150, 2, None),
    (8, 2, 16, 150, 2, dict(BMB=4, RB=16)),
], ids=["g2_d16", "g8_d40", "g1_d128", "b2_many_words", "rows_of_4_queries"])
@needs_interpreter
def test_union_words_match_the_selection(heads, groups, head_dim, seq_len, block_size, variant):
    """The tile kernels skip a key tile when no query of the query tile selected one of its blocks, by the union
    words the selection kernel writes: they must hold exactly the selected blocks (several words per tile with
    b = 2; head dims above 32 take 32-query selection tiles, so two programs share a 64-query tile at g = 1)."""
    pattern = BlossomPattern(block_size=block_size, compression_window=2 * block_size, num_selected_blocks=3)
    check_union_words("cpu", heads, groups, seq_len, head_dim, torch.float32, pattern, seed=seq_len, variant=variant)


@pytest.mark.parametrize("straight_through", [True, False])
@needs_interpreter
def test_whole_model_gradients_match_eager(generator, straight_through):
    """A 2-layer BlossomRecModel: loss and the gradient of every parameter, eager vs triton (fp32)."""
    config = tiny_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_history_length=40,
                         ltis_block_size=4, ltis_compression_window=8, ltis_num_selected_blocks=2, stis_window=3,
                         stis_num_sinks=1, ltis_straight_through=straight_through, attn_implementation="eager")
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    eager = BlossomRecModel(config)
    fused = copy.deepcopy(eager)
    fused.set_attn_implementation("triton")
    ids = random_histories(3, 40, config.vocab_size, generator, padding="right")
    labels = torch.where(ids > 0, torch.randint(1, config.vocab_size, ids.shape, generator=generator), 0)
    results = []
    for model in (eager, fused):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (out_e, grads_e), (out_t, grads_t) = results
    torch.testing.assert_close(out_t.loss, out_e.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_t.logits, out_e.logits, rtol=1e-4, atol=1e-4)
    assert grads_t.keys() == grads_e.keys()
    assert any("compressor" in n for n in grads_e) == straight_through
    overall = max(float(g.abs().max()) for g in grads_e.values())
    for name in grads_e:
        if float(grads_e[name].abs().max()) < 1e-6 * overall:
            # exactly 0 in exact arithmetic (compressor.fc2.bias: softmax is shift invariant); rounding only
            assert float(grads_t[name].abs().max()) < 1e-6 * overall, name
            continue
        _close(grads_t[name], grads_e[name], name)


@needs_interpreter
def test_full_attention_is_refused():
    config = tiny_config(attention_type="full", attn_implementation="triton")
    model = BlossomRecModel(config)
    with pytest.raises(NotImplementedError, match="sdpa"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


@needs_interpreter
def test_clear_errors(generator):
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    q, k, v, ck, gate, lengths = _inputs(generator, 1, 2, 1, 8, 16, pattern)
    call = dict(scaling=0.25, pattern=pattern)
    with pytest.raises(ValueError, match="head dims 16..128"):
        triton_blossom_attention(q[..., :8], k[..., :8], v[..., :8], ck[..., :8], gate, lengths, **call)
    with pytest.raises(TypeError, match="float16, bfloat16 and float32"):
        triton_blossom_attention(q.double(), k.double(), v.double(), ck, gate, lengths, **call)
    with pytest.raises(TypeError, match="one dtype"):
        triton_blossom_attention(q, k.half(), v, ck, gate, lengths, **call)
    with pytest.raises(ValueError, match="compressed_key"):
        triton_blossom_attention(q, k, v, ck[:, :, :1], gate, lengths, **call)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        triton_blossom_attention(q[:, :1], k.expand(1, 2, 8, 16), v.expand(1, 2, 8, 16),
                                 ck.expand(1, 2, 2, 16), gate[:, :1], lengths, **call)
    for bad in (0.0, -0.25, float("nan")):  # the kernels take the row maximum of the raw scores
        with pytest.raises(ValueError, match="scaling must be a positive number"):
            triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=bad, pattern=pattern)
    assert triton_availability() is None
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("TRITON_INTERPRET", "0")
        if not torch.cuda.is_available():
            assert "CUDA" in triton_availability()
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            triton_blossom_attention(q, k, v, ck, gate, lengths, **call)
    finally:
        mp.undo()


SERVING_CASES = {**CASES, "two_window_tiles": (2, 4, 2, 160, 16, dict(block_size=2, num_selected_blocks=3,
                                                                     stis_window=2))}


@pytest.mark.parametrize("case", ["gqa2_g2", "g4_sinks", "odd_block_dim24_sinks", "g8_b2_many_windows",
                                  "two_window_tiles"])
@needs_interpreter
def test_serving_kernels_match_eager_at_given_positions(generator, case):
    """``triton_serving_attention``: the selection and gathered forward kernels for queries at given positions
    (two per row, in any order, one of them padding) against ``eager_blossom_attention(positions=...)``; 80
    windows make two window tiles in the selection."""
    batch, heads, groups, seq_len, head_dim, kwargs = SERVING_CASES[case]
    pattern = BlossomPattern(compression_window=2 * kwargs["block_size"], **kwargs)
    q, k, v, ck, gate, lengths = _inputs(generator, batch, heads, groups, seq_len, head_dim, pattern)
    q, k, v, ck, gate = (x.detach() for x in (q, k, v, ck, gate))
    lengths[-1] = max(1, seq_len // 2)
    positions = torch.stack([lengths - 1, torch.randint(0, seq_len, (batch,), generator=generator)], 1)
    positions[-1, 1] = seq_len - 1  # padding position (length L/2): exact zeros
    rows = torch.arange(batch)[:, None]
    sub = lambda x: x[rows, :, positions].transpose(1, 2)  # noqa: E731  [B, H, Q, *]
    scaling = head_dim**-0.5
    got = triton_serving_attention(sub(q), k, v, ck, sub(gate), lengths, positions, scaling=scaling, pattern=pattern)
    want = eager_blossom_attention(sub(q), k, v, ck, sub(gate), lengths, scaling=scaling, pattern=pattern,
                                   positions=positions)
    assert got.shape == (batch, heads, 2, head_dim)
    _close(got, want, "serving output")
    assert bool((got[-1, :, 1] == 0).all()), "a padding position must give exact zeros"


@pytest.mark.parametrize("seq_len", [1, 9, 40])
@needs_interpreter
def test_serving_path_matches_eager(generator, seq_len, monkeypatch):
    """The serving path (last layer at the last real position only, ``query_positions``) on triton against
    eager on the same weights: scores and top-k; the triton backend really runs its serving kernels there."""
    from blossom_hf.models.blossomrec import attention_triton
    from blossom_hf.models.blossomrec.registry import get_attention_backend

    assert get_attention_backend("triton").query_subset
    config = tiny_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_history_length=40,
                         ltis_block_size=4, ltis_compression_window=8, ltis_num_selected_blocks=2, stis_window=3,
                         stis_num_sinks=1, attn_implementation="eager")
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    eager = BlossomRecModel(config).eval()
    fused = copy.deepcopy(eager)
    fused.set_attn_implementation("triton")
    ids = random_histories(4, seq_len, config.vocab_size, generator, padding="left")
    calls = []
    serving = attention_triton.triton_serving_attention

    def counting(query, *args, **kwargs):
        calls.append(tuple(query.shape))
        return serving(query, *args, **kwargs)

    monkeypatch.setattr(attention_triton, "triton_serving_attention", counting)
    with torch.no_grad():
        want = eager(ids, output_last_hidden_state=False).logits
        got = fused(ids, output_last_hidden_state=False).logits
        every_position = fused(ids).logits
    assert calls == [(4, config.num_attention_heads, 1, config.head_dim)], "the serving kernels were not used"
    torch.testing.assert_close(got[:, 1:], want[:, 1:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[:, 1:], every_position[:, 1:], rtol=1e-4, atol=1e-4)
    k = 5
    top_got, top_want = got.topk(k, dim=-1), want.topk(k, dim=-1)
    # same items, except where two scores are a near-tie
    same = (top_got.indices == top_want.indices).all(-1)
    gaps = (top_want.values[:, :-1] - top_want.values[:, 1:]).min(-1).values
    assert bool((same | (gaps < 1e-4)).all()), (top_got.indices, top_want.indices)


@needs_interpreter
def test_serving_path_under_autograd_uses_the_differentiable_gathered_path(generator, caplog):
    """``query_positions`` with autograd on (not the serving path's use, but allowed): the queried positions go
    through ``sdpa_blossom_attention(positions=)`` (logged once), scores equal eager's, gradients flow."""
    import logging

    from blossom_hf.models.blossomrec import attention_triton

    config = tiny_config(hidden_size=64, max_history_length=24, attn_implementation="eager")
    eager = BlossomRecModel(config)
    fused = copy.deepcopy(eager)
    fused.set_attn_implementation("triton")
    ids = random_histories(3, 24, config.vocab_size, generator, min_len=6)
    attention_triton._SERVING_NOTED.clear()
    with caplog.at_level(logging.INFO, logger=attention_triton.__name__):
        got = fused(ids, output_last_hidden_state=False).logits
        fused(ids, output_last_hidden_state=False)
    want = eager(ids, output_last_hidden_state=False).logits
    torch.testing.assert_close(got[:, 1:], want[:, 1:], rtol=1e-4, atol=1e-4)
    got[:, 1:].sum().backward()
    assert fused.layers[-1].self_attn.q_proj.weight.grad is not None
    notes = [r for r in caplog.records if "differentiable gathered key sets" in r.getMessage()]
    assert len(notes) == 1, "logged once"


@pytest.mark.parametrize("strategy", STRATEGIES)
@needs_interpreter
def test_outputs_and_gradients_keep_the_projection_layout(generator, strategy):
    """With q, k, v laid out as the projections give them (``[B, L, heads, D]`` memory, transposed views), the
    output and dq, dk, dv come back with the same strides (no transpose copies after the kernels) and match eager;
    a non-dense input (a strided slice) is copied to a dense layout first and still matches."""
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    batch, heads, groups, seq_len, head_dim = 2, 4, 2, 16, 16

    def rnd(*shape):
        return torch.randn(*shape, generator=generator)

    q = rnd(batch, seq_len, heads, head_dim).transpose(1, 2).requires_grad_()
    k = rnd(batch, seq_len, groups, head_dim).transpose(1, 2).requires_grad_()
    v_wide = rnd(batch, seq_len, groups, 2 * head_dim)
    v = v_wide[..., :head_dim].transpose(1, 2).requires_grad_()  # not dense: a copy inside
    ck = rnd(batch, groups, seq_len // 4, head_dim).requires_grad_()
    gate = torch.rand(batch, seq_len, heads, 2, generator=generator).transpose(1, 2).requires_grad_()
    lengths = torch.tensor([seq_len, 11])
    scaling = head_dim**-0.5
    selected, _ = triton_ltis_select(q, ck, lengths, scaling=scaling, pattern=pattern)
    out = triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=scaling, pattern=pattern, strategy=strategy)
    assert out.stride() == q.stride()
    refs = [x.detach().clone().requires_grad_() for x in (q, k, v, ck, gate)]
    ref = eager_blossom_attention(*refs, lengths, scaling=scaling, pattern=pattern, selected_blocks=selected)
    _close(out, ref, "output")
    grad_out = rnd(*out.shape)
    grads = torch.autograd.grad(out, [q, k, v, ck, gate], grad_out)
    assert grads[0].stride() == q.stride() and grads[1].stride() == k.stride()
    for name, got, want in zip(("query", "key", "value", "compressed_key", "gate"), grads,
                               torch.autograd.grad(ref, refs, grad_out), strict=True):
        _close(got, want, f"d {name}")


@pytest.mark.parametrize("strategy", STRATEGIES)
@needs_interpreter
def test_no_buffer_relies_on_a_zero_fill(generator, strategy, monkeypatch):
    """Every buffer the backend allocates uninitialised (torch.empty / empty_like: outputs, d gate, dp, ...) is
    fully written by the kernels before it is read or returned: with those allocations filled with NaN (floats) or
    -7 (integers), the output and the gradients still match eager, padded rows and tiles past a row's length
    included (a row of length 1, and rows ending mid-tile)."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(x):
        return x.fill_(float("nan") if x.is_floating_point() else -7)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    _compare(generator, 3, 4, 2, 33, 16, pattern, lengths=[33, 1, 5], strategy=strategy)
