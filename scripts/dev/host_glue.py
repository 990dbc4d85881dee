"""Host cost of the triton backend's Python glue: one fwd+bwd of ``_BlossomTritonFunction`` with every kernel launch
replaced by a no-op, on CPU tensors (no GPU, no interpreter). What it times: ``plan()``, the launchers' allocations
and argument dicts, the autograd node; not Triton's own launch cost (argument binding, ~40 us a launch on the H200
host, docs/triton_notes.md v5) nor the layer's other ops. Rows move by ~20% between runs on a shared machine: compare
two trees in alternation, several runs each.

    python scripts/dev/host_glue.py [--lengths 200 1024] [--rounds 7] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import types

import torch


class _NoLaunch:
    """Stands for a ``@triton.jit`` kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_kernels() -> None:
    from blossom_hf.models.blossomrec import attention_triton as at

    real = at._kernels()
    stubs = tuple(types.SimpleNamespace(**{n: _NoLaunch() for n in dir(m) if n.endswith("_kernel")}) for m in real)
    at._KERNELS[:] = [at._KERNELS[0], stubs]


def _step(seq_len: int, batch: int = 4):
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.attention_triton import _BlossomTritonFunction

    pattern = BlossomPattern()

    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, dtype=dtype).requires_grad_()

    q, k, v = rnd(batch, 8, seq_len, 16), rnd(batch, 2, seq_len, 16), rnd(batch, 2, seq_len, 16)
    ck = rnd(batch, 2, seq_len // 16, 16)
    gate = torch.rand(batch, 8, seq_len, 2).requires_grad_()
    lengths = torch.full((batch,), seq_len)
    grad = torch.randn(batch, 8, seq_len, 16, dtype=torch.bfloat16)

    def step():
        _BlossomTritonFunction.apply(q, k, v, ck, gate, lengths, 0.25, pattern, None, "auto", None).backward(grad)

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[200, 1024])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200, help="fwd+bwd calls per round")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    args = parser.parse_args()
    _stub_kernels()
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
    from blossom_hf.models.blossomrec.attention_triton import plan

    for seq_len in args.lengths:
        step = _step(seq_len)
        for _ in range(20):
            step()
        per_call = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                step()
            per_call.append(1e6 * (time.perf_counter() - t0) / args.calls)
        per_call.sort()
        print(f"L={seq_len} ({plan(8, 2, seq_len, 16, BlossomPattern(), 2).strategy}): min {per_call[0]:.1f} "
              f"median {per_call[len(per_call) // 2]:.1f} us per fwd+bwd (glue and autograd, no kernels)")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(100):
                step()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
