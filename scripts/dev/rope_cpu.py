#!/usr/bin/env python
"""RoPE's PyTorch form on the CPU: ``apply_rotary_reference`` (evaluated per half) against the textbook
``x cos + rotate_half(x) sin``, on the projections' layout, interleaved rounds, median ms per call; checks that
both give the same bits.

Run: ``python scripts/dev/rope_cpu.py [--threads 2] [--batch 64] [--length 1024] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from blossom_hf.models.blossomrec.layers_blossomrec import apply_rotary_reference, rotate_half


def textbook(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="calls per round and variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.length, args.heads, args.head_dim).transpose(1, 2)  # [B, H, L, D] view
    inv = 1.0 / (10000.0 ** (torch.arange(0, args.head_dim, 2).float() / args.head_dim))
    emb = torch.cat([torch.outer(torch.arange(args.length).float(), inv)] * 2, dim=-1)
    cos, sin = emb.cos(), emb.sin()
    assert torch.equal(apply_rotary_reference(x, cos, sin), textbook(x, cos, sin)), "not the same bits"
    times: dict[str, list[float]] = {"per_half": [], "textbook": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, fn in (("per_half", apply_rotary_reference), ("textbook", textbook)):
                started = time.perf_counter()
                for _ in range(args.calls):
                    fn(x, cos, sin)
                times[name].append((time.perf_counter() - started) / args.calls * 1000)
    result = {"args": vars(args), "median_ms": {k: round(statistics.median(v), 2) for k, v in times.items()},
              "rounds_ms": {k: [round(t, 2) for t in v] for k, v in times.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
