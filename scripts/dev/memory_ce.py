#!/usr/bin/env python
"""Peak memory of one training step with a huge catalogue: full cross-entropy vs chunked vs sampled.

Each variant runs in a fresh subprocess on a synthetic catalogue (default 1,000,000 items), so peaks do
not mix. Reported: peak memory above the inputs (CUDA: torch.cuda.max_memory_allocated; CPU: growth of
the process's peak RSS), time of forward + backward, and the loss (full and chunked must agree).

Modes:
  loss   the loss alone on random states: hidden [tokens, d], item embedding [items, d]
  model  one step of a BlossomRecModel (SASRec-style labels at every position) on random histories

Examples:
  python scripts/dev/memory_ce.py --device cuda                       # 1M items, 16,384 tokens, d = 128
  python scripts/dev/memory_ce.py --device cuda --mode model --batch-size 64 --max-history-length 200
  python scripts/dev/memory_ce.py --device cpu --items 200000 --tokens 1024   # a quick look on a laptop
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from typing import Any

LOGGER = logging.getLogger("blossom_hf.scripts.memory_ce")
VARIANTS = ("full", "chunked", "sampled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memory_ce.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=["loss", "model"], default="loss", help="what to measure (default: loss)")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default: 1,000,000)")
    parser.add_argument("--hidden-size", type=int, default=128, help="embedding width d (default: 128)")
    parser.add_argument("--tokens", type=int, default=16_384, help="loss mode: positions with a target")
    parser.add_argument("--batch-size", type=int, default=64, help="model mode: histories per step")
    parser.add_argument("--max-history-length", type=int, default=200, help="model mode: window L")
    parser.add_argument("--attention-type", default="full", choices=["blossom", "full"], help="model mode")
    parser.add_argument("--chunk-size", type=int, default=None, help="items per chunk (default: automatic)")
    parser.add_argument("--sampled-negatives", type=int, default=8192, help="negatives for the sampled variant")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="autocast dtype (default: bf16)")
    parser.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--_run", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant, then exit
    return parser


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process; returns its measurements."""
    import torch

    from blossom_hf.training import chunked_cross_entropy, positions_with_targets, sampled_softmax_loss

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    amp_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def loss_of(hidden, weight, targets):
        if args._run == "full":
            logits = (hidden @ weight.t().to(hidden.dtype)).float()
            logits[:, 0] = float("-inf")
            return torch.nn.functional.cross_entropy(logits, targets)
        if args._run == "chunked":
            return chunked_cross_entropy(hidden, weight, targets, args.chunk_size)
        return sampled_softmax_loss(hidden, weight, targets, args.sampled_negatives)

    if args.mode == "loss":
        weight = (torch.randn(args.items + 1, args.hidden_size, device=device) * 0.02).requires_grad_()
        hidden = torch.randn(args.tokens, args.hidden_size, device=device).requires_grad_()
        targets = torch.randint(1, args.items + 1, (args.tokens,), device=device)

        def step():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_of(hidden, weight, targets)
            loss.backward()
            return loss

    else:
        from blossom_hf import BlossomRecConfig, BlossomRecModel

        config = BlossomRecConfig(
            vocab_size=args.items + 1, hidden_size=args.hidden_size, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, intermediate_size=2 * args.hidden_size, max_history_length=args.max_history_length,
            attention_type=args.attention_type,
        )  # fmt: skip
        model = BlossomRecModel(config).to(device).train()
        length = args.max_history_length
        sequences = torch.randint(1, args.items + 1, (args.batch_size, length + 1), device=device)
        input_ids, labels = sequences[:, :-1], sequences[:, 1:]

        def step():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if args._run == "full":
                    loss = model(input_ids=input_ids, labels=labels).loss
                else:
                    output = model(input_ids=input_ids)
                    hidden, targets = positions_with_targets(output.last_hidden_state, input_ids, labels)
                    loss = loss_of(hidden, model.item_embeddings.weight, targets)
            loss.backward()
            return loss

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = peak_rss_bytes()
    started = time.perf_counter()
    try:
        loss = step()
        if cuda:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return {"variant": args._run, "status": "out of memory"}
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - baseline
    return {
        "variant": args._run,
        "status": "ok",
        "loss": float(loss),
        "seconds": seconds,
        "peak_extra_mib": peak / 2**20,
        "measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS growth",
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args._run:
        print(json.dumps(run_variant(args)))
        return []
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--output"]
    if args.output:
        index = forwarded.index(args.output)
        del forwarded[index]
    results = []
    for variant in args.variants:
        command = [sys.executable, __file__, *forwarded, "--_run", variant]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = done.stderr.strip().splitlines()[-3:]
            result = {"variant": variant, "status": f"failed: {' | '.join(tail)}"}
        else:
            result = json.loads(lines[-1])
        results.append(result)
    setting = (
        f"{args.mode} mode, {args.items:,} items, d={args.hidden_size}, "
        + (f"{args.tokens:,} tokens" if args.mode == "loss" else f"B={args.batch_size}, L={args.max_history_length}")
        + f", {args.dtype}, {args.device}"
    )
    print(f"\nPeak memory of one forward+backward ({setting})")
    print(f"{'variant':10s} {'status':16s} {'peak extra MiB':>15s} {'seconds':>9s} {'loss':>10s}")
    for r in results:
        if r["status"] == "ok":
            print(f"{r['variant']:10s} {'ok':16s} {r['peak_extra_mib']:15.1f} {r['seconds']:9.3f} {r['loss']:10.4f}")
        else:
            print(f"{r['variant']:10s} {r['status'][:60]}")
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(json.dumps({"setting": setting, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
