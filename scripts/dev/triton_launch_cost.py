#!/usr/bin/env python
"""Host time of one Triton launch against the number of its arguments (CUDA; the question behind
docs/triton_notes.md "v5, next" item 1: would packing a kernel's strides into one small tensor cut its launch cost?).

Four kernels that copy 1024 floats, launched ``--calls`` times in a loop on tiny inputs (so the loop is host-bound),
timed by ``time.perf_counter`` around the loop with one synchronize after it:

* ``few``: 2 pointers, a length and a constexpr block;
* ``strides``: the same and 24 integer arguments (the strides of six 4-d tensors, as the backend's kernels take);
* ``strides-nospec``: as ``strides``, the 24 marked ``do_not_specialize`` (no divisibility-by-16 check per value);
* ``packed``: as ``few``, and one int32 tensor holding the 24 values (read inside the kernel).

Also one ``torch.add`` of the same size for scale. Prints a table and writes JSON.

Run: ``python scripts/dev/triton_launch_cost.py --out OUT/launch_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import triton
import triton.language as tl

NAMES = [f"s{i}" for i in range(24)]


@triton.jit
def few_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


@triton.jit
def strides_kernel(X, Y, n, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17, s18,
                   s19, s20, s21, s22, s23, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    extra = (s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9 + s10 + s11 + s12 + s13 + s14 + s15 + s16 + s17 + s18
             + s19 + s20 + s21 + s22 + s23) * 0
    tl.store(Y + offs, tl.load(X + offs + extra, mask=offs < n), mask=offs < n)


strides_nospec_kernel = triton.jit(strides_kernel.fn, do_not_specialize=NAMES)


@triton.jit
def packed_kernel(X, Y, n, P, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    extra = tl.sum(tl.load(P + tl.arange(0, 32), mask=tl.arange(0, 32) < 24, other=0)) * 0
    tl.store(Y + offs, tl.load(X + offs + extra, mask=offs < n), mask=offs < n)


def per_call_us(fn, calls: int, rounds: int) -> dict:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return {"us": statistics.median(times), "us_min": min(times), "us_max": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    x = torch.randn(1024, device="cuda")
    y = torch.empty_like(x)
    strides = [64 * (i + 1) for i in range(24)]  # multiples of 16, as most real strides are
    packed = torch.tensor(strides, dtype=torch.int32, device="cuda")
    grid = (1,)
    cases = {
        "torch.add": lambda: torch.add(x, 1.0, out=y),
        "few (4 args)": lambda: few_kernel[grid](x, y, 1024, BLOCK=1024),
        "strides (28 args)": lambda: strides_kernel[grid](x, y, 1024, *strides, BLOCK=1024),
        "strides, do_not_specialize (28 args)": lambda: strides_nospec_kernel[grid](x, y, 1024, *strides, BLOCK=1024),
        "packed (5 args, 24 values in a tensor)": lambda: packed_kernel[grid](x, y, 1024, packed, BLOCK=1024),
    }
    rows = []
    for name, fn in cases.items():
        row = {"case": name, **per_call_us(fn, args.calls, args.rounds)}
        rows.append(row)
        print(f"{name:42s} {row['us']:7.2f} us per call (min {row['us_min']:.2f}, max {row['us_max']:.2f})", flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "calls": args.calls, "rounds": args.rounds}
    with open(args.out, "w") as stream:
        json.dump({**meta, "rows": rows}, stream, indent=1)


if __name__ == "__main__":
    main()
