#!/usr/bin/env python
"""Run every attention backend available here on the same batch and show that they agree, and how fast each is.

    python scripts/compare_backends.py                 # default: paper-size model, 64 histories of up to 200 items
    python scripts/compare_backends.py --length 512 --batch 16 --repeats 5
    python scripts/compare_backends.py --serving --dtype bf16   # the scoring path (recommend()), under autocast

Builds a randomly initialised BlossomRec model (no download, CPU by default), scores one batch of random
histories with each backend, and prints the largest score difference to the eager reference and the median
forward time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import blossom_hf
from blossom_hf import BlossomRecConfig, BlossomRecModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=200, help="history window L (default 200)")
    parser.add_argument("--batch", type=int, default=64, help="histories per batch (default 64)")
    parser.add_argument("--items", type=int, default=3706, help="catalogue size (default 3706, as ML-1M)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per backend (default 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serving", action="store_true",
                        help="time the scoring path (output_last_hidden_state=False, as recommend()), not forward")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    args = parser.parse_args()
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    torch.manual_seed(args.seed)
    config = BlossomRecConfig(vocab_size=args.items + 1, max_history_length=args.length, attn_implementation="eager")
    model = BlossomRecModel(config).to(args.device).eval()
    lengths = torch.randint(1, args.length + 1, (args.batch,))
    ids = torch.zeros(args.batch, args.length, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        ids[row, :length] = torch.randint(1, args.items + 1, (length,))
    ids = ids.to(args.device)

    backends = blossom_hf.available_attention_backends()
    print(f"blossom_hf {blossom_hf.__version__}, torch {torch.__version__}, device {args.device}")
    print(f"batch {args.batch} x window {args.length}, {args.items} items, {args.dtype}, "
          f"{'scoring path' if args.serving else 'forward'}; backends available here: {backends}")
    reference = None
    rows = []
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.inference_mode(), autocast:
        for name in backends:
            model.set_attn_implementation(name)
            scores = model(input_ids=ids, output_last_hidden_state=not args.serving).logits[:, 1:].float()
            times = []
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(input_ids=ids, output_last_hidden_state=not args.serving)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            if reference is None:
                reference = scores
            diff = (scores - reference).abs().max().item()
            same_top10 = (scores.topk(10).indices == reference.topk(10).indices).float().mean().item()
            rows.append((name, statistics.median(times) * 1000, diff, same_top10))
    print(f"\n{'backend':<10} {'median ms':>10} {'max |score - eager|':>20} {'same top-10':>12}")
    for name, ms, diff, same in rows:
        print(f"{name:<10} {ms:>10.1f} {diff:>20.2e} {same:>11.1%}")
    worst = max(r[2] for r in rows)
    print(f"\nall backends agree with the eager reference to {worst:.1e}" if worst < 1e-3
          else f"\nWARNING: backends differ by {worst:.2e}")


if __name__ == "__main__":
    main()
