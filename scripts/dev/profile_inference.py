#!/usr/bin/env python
"""torch.profiler of the serving-path forward (``blossom_hf.benchmarks.gpu.inference_case``'s model and batch) on
one GPU: per backend and L, the CUDA kernels and the host-side ops by total time, and the wall time per call.

Run: ``python scripts/dev/profile_inference.py --out OUT/profile_inference.txt [--lengths 200 512] [--backends sdpa
triton] [--fp32]`` (CUDA). Used for docs/BENCHMARKS.md ("what would close each miss").
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.benchmarks.gpu import CATALOGUE, TOKENS, _model_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 512])
    parser.add_argument("--backends", nargs="+", default=["sdpa", "triton"])
    parser.add_argument("--fp32", action="store_true", help="no autocast (default: bf16 autocast)")
    parser.add_argument("--rows", type=int, default=25, help="table rows per profile")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lines = [f"{torch.cuda.get_device_name()} torch {torch.__version__} {'fp32' if args.fp32 else 'bf16 autocast'}"]
    for seq_len in args.lengths:
        batch = max(1, TOKENS // seq_len // 4)
        for backend in args.backends:
            config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attn_implementation=backend)
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
            lines.append(f"\n=== L={seq_len} B={batch} backend={backend}: {wall:.2f} ms per call (wall, unprofiled)")
            lines.append(averages.table(sort_by="cuda_time_total", row_limit=args.rows))
            lines.append(averages.table(sort_by="cpu_time_total", row_limit=12))
            del model, step
            torch.cuda.empty_cache()
    text = "\n".join(lines)
    with open(args.out, "w") as handle:
        handle.write(text + "\n")
    print(text[-6000:])


if __name__ == "__main__":
    main()
