#!/usr/bin/env python
"""torch.profiler of the serving-path forward (``blossom_hf.benchmarks.gpu.inference_case``'s model and batch) on
one GPU: per backend and L, the CUDA kernels and the host-side ops by total time, and the wall time per call.

Run: ``python scripts/dev/profile_inference.py --out OUT/profile_inference.txt [--lengths 200 512] [--rows full:sdpa
blossom:triton] [--fp32] [--cprofile]`` (CUDA; a row is ``attention_type:backend``, or a bare backend name for the
blossom model). ``--cprofile`` adds the Python functions of one forward by cumulative host time (cProfile over 20
calls), which shows where a launch-bound forward spends its host time. Used for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.benchmarks.gpu import CATALOGUE, TOKENS, _model_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 512])
    parser.add_argument("--rows", nargs="+", default=["full:sdpa", "blossom:triton"],
                        help="attention_type:backend (a bare backend name means the blossom model)")
    parser.add_argument("--cprofile", action="store_true", help="add cProfile's top Python functions per row")
    parser.add_argument("--fp32", action="store_true", help="no autocast (default: bf16 autocast)")
    parser.add_argument("--table-rows", type=int, default=25, help="table rows per profile")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lines = [f"{torch.cuda.get_device_name()} torch {torch.__version__} {'fp32' if args.fp32 else 'bf16 autocast'}"]
    for seq_len in args.lengths:
        batch = max(1, TOKENS // seq_len // 4)
        for row in args.rows:
            attention_type, _, backend = row.rpartition(":")
            config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len,
                                      attention_type=attention_type or "blossom", attn_implementation=backend)
            torch.manual_seed(0)
            model = BlossomRecModel(config).cuda().eval()
            ids, _ = _model_inputs(config, batch, seq_len, seq_len + 2)

            @torch.inference_mode()
            def step(model=model, ids=ids):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not args.fp32):
                    return model(input_ids=ids, output_last_hidden_state=False).logits

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - started) / 5 * 1000
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            averages = prof.key_averages()
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            gpu_ms = sum(e.device_time_total for e in kernels) / 1000 / 5
            lines.append(f"\n=== L={seq_len} B={batch} {row}: {wall:.2f} ms per call (wall, unprofiled); "
                         f"{len(kernels) / 5:.0f} GPU kernels, {gpu_ms:.2f} ms GPU time per call")
            lines.append(averages.table(sort_by="cuda_time_total", row_limit=args.table_rows))
            lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=30))
            if args.cprofile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(20):
                    step()
                torch.cuda.synchronize()
                profiler.disable()
                text = io.StringIO()
                stats = pstats.Stats(profiler, stream=text)
                stats.sort_stats("cumulative").print_stats(45)
                stats.sort_stats("tottime").print_stats(30)
                lines.append(f"--- cProfile, 20 calls ({row}, L={seq_len}):\n" + text.getvalue())
            del model, step
            torch.cuda.empty_cache()
    text = "\n".join(lines)
    with open(args.out, "w") as handle:
        handle.write(text + "\n")
    print(text[-6000:])


if __name__ == "__main__":
    main()
