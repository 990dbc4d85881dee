"""The compiled CPU kernel (blossom_hf/models/blossomrec/cpu_kernel.py) against the eager reference, and its build.

Tolerances: rtol 1e-5 / atol 1e-5 on the outputs (fp32 both; different summation orders, and the kernel's own
``exp``, within ~2 ulp of libm's). Inference only: the kernel has no backward (a gradient takes the sdpa training
layout, tests/test_attention_parity.py). Fresh random inputs per run (the ``generator`` fixture's seed is printed).
The tests that run the kernel are skipped where no C compiler is found; the fallback tests run everywhere.
"""

from __future__ import annotations

import copy
import logging
import os
import stat

import pytest
import torch
from conftest import random_histories, tiny_config

import blossom_hf.models.blossomrec.cpu_kernel as cpu_kernel
from blossom_hf import BlossomRecModel
from blossom_hf.models.blossomrec.attention_eager import eager_blossom_attention
from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern, ltis_select
from blossom_hf.models.blossomrec.attention_sdpa import sdpa_blossom_attention

needs_compiler = pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C compiler: the CPU kernel cannot be "
                                    "built here (the sdpa backend runs its PyTorch layouts; the fallback tests run)")


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "CPU_KERNEL", True)


@pytest.fixture
def two_threads():
    """Two threads for the kernel (the test workers run with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _case(generator, batch, heads, groups, seq_len, dim, block, n, window, sinks):
    pattern = BlossomPattern(block_size=block, compression_window=2 * block, num_selected_blocks=n,
                             stis_window=window, stis_num_sinks=sinks)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    lengths[0], lengths[-1] = seq_len, 1  # a full row and a one-item row
    inputs = (rand(batch, heads, seq_len, dim), rand(batch, groups, seq_len, dim), rand(batch, groups, seq_len, dim),
              rand(batch, groups, seq_len // block, dim), torch.rand(batch, heads, seq_len, 2, generator=generator))
    return pattern, inputs, lengths


def _take(x, positions):
    return torch.gather(x, 2, positions[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))


# (B, H, G, L, D, b, n, W, S): GQA g in {1, 2, 4, 8}; L from 1 to past several selections; odd head dims and blocks;
# sinks; lengths that are not multiples of b
SHAPES = [
    (2, 4, 2, 1, 8, 4, 2, 3, 0),
    (3, 4, 1, 2, 8, 4, 2, 3, 1),
    (3, 8, 8, 13, 16, 4, 2, 3, 2),
    (3, 8, 2, 45, 16, 4, 3, 5, 1),
    (2, 8, 1, 130, 12, 16, 4, 8, 0),
    (2, 6, 3, 97, 20, 10, 5, 7, 3),
    (2, 8, 2, 333, 16, 16, 4, 8, 0),
]


@needs_compiler
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}G{}L{}D{}b{}n{}W{}S{}".format(*s))
@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
def test_kernel_matches_eager(generator, monkeypatch, request, shape, threads):
    """Every position and query subsets (the serving path's last real position and a middle one: logits from K's rows;
    20 random real positions per row: from the transposed K tiles) against eager; padded queries come out as
    zeros."""
    if threads == 2:
        monkeypatch.setitem(cpu_kernel.SINGLE_THREAD_QUERIES, "openmp", 0)
        monkeypatch.setitem(cpu_kernel.SINGLE_THREAD_QUERIES, "threads", 0)
        request.getfixturevalue("two_threads")
    pattern, (q, k, v, ck, gate), lengths = _case(generator, *shape)
    scaling = q.shape[-1] ** -0.5
    want = eager_blossom_attention(q, k, v, ck, gate, lengths, scaling=scaling, pattern=pattern)
    assert cpu_kernel.kernel_available(q, k, pattern)
    positions = torch.stack([lengths - 1, lengths // 2], dim=1)
    many = (torch.rand(len(lengths), cpu_kernel.TILED_QUERIES + 4, generator=generator) * lengths[:, None]).long()
    with torch.inference_mode():
        got = sdpa_blossom_attention(q, k, v, ck, gate, lengths, scaling=scaling, pattern=pattern)
        got_sub = sdpa_blossom_attention(_take(q, positions), k, v, ck, _take(gate, positions), lengths,
                                         scaling=scaling, pattern=pattern, positions=positions)
        got_many = sdpa_blossom_attention(_take(q, many), k, v, ck, _take(gate, many), lengths, scaling=scaling,
                                          pattern=pattern, positions=many)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_sub, _take(want, positions), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_many, _take(want, many), rtol=1e-5, atol=1e-5)
    padded = torch.arange(q.shape[2])[None, :] >= lengths[:, None]
    assert bool((got.transpose(1, 2)[padded] == 0).all())


@needs_compiler
def test_python_thread_shares_match_one_call(generator, monkeypatch, two_threads):
    """The thread-pool path (builds without OpenMP) gives the same numbers as the OpenMP path."""
    pattern, (q, k, v, ck, gate), lengths = _case(generator, 3, 8, 2, 200, 16, 16, 4, 8, 1)
    monkeypatch.setitem(cpu_kernel.SINGLE_THREAD_QUERIES, "threads", 0)
    with torch.inference_mode():
        first = cpu_kernel.cpu_kernel_attention(q, k, v, ck, gate, lengths, 0.25, pattern)
        key = (16, 16, 4)
        function, _ = cpu_kernel._LIBRARIES[key]
        monkeypatch.setitem(cpu_kernel._LIBRARIES, key, (function, False))
        second = cpu_kernel.cpu_kernel_attention(q, k, v, ck, gate, lengths, 0.25, pattern)
    assert torch.equal(first, second)


@needs_compiler
def test_given_selection_is_used(generator):
    """``selected_blocks``: the kernel attends the given blocks (slots in any order, empty slots), as eager does."""
    pattern, (q, k, v, ck, gate), lengths = _case(generator, 2, 8, 2, 90, 16, 8, 3, 4, 0)
    selected, _ = ltis_select(q, ck, lengths, 0.25, pattern, with_probs=False)
    selected = selected.flip(-1).clone()
    selected[..., 0] = torch.where(torch.rand(selected.shape[:-1], generator=generator) < 0.3, -1, selected[..., 0])
    want = eager_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.25, pattern=pattern, selected_blocks=selected)
    with torch.inference_mode():
        got = sdpa_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.25, pattern=pattern,
                                     selected_blocks=selected)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_ties_go_to_the_more_recent_window(generator):
    """Equal selection scores (identical compressed keys) rank the larger window first, as the eager reference."""
    pattern, (q, k, v, ck, gate), lengths = _case(generator, 2, 4, 2, 64, 8, 4, 2, 3, 0)
    ck = ck[:, :, :1].expand_as(ck).contiguous()  # every window scores the same
    want = eager_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
    with torch.inference_mode():
        got = sdpa_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("seq_len", [9, 40])
def test_model_forward_and_serving_path_match_eager(generator, seq_len):
    """Through the model (bf16 autocast included): logits of every position and of the serving path's last one."""
    config = tiny_config(max_history_length=seq_len, attn_implementation="eager", stis_num_sinks=1)
    eager = BlossomRecModel(config).eval()
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    ids = random_histories(4, seq_len, config.vocab_size, generator, padding="left")
    with torch.no_grad():
        want = eager(ids).logits
        torch.testing.assert_close(sdpa(ids).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sdpa(ids, output_last_hidden_state=False).logits, want, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sdpa(ids).logits
            reference = eager(ids).logits
    torch.testing.assert_close(low.float(), reference.float(), rtol=2e-2, atol=2e-2)


@needs_compiler
@pytest.mark.parametrize("shape", [(2, 8, 37, 16), (3, 4, 1, 8), (2, 2, 100, 12)], ids=str)
def test_rotary_gives_the_same_bits(generator, shape, two_threads):
    """RoPE in one compiled pass: bit-identical to the PyTorch ops (every product and sum rounded on its own), for
    every-position tables ``[T, D]`` and the serving path's ``[B, 1, T, D]``; the PyTorch ops where a gradient is
    needed or the dtype is not fp32."""
    from blossom_hf.models.blossomrec.layers_blossomrec import apply_rotary, apply_rotary_reference

    batch, heads, length, dim = shape
    x = torch.randn(batch, length, heads, dim, generator=generator).transpose(1, 2)  # the projections' layout
    for tables in ((length, dim), (batch, 1, length, dim)):
        cos, sin = torch.randn(*tables, generator=generator), torch.randn(*tables, generator=generator)
        with torch.inference_mode():
            got = cpu_kernel.rotary(x, cos, sin)
            assert got is not None
            assert torch.equal(got, apply_rotary_reference(x, cos, sin))
            assert torch.equal(apply_rotary(x, cos, sin), got)
    leaf = x.clone().requires_grad_()
    assert cpu_kernel.rotary(leaf, cos, sin) is None
    assert cpu_kernel.rotary(x.bfloat16(), cos, sin) is None


@needs_compiler
@pytest.mark.parametrize("block,window,seq_len", [(4, 8, 37), (16, 32, 200), (10, 30, 50), (4, 4, 9)])
def test_compressor_windows_give_the_same_bits(generator, block, window, seq_len):
    """The compressor's windows + P in one compiled pass: bit-identical to ltis_window_keys + P (padded keys and
    positions before 0 as zero keys)."""
    from blossom_hf.models.blossomrec.attention_patterns import ltis_window_keys

    batch, groups, dim = 3, 2, 8
    key = torch.randn(batch, seq_len, groups, dim, generator=generator).transpose(1, 2)
    position = torch.randn(groups, window, dim, generator=generator)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    pattern = BlossomPattern(block_size=block, compression_window=window)
    with torch.inference_mode():
        got = cpu_kernel.compressor_windows(key, lengths, position, block, window)
    want = (ltis_window_keys(key, lengths, pattern) + position[None, :, None]).flatten(-2)
    assert got is not None and torch.equal(got, want)
    assert cpu_kernel.compressor_windows(key, lengths, position.requires_grad_(), block, window) is None


# ---------------------------------------------------------------------------------------------------------------
# build, cache and fallback
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty cache folder and no loaded libraries (restored afterwards)."""
    monkeypatch.setenv("BLOSSOM_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernel, "_LIBRARIES", {})
    monkeypatch.setattr(cpu_kernel, "_NOTED", set())
    return tmp_path / "cache" / "cpu_kernel"


@needs_compiler
def test_build_is_cached_and_leaves_no_temporary_file(fresh_build):
    assert cpu_kernel.kernel_status(8, 4, 2) is None
    built = sorted(p.name for p in fresh_build.iterdir())
    assert len(built) == 1 and built[0].startswith("blossom_cpu_d8_b4_g2_") and built[0].endswith(".so")
    cpu_kernel._LIBRARIES.clear()  # a new process: loads the cached library, builds nothing
    assert cpu_kernel.kernel_status(8, 4, 2) is None
    assert sorted(p.name for p in fresh_build.iterdir()) == built


@needs_compiler
def test_unwritable_cache_folder_builds_in_the_temporary_folder(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # the cache folder would have to be created below a file: impossible, even for root
    monkeypatch.setenv("BLOSSOM_HF_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(cpu_kernel.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert cpu_kernel.kernel_status(8, 4, 2) is None
    assert len(list((tmp_path / "tmp").rglob("blossom_cpu_d8_b4_g2_*.so"))) == 1


@needs_compiler
def test_build_without_openmp_runs_and_says_so(generator, fresh_build, monkeypatch, caplog):
    """Where torch's OpenMP runtime is not found, the kernel is built without OpenMP (thread-pool path), the log says
    so once, and the numbers are the same."""
    monkeypatch.setattr(cpu_kernel, "_openmp_runtime", lambda: None)
    with caplog.at_level(logging.INFO, logger=cpu_kernel.__name__):
        assert cpu_kernel.kernel_status(8, 4, 2) is None
    assert cpu_kernel._LIBRARIES[(8, 4, 2)][1] is False
    assert any("runs without OpenMP" in r.getMessage() for r in caplog.records)
    pattern, (q, k, v, ck, gate), lengths = _case(generator, 2, 4, 2, 40, 8, 4, 2, 3, 0)
    with torch.inference_mode():
        got = sdpa_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
    want = eager_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _fake_compiler(folder, body):
    script = folder / "fake-cc"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_no_compiler_falls_back_to_pytorch_layouts_and_says_why(generator, fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_build.parent / "does-not-exist"))
    pattern, (q, k, v, ck, gate), lengths = _case(generator, 2, 4, 2, 40, 8, 4, 2, 3, 0)
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__), torch.inference_mode():
        assert not cpu_kernel.kernel_available(q, k, pattern)
        got = sdpa_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
        sdpa_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
    notes = [r.getMessage() for r in caplog.records if "CPU kernel does not run" in r.getMessage()]
    assert len(notes) == 1 and "no C compiler found" in notes[0] and "PyTorch layouts" in notes[0]
    want = eager_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.3, pattern=pattern)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_failed_or_interrupted_build_leaves_nothing_behind(fresh_build, monkeypatch):
    """A compiler that writes half an output and fails: no library, no temporary file, a reason naming it."""
    tools = fresh_build.parent / "tools"
    tools.mkdir(parents=True)
    # writes a partial file at the -o target, then fails
    body = 'while [ "$#" -gt 0 ]; do if [ "$1" = "-o" ]; then echo partial > "$2"; fi; shift; done\n' \
           'echo "error: out of disk space" >&2\nexit 1\n'
    monkeypatch.setenv("CC", _fake_compiler(tools, body))
    reason = cpu_kernel.kernel_status(8, 4, 2)
    assert reason is not None and "fake-cc failed" in reason and "out of disk space" in reason
    leftovers = [p for p in fresh_build.rglob("*") if p.is_file()] if fresh_build.exists() else []
    assert leftovers == []


def test_switched_off_and_out_of_range_shapes_say_why(monkeypatch):
    assert "ltis_num_selected_blocks = 65 > 64" in cpu_kernel.kernel_status(8, 4, 2, num_selected=65)
    monkeypatch.setattr(cpu_kernel, "CPU_KERNEL", False)
    assert "switched off" in cpu_kernel.kernel_status(8, 4, 2)
    q, k = torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 3, 8)
    assert not cpu_kernel.kernel_available(q, k, BlossomPattern())


def test_not_used_under_tracing_or_off_cpu(monkeypatch):
    q, k = torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 3, 8)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not cpu_kernel.kernel_available(q, k, BlossomPattern())
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert not cpu_kernel.kernel_available(q.to("meta"), k.to("meta"), BlossomPattern())


def test_environment_switch_is_read(monkeypatch):
    for value, expected in (("0", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv("BLOSSOM_HF_CPU_KERNEL", value)
        assert cpu_kernel._switch_from_environment() is expected
    monkeypatch.delenv("BLOSSOM_HF_CPU_KERNEL")
    assert cpu_kernel._switch_from_environment() is True
    assert os.environ.get("BLOSSOM_HF_CPU_KERNEL") is None
