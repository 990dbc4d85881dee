"""The sdpa backend's inference layouts (dense; beyond the threshold blocked for every position and gathered for the
serving path's query subset; and the compiled CPU kernel, tests/test_cpu_kernel.py has its own) against the eager
reference, on fresh random inputs (fp32). The CPU kernel is off in this file unless a test asks for it (layout
"kernel"), so that the PyTorch layouts stay tested on the CPU.

Tolerances: outputs rtol 1e-5 / atol 1e-5 (different summation orders of the same fp32 numbers). The inference
layouts run without a gradient only (a gradient takes the training layout, whose forward and backward
tests/test_attention_parity.py checks), so there is no backward to compare here; the test that the training
layout is taken whenever a gradient is needed is below.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import random_histories, tiny_config

import blossom_hf.models.blossomrec.attention_patterns as attention_patterns
import blossom_hf.models.blossomrec.attention_sdpa as sdpa_module
import blossom_hf.models.blossomrec.cpu_kernel as cpu_kernel
import blossom_hf.models.blossomrec.sdpa_blocked as sdpa_blocked
import blossom_hf.models.blossomrec.sdpa_inference as sdpa_inference
from blossom_hf import BlossomRecModel
from blossom_hf.models.blossomrec.attention_eager import eager_blossom_attention
from blossom_hf.models.blossomrec.attention_patterns import (
    BlossomPattern,
    every_window_selected,
    ltis_every_eligible,
    ltis_select,
    ltis_top_windows,
)

# DENSE_MAX_LENGTH["cpu"] that forces each PyTorch layout ("sparse": blocked for every position, gathered for query
# subsets; "dense-chunks": the dense layout in causal query chunks of 4 rows, as CUDA runs it with 128);
# "kernel": the compiled CPU kernel instead (skipped where no C compiler is found)
LAYOUTS = {"dense": 10**9, "dense-chunks": 10**9, "sparse": 0, "kernel": None}


@pytest.fixture(autouse=True)
def pytorch_layouts(monkeypatch):
    """The PyTorch layouts unless a test selects the CPU kernel."""
    monkeypatch.setattr(cpu_kernel, "CPU_KERNEL", False)


def use_layout(monkeypatch, name):
    if name == "kernel":
        if cpu_kernel._compiler() is None:
            pytest.skip("no C compiler: the CPU kernel cannot be built (the sdpa backend uses the PyTorch layouts)")
        monkeypatch.setattr(cpu_kernel, "CPU_KERNEL", True)
    else:
        monkeypatch.setattr(cpu_kernel, "CPU_KERNEL", False)
        monkeypatch.setitem(sdpa_module.DENSE_MAX_LENGTH, "cpu", LAYOUTS[name])
        monkeypatch.setitem(sdpa_inference.DENSE_QUERY_CHUNK_ROWS, "cpu", 4 if name.startswith("dense-") else 0)


@pytest.fixture
def layout(request, monkeypatch):
    use_layout(monkeypatch, request.param)
    return request.param


def _inputs(generator, batch, heads, groups, seq_len, dim, block):
    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    lengths[0], lengths[-1] = seq_len, 1  # a full row and a one-item row
    return (rand(batch, heads, seq_len, dim), rand(batch, groups, seq_len, dim), rand(batch, groups, seq_len, dim),
            rand(batch, groups, seq_len // block, dim), torch.rand(batch, heads, seq_len, 2, generator=generator),
            lengths)


def _take(x, positions):
    """``x [B, H, L, E]`` at ``positions [B, Q]`` -> ``[B, H, Q, E]``."""
    return torch.gather(x, 2, positions[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("groups", [8, 4, 2, 1])  # g = H / G in {1, 2, 4, 8}
@pytest.mark.parametrize("seq_len,sinks", [(1, 0), (3, 2), (4, 0), (5, 2), (12, 0), (13, 2), (45, 0), (130, 2)])
def test_inference_layouts_match_eager(generator, layout, groups, seq_len, sinks):
    """Every position and a query subset (the last real one, and a random one per row), padded rows, short
    histories (L = 1 .. b+1), every window selected (L <= (n+1) b = 16) and a real top-n (L = 45, 130)."""
    block = 4
    pattern = BlossomPattern(block_size=block, compression_window=8, num_selected_blocks=3, stis_window=5,
                             stis_num_sinks=sinks)
    query, key, value, compressed, gate, lengths = _inputs(generator, 3, 8, groups, seq_len, 16, block)
    want = eager_blossom_attention(query, key, value, compressed, gate, lengths, scaling=0.25, pattern=pattern)
    with torch.no_grad():
        got = sdpa_module.sdpa_blossom_attention(query, key, value, compressed, gate, lengths, scaling=0.25,
                                                 pattern=pattern)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got[-1, :, 1:] == 0).all(), "padded query rows are exact zeros"
        random_pos = (torch.rand(3, generator=generator) * lengths).long()
        positions = torch.stack([lengths - 1, random_pos], dim=1)  # [B, 2]
        got_sub = sdpa_module.sdpa_blossom_attention(
            _take(query, positions), key, value, compressed, _take(gate, positions), lengths, scaling=0.25,
            pattern=pattern, positions=positions)
    torch.testing.assert_close(got_sub, _take(want, positions), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
def test_inference_layouts_stay_fp32_under_autocast(generator, layout):
    """Under bf16 autocast the inference layouts compute in fp32 (the same numbers as without autocast)."""
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    inputs = _inputs(generator, 2, 4, 2, 30, 8, 4)
    with torch.no_grad():
        want = sdpa_module.sdpa_blossom_attention(*inputs, scaling=0.3, pattern=pattern)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = sdpa_module.sdpa_blossom_attention(*inputs, scaling=0.3, pattern=pattern)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
def test_given_selection_is_used(generator, layout):
    """``selected_blocks`` overrides the top-n in both inference layouts, also where every window would be."""
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    for seq_len in (8, 40):
        query, key, value, compressed, gate, lengths = _inputs(generator, 2, 4, 2, seq_len, 8, 4)
        selected = torch.full((2, 2, seq_len, 2), -1, dtype=torch.long)
        selected[..., 0] = torch.where(torch.arange(seq_len) >= 8, 0, -1)  # block 0 only, once eligible
        kwargs = dict(scaling=0.3, pattern=pattern, selected_blocks=selected)
        want = eager_blossom_attention(query, key, value, compressed, gate, lengths, **kwargs)
        with torch.no_grad():
            got = sdpa_module.sdpa_blossom_attention(query, key, value, compressed, gate, lengths, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile_rows", [1, 12, 40])  # one query block per chunk; 3 blocks; whole histories
@pytest.mark.parametrize("groups,sinks", [(2, 1), (1, 0), (4, 3)])
def test_sparse_layouts_in_many_chunks(generator, monkeypatch, tile_rows, groups, sinks):
    """Small tiles: the blocked layout's chunks of query blocks (one per chunk, several, whole histories of one or
    more rows), the selection in chunks of one block of queries, the gathered layout's one query per chunk; a length
    that is not a multiple of b, far STIS offsets (d > b) and sinks, the selected blocks copied a few rows at a time;
    under inference mode and under no_grad (the reused gather buffers)."""
    monkeypatch.setitem(sdpa_module.DENSE_MAX_LENGTH, "cpu", 0)
    monkeypatch.setitem(sdpa_module.INFERENCE_TILE_ELEMENTS, "cpu", 1)
    monkeypatch.setitem(sdpa_module.BLOCKED_TILE_ROWS, "cpu", tile_rows)
    monkeypatch.setitem(sdpa_module.BLOCKED_COPY_ROWS, "cpu", 5)  # selected blocks copied 5 query rows at a time
    monkeypatch.setitem(sdpa_module.SELECTION_TILE_ELEMENTS, "cpu", 1)
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3,
                             stis_num_sinks=sinks)
    query, key, value, compressed, gate, lengths = _inputs(generator, 3, 4, groups, 39, 8, 4)
    want = eager_blossom_attention(query, key, value, compressed, gate, lengths, scaling=0.3, pattern=pattern)
    positions = torch.stack([lengths - 1, lengths // 2], dim=1)
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            got = sdpa_module.sdpa_blossom_attention(query, key, value, compressed, gate, lengths, scaling=0.3,
                                                     pattern=pattern)
            got_sub = sdpa_module.sdpa_blossom_attention(
                _take(query, positions), key, value, compressed, _take(gate, positions), lengths, scaling=0.3,
                pattern=pattern, positions=positions)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_sub, _take(want, positions), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seq_len", [20, 45, 130])
def test_dense_selection_is_the_top_n_at_real_queries(generator, seq_len):
    """The dense layout's selection (rounds of argmax) against ltis_select, every position and the serving path's
    positions, with real and rounded scores (many exact ties: the larger window wins): at every real query the
    eligible picks are ltis_select's, in its order; the slots ltis_select leaves empty name blocks from the own
    block on (which the layout's causal bias covers)."""
    block = 4
    pattern = BlossomPattern(block_size=block, compression_window=8, num_selected_blocks=3, stis_window=5)
    query, _, _, compressed, _, lengths = _inputs(generator, 3, 8, 2, seq_len, 16, block)
    positions = torch.stack([lengths - 1, (torch.rand(3, generator=generator) * lengths).long()], dim=1)
    for q, ck in ((query, compressed), (query.round(), compressed.round())):
        for pos in (None, positions):
            q_at = q if pos is None else _take(q, pos)
            want, _ = ltis_select(q_at, ck, lengths, 0.5, pattern, positions=pos, with_probs=False)
            got = sdpa_inference._dense_selection(q_at, ck, seq_len, 0.5, pattern, None, pos)
            t = (torch.arange(seq_len)[None].expand(3, -1) if pos is None else pos)[:, None, :, None]  # [B,1,Q,1]
            own = t // block
            real = (t < lengths[:, None, None, None]).expand_as(got)
            assert got.shape == want.shape
            assert torch.equal(torch.where(got < own, got, -1)[real], want[real])
            assert bool((got[real][want[real] < 0] >= own.expand_as(got)[real][want[real] < 0]).all())


def test_gradient_takes_the_training_layout(generator, monkeypatch):
    """With inputs that need a gradient the result is differentiable (training layout), in every setting of the
    inference threshold."""
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=2, stis_window=3)
    inputs = [x.requires_grad_() if x.is_floating_point() else x
              for x in _inputs(generator, 2, 4, 2, 20, 8, 4)]
    for threshold in LAYOUTS.values():
        monkeypatch.setitem(sdpa_module.DENSE_MAX_LENGTH, "cpu", threshold)
        out = sdpa_module.sdpa_blossom_attention(*inputs, scaling=0.3, pattern=pattern)
        grads = torch.autograd.grad(out.sum(), inputs[:5])
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert float(grads[3].abs().sum()) > 0, "the compressed keys get the straight-through gradient"


@pytest.mark.parametrize("seq_len", [1, 4, 12, 13, 16, 17, 30])
def test_every_eligible_selection_is_the_top_n(generator, seq_len):
    """Where every_window_selected holds, ltis_every_eligible is ltis_select's selection (as sets) for any scores;
    the condition is exactly "no query has more than n eligible windows"."""
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=3)
    query = torch.randn(2, 4, seq_len, 8, generator=generator)
    compressed = torch.randn(2, 2, seq_len // 4, 8, generator=generator)
    lengths = torch.tensor([seq_len, max(1, seq_len // 2)])
    selected, _ = ltis_select(query, compressed, lengths, 0.3, pattern)
    most = int((selected >= 0).sum(-1).max()) if seq_len >= 4 else 0
    assert every_window_selected(seq_len, pattern) == ((seq_len - 1) // 4 <= 3)
    if every_window_selected(seq_len, pattern):
        every = ltis_every_eligible(seq_len, pattern).expand(2, 2, -1, -1)
        real = (torch.arange(seq_len) < lengths[:, None])[:, None, :, None]
        got = torch.where(real, every, -1).sort(-1).values
        torch.testing.assert_close(selected.sort(-1).values, got)
    else:
        assert most == 3, "some query has more eligible windows than n"


def test_top_windows_ties_and_ineligible():
    """torch.topk's fast path and the stable-sort fallback agree with the rule: decreasing score, ties to the
    larger w, -1 for missing slots; ties inside the top n and across the n-th place."""
    inf = float("-inf")
    ranked = torch.tensor([
        [0.1, 0.5, 0.3, 0.9, 0.2],  # no tie
        [0.5, 0.5, 0.1, 0.5, 0.0],  # a tie across the n-th place: the larger w win
        [0.7, 0.2, 0.7, 0.1, 0.3],  # a tie inside the top n: larger w first
        [inf, 0.4, inf, inf, inf],  # fewer eligible than n
        [inf, inf, inf, inf, inf],  # none eligible
    ])
    want = torch.tensor([[3, 1, 2], [3, 1, 0], [2, 0, 4], [1, -1, -1], [-1, -1, -1]])
    assert torch.equal(ltis_top_windows(ranked, 3), want)
    assert torch.equal(ltis_top_windows(ranked[:1], 3), want[:1]), "one row alone"
    assert torch.equal(ltis_top_windows(ranked[:, :2], 3)[:, 2], torch.full((5,), -1)), "n > M pads with -1"


@pytest.mark.parametrize("path", ["device default", "sort"])  # CPU: rounds of max for n <= 16; "sort": as on a GPU
@pytest.mark.parametrize("n", [1, 4, 16, 17])  # rounds of max (n <= 16), the stable sort beyond
def test_top_windows_match_the_stable_sort(generator, monkeypatch, n, path):
    """Random scores on a coarse grid (many ties), -inf entries and whole -inf rows: the selection is the stable
    descending sort over w reversed (ties to the larger w), -1 for slots without a finite score."""
    if path == "sort":
        monkeypatch.setattr(attention_patterns, "_max_rounds", lambda ranked, k: False)
    ranked = (torch.randn(64, 40, generator=generator) * 2).round()
    ranked[torch.rand(64, 40, generator=generator) < 0.3] = float("-inf")
    ranked[:3] = float("-inf")
    order = 39 - torch.sort(ranked.flip(-1), dim=-1, descending=True, stable=True).indices[:, :n]
    want = torch.where(torch.isfinite(torch.gather(ranked, -1, order)), order, -1)
    assert torch.equal(ltis_top_windows(ranked, n), want)


@pytest.mark.parametrize("seq_len", [17, 40, 67])
def test_blocked_selection_is_ltis_select(generator, monkeypatch, seq_len):
    """The blocked layout's own selection (windows reversed, the eligibility inside the scores' baddbmm, chunks of
    one block of queries or whole histories) is ltis_select's for every real query, also where scores tie (inputs
    on a coarse grid: exact ties inside and across the n-th place)."""
    pattern = BlossomPattern(block_size=4, compression_window=8, num_selected_blocks=3)
    lengths = torch.tensor([seq_len, seq_len // 2, 1])
    real = (torch.arange(seq_len) < lengths[:, None])[:, None, :, None]
    query = torch.randn(3, 4, seq_len, 8, generator=generator)
    compressed = torch.randn(3, 2, seq_len // 4, 8, generator=generator)
    for tile in (1, 1 << 18):
        monkeypatch.setitem(sdpa_module.SELECTION_TILE_ELEMENTS, "cpu", tile)
        for q, ck in ((query, compressed), (query.round(), compressed.round())):
            want, _ = ltis_select(q, ck, lengths, 0.5, pattern, with_probs=False)
            got = sdpa_blocked._selection_table(q, ck, lengths, 0.5, pattern, None)
            assert torch.equal(torch.where(real, got, -1), want)


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("seq_len", [7, 12, 40])
def test_model_inference_layouts_match_eager(generator, layout, seq_len):
    """Through the model: forward (every position) and the serving path; the compressor skipped where every
    eligible window is selected (seq_len <= (n+1) b = 12) gives the same scores as with it (eager, gradient on)."""
    config = tiny_config(max_history_length=seq_len, attn_implementation="eager", stis_num_sinks=1)
    eager = BlossomRecModel(config).eval()
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    ids = random_histories(4, seq_len, config.vocab_size, generator, padding="left")
    reference = eager(ids).logits  # gradient enabled: the compressor runs
    with torch.no_grad():
        torch.testing.assert_close(eager(ids).logits, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sdpa(ids).logits, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sdpa(ids, output_last_hidden_state=False).logits, reference, rtol=1e-5,
                                   atol=1e-5)


CHECKPOINT = Path(__file__).resolve().parents[1] / "blossom_hf" / "checkpoints" / "blossomrec-ml1m"


def test_bundled_checkpoint_top10_identical_across_backends_and_layouts(monkeypatch):
    """The bundled checkpoint's sample histories and 12 longer ones (40 .. 200 items, i.e. a real top-n): the
    top-10 lists of eager and of both sdpa inference layouts are identical."""
    import json

    samples = json.loads((CHECKPOINT / "sample_scores.json").read_text())["samples"]
    model = BlossomRecModel.from_pretrained(CHECKPOINT, attn_implementation="eager").eval()
    items = model.vocabulary.raw_ids  # the catalogue
    generator = torch.Generator().manual_seed(1234)
    histories = [s["history"] for s in samples]
    for length in (40, 81, 120, 200) * 3:
        picks = torch.randint(0, len(items), (length,), generator=generator).tolist()
        histories.append([items[i] for i in picks])
    lists = {"eager": [r.items for r in model.recommend(histories, k=10)]}
    model.set_attn_implementation("sdpa")
    for name in LAYOUTS:
        if name == "kernel" and cpu_kernel._compiler() is None:
            continue  # no C compiler here
        use_layout(monkeypatch, name)
        lists[name] = [r.items for r in model.recommend(histories, k=10)]
    assert lists["dense"] == lists["eager"]
    assert lists["dense-chunks"] == lists["eager"]
    assert lists["sparse"] == lists["eager"]
    assert lists.get("kernel", lists["eager"]) == lists["eager"]
    assert [r for r in lists["eager"][:len(samples)]] == [s["items"] for s in samples]


def test_sparse_layouts_trace_without_graph_breaks(generator, monkeypatch):
    """``torch.compile(fullgraph=True)`` (dynamo capture) through the blocked and gathered layouts: one chunk, no
    per-thread buffers, no Python-side caches inside the graph; the scores equal the eager ones."""
    from blossom_hf.serving import compile_for_serving

    torch._dynamo.reset()
    monkeypatch.setitem(sdpa_module.DENSE_MAX_LENGTH, "cpu", 0)
    model = BlossomRecModel(tiny_config(max_history_length=24, stis_num_sinks=1)).eval()
    ids = random_histories(3, 24, model.config.vocab_size, generator, padding="left")
    compiled = compile_for_serving(model, backend="eager")  # fullgraph=True raises on a graph break
    with torch.no_grad():
        got = compiled(ids)[:, 1:]
        want = model(input_ids=ids).logits[:, 1:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
