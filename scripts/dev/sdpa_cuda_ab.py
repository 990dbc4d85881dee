#!/usr/bin/env python
"""GPU inference (serving path, the benchmark's inference rows: B = 65,536 / L) of blossom/sdpa variants against
blossom/triton and full/sdpa, interleaved: at each L and dtype one model per row (the same weights), then
``--rounds`` rounds in which every row is timed for ``--steps`` calls in turn; a row's figure is the median of its
per-round medians (the rows are host-bound and drift over seconds, so rows timed apart cannot be compared).

Rows: ``sdpa`` (the backend as it is), ``sdpa one-call`` (one SDPA call per branch: ``DENSE_QUERY_CHUNK_ROWS["cuda"]
= 0``), ``sdpa 6bb0aba`` (the dense layout of commit 6bb0aba, boolean masks: ``scripts/dev/sdpa_dense_6bb0aba.py``),
``sdpa sort`` (the dense layout's top-n as one stable sort instead of rounds of ``argmax``), ``sdpa gathered``
(every position through the gathered layout), ``sdpa rows=N`` (the dense layout in chunks of N query rows),
``sdpa dense`` / ``sdpa sparse`` (the dense layout, or the blocked/gathered ones, at every L:
``DENSE_MAX_LENGTH["cuda"]``), ``triton`` and ``full/sdpa``. Prints a table and writes JSON.

Run: ``python scripts/dev/sdpa_cuda_ab.py --out OUT/sdpa_cuda_ab.json`` (CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics

import sdpa_dense_6bb0aba
import torch

import blossom_hf.models.blossomrec.attention_sdpa as attention_sdpa
import blossom_hf.models.blossomrec.sdpa_inference as sdpa_inference
from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.benchmarks.gpu import CATALOGUE, TOKENS, _model_inputs, step_times

ROWS = ("sdpa", "sdpa one-call", "sdpa 6bb0aba", "sdpa sort", "sdpa gathered", "sdpa dense", "sdpa sparse",
        "triton", "full/sdpa")


def _sorted_top_blocks(ranked: torch.Tensor, k: int) -> torch.Tensor:
    """``sdpa_inference._top_blocks`` as one stable sort over ``w`` reversed (the layout of 6bb0aba's GPU path)."""
    order = torch.sort(ranked.flip(-1), dim=-1, descending=True, stable=True).indices[..., :k]
    return (ranked.shape[-1] - 1) - order


@contextlib.contextmanager
def variant(name: str):
    rows = sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"]
    layout, blocked = attention_sdpa.dense_inference, attention_sdpa.blocked_inference
    top_blocks = sdpa_inference._top_blocks
    threshold = attention_sdpa.DENSE_MAX_LENGTH["cuda"]
    if name in ("sdpa one-call", "sdpa 6bb0aba") or name.startswith("sdpa rows="):
        attention_sdpa.DENSE_MAX_LENGTH["cuda"] = 10**9
    if name.startswith("sdpa rows="):
        sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"] = int(name.split("=")[1])
    if name in ("sdpa dense", "sdpa sparse"):
        attention_sdpa.DENSE_MAX_LENGTH["cuda"] = 10**9 if name == "sdpa dense" else 0
    if name == "sdpa one-call":
        sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"] = 0
    if name == "sdpa 6bb0aba":
        attention_sdpa.dense_inference = sdpa_dense_6bb0aba.dense_inference
    if name == "sdpa sort":
        sdpa_inference._top_blocks = _sorted_top_blocks
    if name == "sdpa gathered":
        attention_sdpa.DENSE_MAX_LENGTH["cuda"] = 0
        attention_sdpa.blocked_inference = lambda *args: sdpa_inference.gathered_inference(*args, None)
    try:
        yield
    finally:
        sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"] = rows
        sdpa_inference._top_blocks = top_blocks
        attention_sdpa.dense_inference, attention_sdpa.blocked_inference = layout, blocked
        attention_sdpa.DENSE_MAX_LENGTH["cuda"] = threshold


def timed(step, steps: int) -> float:
    return statistics.median(step_times(step, steps))


def gpu_busy(step, steps: int = 3) -> tuple[float, float, list]:
    """(ms of GPU activity, device events, the top kernels as [name, ms]) per call, from torch.profiler: the kernels
    and copies a call issues, summed (one stream), against the wall time of :func:`timed` (a row far above its busy
    time is host-bound)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels: dict[str, float] = {}
    for e in device:
        kernels[e.name[:90]] = kernels.get(e.name[:90], 0.0) + e.time_range.elapsed_us() / 1000 / steps
    top = sorted(kernels.items(), key=lambda item: -item[1])[:10]
    return (sum(e.time_range.elapsed_us() for e in device) / 1000 / steps, len(device) / steps,
            [[name, round(ms, 3)] for name, ms in top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 384, 512, 640])
    parser.add_argument("--rows", nargs="+", default=["sdpa", "sdpa 6bb0aba", "triton", "full/sdpa"],
                        help=f"from {', '.join(ROWS)}, or 'sdpa rows=N'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = []
    for length in args.lengths:
        batch = max(1, TOKENS // length // 4)
        models = {}
        for name in args.rows:
            if name not in ROWS and not name.startswith("sdpa rows="):
                parser.error(f"unknown row {name!r}")
            attention_type, backend = ("full", "sdpa") if name == "full/sdpa" else ("blossom", name.split()[0])
            config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=length, attention_type=attention_type,
                                      attn_implementation=backend)
            torch.manual_seed(0)
            models[name] = BlossomRecModel(config).cuda().eval()
        ids, _ = _model_inputs(models[args.rows[0]].config, batch, length, length + 2)
        for autocast in (False, True):
            def step(model, ids=ids, autocast=autocast):
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    return model(input_ids=ids, output_last_hidden_state=False).logits

            reference = None
            medians: dict[str, list[float]] = {name: [] for name in args.rows}
            for name in args.rows:  # warm-up, and the scores of every row against the first one
                with variant(name):
                    out = step(models[name]).float()
                    for _ in range(3):
                        step(models[name])
                if reference is None:
                    reference = out
                elif name != "full/sdpa":
                    err = float((out - reference).abs().max() / reference.abs().max())
                    if err > (2e-2 if autocast else 1e-4):
                        print(f"WARNING L={length} {name} scores differ from {args.rows[0]}'s: {err:.2e}")
            torch.cuda.synchronize()
            for _ in range(args.rounds):
                for name in args.rows:
                    with variant(name):
                        medians[name].append(timed(lambda m=models[name]: step(m), args.steps))
            dtype = "bf16" if autocast else "fp32"
            peaks = {}
            for name in args.rows:  # peak memory of one call above what is allocated before it
                with variant(name):
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    step(models[name])
                    torch.cuda.synchronize()
                    peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            busy = {}
            for name in args.rows:
                with variant(name):
                    busy[name] = gpu_busy(lambda m=models[name]: step(m))
            for name in args.rows:
                ms = statistics.median(medians[name])
                records.append({"L": length, "B": batch, "dtype": dtype, "row": name, "ms": round(ms, 3),
                                "peak_mib": round(peaks[name], 1), "gpu_busy_ms": round(busy[name][0], 3),
                                "device_events": busy[name][1], "top_kernels": busy[name][2],
                                "round_medians": [round(x, 3) for x in medians[name]]})
            line = "  ".join(f"{name} {statistics.median(medians[name]):6.2f} ({peaks[name]:.0f} MiB, busy "
                             f"{busy[name][0]:.2f} ms, {busy[name][1]:.0f} events)" for name in args.rows)
            print(f"L={length:5d} B={batch:4d} {dtype}: {line}", flush=True)
        del models
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "chunk_rows": sdpa_inference.DENSE_QUERY_CHUNK_ROWS["cuda"],
            "dense_max_length": attention_sdpa.DENSE_MAX_LENGTH["cuda"], "rounds": args.rounds, "steps": args.steps}
    with open(args.out, "w") as stream:
        json.dump({**meta, "rows": records}, stream, indent=1)


if __name__ == "__main__":
    main()
