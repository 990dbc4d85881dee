#!/usr/bin/env python
"""The Triton tile strategy's two backward forms side by side on one GPU: ``tile`` (a query-major kernel for dq and
a key-major one for dk, dv) against ``tile-fused`` (one key-major pass, dq and the straight-through dp by atomics),
with full/sdpa (FlashAttention) beside them for the ratio. One BlossomRec layer fwd+bwd in bf16 on the benchmark's
inputs (``blossom_hf.benchmarks.gpu.layer_step``, 262,144 tokens); rows interleaved in ``--rounds`` rounds of
``--steps`` timed steps, the figure is the median of the per-round medians. The two forms are switched through
``triton_launch.TILE_FUSED_BACKWARD_MIN_LEN`` (plan's cache cleared). Prints a table, writes JSON (with the peak
memory of one step per row).

Run: ``python scripts/dev/fused_backward_ab.py --out OUT/fused_backward_ab.json`` (CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics

import torch

import blossom_hf.models.blossomrec.triton_launch as triton_launch
from blossom_hf.benchmarks.gpu import layer_step


@contextlib.contextmanager
def backward_form(fused: bool):
    saved = triton_launch.TILE_FUSED_BACKWARD_MIN_LEN
    triton_launch.TILE_FUSED_BACKWARD_MIN_LEN = 0 if fused else 10**9
    triton_launch.plan.cache_clear()
    try:
        yield
    finally:
        triton_launch.TILE_FUSED_BACKWARD_MIN_LEN = saved
        triton_launch.plan.cache_clear()


def timed(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(step, clear) -> float:
    clear()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 512, 1024, 1536])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = []
    for length in args.lengths:
        steps = {"blossom tile": layer_step(length, "blossom", "triton", torch.bfloat16),
                 "full/sdpa": layer_step(length, "full", "sdpa", torch.bfloat16)}
        steps["blossom tile-fused"] = steps["blossom tile"]
        rows = ["blossom tile", "blossom tile-fused", "full/sdpa"]
        medians: dict[str, list[float]] = {name: [] for name in rows}
        peaks = {}
        for name in rows:
            step, clear = steps[name]
            with backward_form(name.endswith("fused")):
                for _ in range(3):
                    step()
                peaks[name] = peak_mib(step, clear)
        torch.cuda.synchronize()
        for _ in range(args.rounds):
            for name in rows:
                with backward_form(name.endswith("fused")):
                    medians[name].append(timed(steps[name][0], args.steps))
        for name in rows:
            records.append({"L": length, "B": 262144 // length, "row": name,
                            "ms": round(statistics.median(medians[name]), 3), "peak_mib": round(peaks[name], 1),
                            "round_medians": [round(x, 3) for x in medians[name]]})
        line = "  ".join(f"{name} {statistics.median(medians[name]):6.2f} ({peaks[name]:.0f} MiB)" for name in rows)
        print(f"L={length:5d}: {line}", flush=True)
        del steps
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rounds": args.rounds,
            "steps": args.steps}
    with open(args.out, "w") as stream:
        json.dump({**meta, "rows": records}, stream, indent=1)


if __name__ == "__main__":
    main()
