#!/usr/bin/env python
"""Train a BlossomRec (or full-attention baseline) sequential recommender and evaluate it.

Reads interactions (a preset or a file), preprocesses them, splits leave-one-out by time, trains with
early stopping on validation NDCG@10, then writes to --output-dir:

  best_model/     the best checkpoint: save_pretrained weights + config + item_vocabulary.json + data_spec.json
                  (load with BlossomRecModel.from_pretrained; evaluate with scripts/evaluate.py)
  metrics.json    validation and test metrics (full ranking and uni100), the config, the command,
                  library versions, seed, per-epoch timings and validation curves
  checkpoint-*/   Trainer checkpoints (resume with --resume)

Examples:
  # the paper's ML-1M setting (window 50), BlossomRec attention
  python scripts/train.py --dataset ml-1m --output-dir runs/ml1m-blossom

  # the same with dense causal attention (the baseline), 3 seeds
  for s in 1 2 3; do python scripts/train.py --dataset ml-1m --attention-type full --seed $s \\
      --output-dir runs/ml1m-full-s$s; done

  # your own CSV
  python scripts/train.py --dataset clicks.csv --user-col visitor --item-col product --time-col ts \\
      --k-core 5 --output-dir runs/clicks

  # several GPUs: no code change
  torchrun --nproc_per_node 4 scripts/train.py --dataset ml-1m --output-dir runs/ml1m-ddp
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from blossom_hf.data.cli import add_data_arguments, data_spec_from_args

LOGGER = logging.getLogger("blossom_hf.scripts.train")


def parse_model_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["stis_window=8", "rope_theta=500.0"]`` -> dict (values parsed as JSON when possible)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--model-config expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(parser, dataset_default="ml-1m")

    model = parser.add_argument_group("model (defaults: the paper's ML-1M setting)")
    model.add_argument(
        "--attention-type",
        default="blossom",
        choices=["blossom", "full"],
        help="blossom = LTIS + STIS sparse attention; full = dense causal attention baseline (default: blossom)",
    )
    model.add_argument(
        "--attn-implementation",
        default="sdpa",
        help="attention backend: eager, sdpa or triton (GPU) (default: sdpa)",
    )
    model.add_argument("--max-history-length", type=int, default=50, help="history window L (default: 50)")
    model.add_argument("--hidden-size", type=int, default=128, help="model width (default: 128)")
    model.add_argument("--num-layers", type=int, default=2, help="transformer layers (default: 2)")
    model.add_argument("--num-heads", type=int, default=8, help="query heads (default: 8)")
    model.add_argument("--num-kv-heads", type=int, default=2, help="key/value heads, GQA (default: 2)")
    model.add_argument("--intermediate-size", type=int, default=256, help="FFN inner size (default: 256)")
    model.add_argument("--dropout", type=float, default=0.2, help="hidden dropout (default: 0.2)")
    model.add_argument(
        "--straight-through",
        default="on",
        choices=["on", "off"],
        help="LTIS straight-through gradient to the block compressor (default: on; 'off' for the ablation)",
    )
    model.add_argument(
        "--model-config",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="any other BlossomRecConfig field, e.g. stis_window=8 ltis_num_selected_blocks=4",
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--example-style",
        default="sasrec",
        choices=["sasrec", "recbole"],
        help="sasrec: each history once per epoch, loss at every position (fast, default); "
        "recbole: every prefix predicts its next item, loss at the last position (the paper's RecBole runs)",
    )
    train.add_argument(
        "--windows",
        default="tile",
        choices=["tile", "last"],
        help="sasrec style: cut long histories into windows so every target is used (tile, default) "
        "or use only the most recent window (last)",
    )
    train.add_argument(
        "--loss",
        default="full",
        choices=["full", "chunked", "sampled"],
        help="full: cross-entropy over all items (default); chunked: the same, computed in item chunks "
        "(large catalogues); sampled: sampled softmax with --sampled-negatives uniform negatives",
    )
    train.add_argument("--ce-chunk-size", type=int, help="items per chunk for --loss chunked (default: auto)")
    train.add_argument("--sampled-negatives", type=int, default=1024, help="negatives for --loss sampled")
    train.add_argument(
        "--batch-size", type=int, help="training batch per device (default: 256 sasrec style, 2048 recbole style)"
    )
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, constant (default: 1e-3)")
    train.add_argument("--epochs", type=int, default=300, help="maximum epochs (default: 300)")
    train.add_argument("--patience", type=int, default=15, help="early-stopping patience in epochs (default: 15)")
    train.add_argument(
        "--time-limit-minutes", type=float, default=None,
        help="stop training after this many minutes and evaluate the best checkpoint (recorded in metrics.json)",
    )
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default: 1)")
    train.add_argument("--max-grad-norm", type=float, default=0.0, help="gradient clipping (default: 0 = off)")
    train.add_argument("--seed", type=int, default=42, help="training seed (default: 42)")
    train.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="auto = bf16 autocast on a GPU that supports it, else fp32 (evaluation always scores in fp32)",
    )
    train.add_argument("--num-workers", type=int, default=0, help="data-loader workers (default: 0)")
    train.add_argument("--logging-steps", type=int, default=50, help="log the loss every N steps")
    train.add_argument("--output-dir", required=True, help="where checkpoints, best_model/ and metrics.json go")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the latest checkpoint in --output-dir, or from the given checkpoint folder",
    )
    train.add_argument("--no-progress", action="store_true", help="no tqdm bars (for logs)")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--eval-protocols",
        nargs="+",
        default=["full", "uni100"],
        help="ranking protocols at each validation and at the end (default: full uni100)",
    )
    evaluation.add_argument(
        "--early-stopping-metric",
        default="full_ndcg@10",
        help="<protocol>_<metric>@K to early-stop on (default: full_ndcg@10; the paper: uni100_ndcg@10)",
    )
    evaluation.add_argument("--eval-batch-size", type=int, default=1024, help="users scored at once")
    evaluation.add_argument(
        "--exclude-history", action="store_true", help="full ranking without the user's history items"
    )
    evaluation.add_argument(
        "--negatives-seed", type=int, default=0, help="seed of the one-time uniN negative draw (default: 0)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from blossom_hf import BlossomRecConfig, BlossomRecModel
    from blossom_hf.training import RecTrainingConfig, default_training_arguments, run_training

    spec = data_spec_from_args(args)
    data = spec.load()
    config_values: dict[str, Any] = {
        "vocab_size": data.n_items + 1,
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_heads,
        "num_key_value_heads": args.num_kv_heads,
        "intermediate_size": args.intermediate_size,
        "hidden_dropout_prob": args.dropout,
        "max_history_length": args.max_history_length,
        "attention_type": args.attention_type,
        "ltis_straight_through": args.straight_through == "on",
        "attn_implementation": args.attn_implementation,
    }
    config_values.update(parse_model_overrides(args.model_config))
    torch.manual_seed(args.seed)
    model = BlossomRecModel(BlossomRecConfig(**config_values))

    rec = RecTrainingConfig(
        example_style=args.example_style,
        windows=args.windows,
        loss=args.loss,
        ce_chunk_size=args.ce_chunk_size,
        sampled_negatives=args.sampled_negatives,
        eval_protocols=tuple(args.eval_protocols),
        early_stopping_metric=args.early_stopping_metric,
        patience=args.patience,
        eval_batch_size=args.eval_batch_size,
        exclude_history=args.exclude_history,
        negatives_seed=args.negatives_seed,
        time_limit_minutes=args.time_limit_minutes,
    )
    overrides: dict[str, Any] = {
        "num_train_epochs": args.epochs,
        "learning_rate": args.lr,
        "gradient_accumulation_steps": args.grad_accum,
        "max_grad_norm": args.max_grad_norm,
        "seed": args.seed,
        "data_seed": args.seed,
        "dataloader_num_workers": args.num_workers,
        "logging_steps": args.logging_steps,
        "disable_tqdm": args.no_progress,
    }
    if args.batch_size is not None:
        overrides["per_device_train_batch_size"] = args.batch_size
    if args.precision != "auto":
        overrides["bf16"] = args.precision == "bf16"
    if args.num_workers > 0:
        overrides["dataloader_persistent_workers"] = True
    training_arguments = default_training_arguments(args.output_dir, rec, **overrides)
    LOGGER.info(
        "Training %s attention on %s: %d users, %d items, window %d, %s-style examples, %s loss",
        args.attention_type, args.dataset, data.n_users, data.n_items, args.max_history_length,
        args.example_style, args.loss,
    )  # fmt: skip
    record = run_training(
        data,
        model,
        Path(args.output_dir),
        rec,
        training_arguments,
        resume_from_checkpoint=args.resume,
        command=[sys.executable, *sys.argv] if argv is None else ["scripts/train.py", *argv],
    )
    return record


if __name__ == "__main__":
    main()
