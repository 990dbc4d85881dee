"""``triton_fast_launch.launch``: which calls launch the kept compiled kernel directly, with which arguments, and
when triton's own ``kernel[grid]`` path is taken. CPU tests drive it with a stand-in kernel (no GPU, no compiler);
the GPU test compares the backend's outputs with the direct launch on and off (bit for bit: the same compiled
kernels either way)."""

from __future__ import annotations

import types

import pytest
import torch

from blossom_hf.models.blossomrec import triton_fast_launch as fl


class _Compiled:
    """Stands for triton's CompiledKernel: ``run`` records what the direct launch passed."""

    def __init__(self, log):
        self.function, self.packed_metadata, self.log = "fn", "meta", log

    @property
    def run(self):
        return lambda *a: self.log.append(("direct", a))


class _Kernel:
    """Stands for a ``@triton.jit`` kernel with parameters ``names``: ``kernel[grid](...)`` logs the call."""

    def __init__(self, names, log):
        self.arg_names, self.log = list(names), log

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)

        return call


@pytest.fixture
def fake_gpu(monkeypatch):
    """A usable direct path on device 0 with stream 7 and no launch hook; an empty cache."""
    runtime = types.SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    monkeypatch.setattr(fl, "_STATE", [True, lambda: 0, lambda device: 7 + device, runtime])
    monkeypatch.setattr(fl, "ENABLED", True)
    fl.clear_cache()
    yield runtime
    fl.clear_cache()


def test_second_call_launches_directly_with_arguments_in_kernel_order(fake_gpu):
    log = []
    kernel = _Kernel(["X", "Y", "N", "BLOCK"], log)
    x, y = torch.zeros(8), torch.zeros(8)
    # keyword order differs from the kernel's, and one argument is positional
    fl.launch(kernel, (3, 2), x, N=64, BLOCK=16, Y=y, num_warps=4)
    fl.launch(kernel, (3, 2), x, N=64, BLOCK=16, Y=y, num_warps=4)
    assert [e[0] for e in log] == ["triton", "direct"]
    _, args = log[1]
    grid_and_handles, kernel_args = args[:9], args[9:]
    assert grid_and_handles == (3, 2, 1, 7, "fn", "meta", None, None, None)
    assert kernel_args[0] is x and kernel_args[1] is y and kernel_args[2:] == (64, 16)


@pytest.mark.parametrize("change", ["int_value", "int_to_one", "dtype", "alignment", "option", "device"])
def test_anything_triton_specializes_on_gets_its_own_entry(fake_gpu, change, monkeypatch):
    log = []
    kernel = _Kernel(["X", "N"], log)
    base = torch.zeros(64)
    fl.launch(kernel, (1,), base, 32, num_warps=4)
    x, n, warps = base, 32, 4
    if change == "int_value":
        n = 48
    elif change == "int_to_one":
        n = 1
    elif change == "dtype":
        x = torch.zeros(64, dtype=torch.float64)
    elif change == "alignment":
        x = base[1:]  # 4 bytes past a 16-byte boundary
    elif change == "option":
        warps = 8
    else:
        monkeypatch.setattr(fl, "_STATE", [True, lambda: 1, lambda device: 7 + device, fake_gpu])
    fl.launch(kernel, (1,), x, n, num_warps=warps)
    assert [e[0] for e in log] == ["triton", "triton"], change
    fl.launch(kernel, (1,), x, n, num_warps=warps)
    assert log[-1][0] == "direct"


def test_new_tensors_of_the_same_kind_reuse_the_entry(fake_gpu):
    log = []
    kernel = _Kernel(["X"], log)
    fl.launch(kernel, (1,), torch.zeros(16))
    other = torch.ones(32)
    fl.launch(kernel, (1,), other)
    assert log[-1][0] == "direct" and log[-1][1][9] is other


def test_defaulted_parameter_and_foreign_objects_always_take_triton(fake_gpu):
    log = []
    kernel = _Kernel(["X", "N", "EXTRA"], log)  # the calls below leave EXTRA to its default
    for _ in range(3):
        fl.launch(kernel, (1,), torch.zeros(4), 5)
    assert [e[0] for e in log] == ["triton"] * 3
    log.clear()
    kernel2 = _Kernel(["X", "OBJ"], log)
    marker = object()  # not a plain value: never part of a kept key (the cache keeps no caller object alive)
    for _ in range(2):
        fl.launch(kernel2, (1,), torch.zeros(4), marker)
    assert [e[0] for e in log] == ["triton"] * 2
    assert not any(marker in key[-1] for key in fl._CACHE)


class _HookChain:
    """Stands for triton 3.6+'s ``knobs.HookChain`` (never None; ``calls`` empty unless a hook was added)."""

    def __init__(self, calls=()):
        self.calls = list(calls)


@pytest.mark.parametrize("hooks", ["none", "empty_chains", "enter_chain", "exit_chain", "enter_function"])
def test_a_launch_hook_takes_triton_and_empty_chains_do_not(fake_gpu, hooks):
    log = []
    kernel = _Kernel(["X"], log)
    fake_gpu.launch_enter_hook, fake_gpu.launch_exit_hook = {
        "none": (None, None),
        "empty_chains": (_HookChain(), _HookChain()),
        "enter_chain": (_HookChain([print]), _HookChain()),
        "exit_chain": (_HookChain(), _HookChain([print])),
        "enter_function": (print, None),
    }[hooks]
    for _ in range(2):
        fl.launch(kernel, (1,), torch.zeros(4))
    direct = hooks in ("none", "empty_chains")
    assert [e[0] for e in log] == (["triton", "direct"] if direct else ["triton", "triton"])


def test_switch_takes_triton(fake_gpu, monkeypatch):
    log = []
    kernel = _Kernel(["X"], log)
    fl.launch(kernel, (1,), torch.zeros(4))
    monkeypatch.setattr(fl, "ENABLED", False)
    fl.launch(kernel, (1,), torch.zeros(4))
    monkeypatch.setattr(fl, "ENABLED", True)
    fl.launch(kernel, (1,), torch.zeros(4))
    assert [e[0] for e in log] == ["triton", "triton", "direct"]


def test_unverified_triton_version_is_refused():
    assert fl._version_ok(types.SimpleNamespace(__version__="3.6.0"))
    assert fl._version_ok(types.SimpleNamespace(__version__="3.9.1"))
    assert not fl._version_ok(types.SimpleNamespace(__version__="3.2.0"))
    assert not fl._version_ok(types.SimpleNamespace(__version__="4.0.0"))
    assert not fl._version_ok(types.SimpleNamespace(__version__="nightly"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seq_len", [200, 1024, 4096])
def test_direct_launch_gives_the_same_bits_on_gpu(seq_len):
    """The backend fwd+bwd (both strategies) with the direct launch on and off: identical outputs and gradients,
    and the direct path was taken."""
    pytest.importorskip("triton")
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention

    fl._STATE.clear()  # the real state (the fixtures above may have replaced it in this process)
    if not fl._state()[0]:
        pytest.skip("the direct launch is not available with this triton")
    pattern = BlossomPattern(block_size=16, compression_window=32, num_selected_blocks=4, stis_window=8)
    gen = torch.Generator(device="cuda").manual_seed(seq_len)
    batch, heads, groups, dim = 2, 8, 2, 16

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()

    inputs = [rnd(batch, heads, seq_len, dim), rnd(batch, groups, seq_len, dim), rnd(batch, groups, seq_len, dim),
              rnd(batch, groups, seq_len // 16, dim), torch.rand(batch, heads, seq_len, 2, generator=gen,
                                                                  device="cuda").requires_grad_()]
    lengths = torch.tensor([seq_len, seq_len // 3], device="cuda")
    grad = torch.randn(batch, heads, seq_len, dim, generator=gen, device="cuda").to(torch.bfloat16)
    results = []
    try:
        for enabled in (False, True, True):  # the second True call is the one that launches directly
            fl.ENABLED = enabled
            before = dict(fl.STATS)
            for x in inputs:
                x.grad = None
            out = triton_blossom_attention(*inputs, lengths, scaling=dim**-0.5, pattern=pattern)
            out.backward(grad)
            torch.cuda.synchronize()
            results.append([out.detach().clone()] + [x.grad.clone() for x in inputs])
            direct = fl.STATS["direct"] - before["direct"]
            if not enabled:
                assert direct == 0
            elif len(results) == 3:
                assert direct > 0
    finally:
        fl.ENABLED = True
    for off, on in zip(results[0], results[2], strict=True):
        assert torch.equal(off, on)
