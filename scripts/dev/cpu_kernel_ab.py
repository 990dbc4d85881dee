#!/usr/bin/env python
"""The sdpa backend's attention call alone on the CPU (no model around it), interleaved in one process:

* ``kernel``: the compiled kernel as the backend runs it (OpenMP on torch's runtime, where built so);
* ``kernel-shares``: the same library called in contiguous shares from a thread pool (the path of builds without
  OpenMP);
* ``pytorch``: the backend's PyTorch layouts (the kernel switched off: dense up to ``DENSE_MAX_LENGTH["cpu"]``,
  blocked beyond);

on random paper-size inputs (8 query / 2 kv heads, head_dim 16, b = 16, n = 4, W = 8), every position of B
histories of L items; median ms of ``--rounds`` rounds of ``--calls`` calls; checks that the three agree (max abs
difference printed). Used for docs/cpu_kernel.md; nothing here is asserted by a test.

Run: ``python scripts/dev/cpu_kernel_ab.py --threads 2 1024:1 4096:1 1024:16 200:64``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from blossom_hf.models.blossomrec import cpu_kernel
from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern
from blossom_hf.models.blossomrec.attention_sdpa import sdpa_blossom_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", help="L:B")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per round and variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pattern = BlossomPattern()
    heads, groups, dim = 8, 2, 16
    function, openmp = cpu_kernel._function(dim, pattern.block_size, heads // groups)
    for cell in args.cells:
        length, batch = (int(x) for x in cell.split(":"))
        torch.manual_seed(0)
        q = torch.randn(batch, length, heads, dim).transpose(1, 2)  # the projections' layout
        k, v = (torch.randn(batch, length, groups, dim).transpose(1, 2) for _ in range(2))
        compressed = torch.randn(batch, groups, length // pattern.block_size, dim)
        gate = torch.rand(batch, length, heads, 2).transpose(1, 2)
        lengths = torch.full((batch,), length)

        inputs = (q, k, v, compressed, gate, lengths)

        def call(variant, inputs=inputs):
            cpu_kernel.CPU_KERNEL = variant != "pytorch"
            cpu_kernel._LIBRARIES[(dim, pattern.block_size, heads // groups)] = (
                function, openmp and variant == "kernel")
            return sdpa_blossom_attention(*inputs, scaling=dim**-0.5, pattern=pattern)

        variants = ("kernel", "kernel-shares", "pytorch")
        times = {name: [] for name in variants}
        with torch.inference_mode():
            outs = {name: call(name) for name in variants}
            for _ in range(args.rounds):
                for name in variants:
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        call(name)
                    times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        cpu_kernel.CPU_KERNEL = True
        cpu_kernel._LIBRARIES[(dim, pattern.block_size, heads // groups)] = (function, openmp)
        diff = max((outs[name] - outs["pytorch"]).abs().max().item() for name in variants)
        print(json.dumps({"length": length, "batch": batch, "threads": args.threads, "openmp_build": openmp,
                          "ms": {name: round(statistics.median(t), 3) for name, t in times.items()},
                          "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
