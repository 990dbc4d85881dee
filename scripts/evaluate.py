#!/usr/bin/env python
"""Evaluate a trained BlossomRec model with the leave-one-out protocol (full ranking and/or uniN).

By default the data are rebuilt exactly as at training time from the model folder's data_spec.json
(written by scripts/train.py), and items are numbered by the model's item vocabulary. Give --dataset
(and format options) to evaluate on another file; interactions with items the model does not know
are dropped (and counted in the log).

Ranking: the held-out item against all items (full; history items kept unless --exclude-history) or
against N negatives drawn once from --negatives-seed (uniN); ties count against the target.
Metrics: HR/Recall, MRR, NDCG at K = 1, 5, 10, 20, as fractions.

Examples:
  python scripts/evaluate.py --model runs/ml1m-blossom/best_model
  python scripts/evaluate.py --model runs/ml1m-blossom/best_model --protocols uni100 --splits valid test \\
      --output runs/ml1m-blossom/eval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from blossom_hf.data.cli import add_data_arguments, data_spec_from_args

LOGGER = logging.getLogger("blossom_hf.scripts.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a model folder (e.g. runs/x/best_model) or Hub id")
    add_data_arguments(parser, dataset_default=None)
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--protocols", nargs="+", default=["full", "uni100"], help="full and/or uniN (default: full uni100)"
    )
    group.add_argument(
        "--splits", nargs="+", default=["test"], choices=["valid", "test"], help="which targets (default: test)"
    )
    group.add_argument("--exclude-history", action="store_true", help="full ranking without history items")
    group.add_argument(
        "--negatives-seed", type=int, default=0, help="uniN negative draw seed; same as training to match (default 0)"
    )
    group.add_argument("--batch-size", type=int, default=1024, help="users scored at once (default: 1024)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument(
        "--max-users", type=int, default=None,
        help="evaluate only the first N evaluated users of each split (a quick check; the default is all)",
    )
    group.add_argument("--attn-implementation", help="override the attention backend (eager, sdpa, triton)")
    group.add_argument("--output", help="write the metrics JSON here (default: print only)")
    group.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import numpy as np
    import torch

    from blossom_hf import BlossomRecModel
    from blossom_hf.data import SPEC_FILE, DataSpec, leave_one_out
    from blossom_hf.evaluation import build_evaluation_sets, evaluate_model, results_to_record

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    model = BlossomRecModel.from_pretrained(args.model, **kwargs).to(device)
    if args.dataset is not None:
        spec = data_spec_from_args(args)
    elif (Path(args.model) / SPEC_FILE).is_file():
        spec = DataSpec.load_file(Path(args.model) / SPEC_FILE)
        LOGGER.info("Data as at training time: %s", spec.to_dict())
    else:
        raise SystemExit(f"{args.model} has no {SPEC_FILE}; pass --dataset (and format options)")
    vocabulary = [str(raw) for raw in model.vocabulary.raw_ids] if model.vocabulary is not None else None
    if vocabulary is None:
        LOGGER.warning("the model has no item vocabulary; items are numbered afresh from the data")
    data = spec.load(item_vocabulary=vocabulary)
    if data.n_items + 1 != model.config.vocab_size:
        raise SystemExit(f"the data have {data.n_items} items but the model scores {model.config.vocab_size - 1}")
    split = leave_one_out(data)
    sets = build_evaluation_sets(split, args.protocols, args.negatives_seed)
    results = evaluate_model(
        model,
        sets,
        splits=args.splits,
        protocols=args.protocols,
        exclude_history=args.exclude_history,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
        shard=None if args.max_users is None else np.arange(
            min(args.max_users, *(len(sets[name].examples) for name in args.splits))),
    )
    record = results_to_record(results)
    for split_name, by_protocol in record.items():
        for protocol, metrics in by_protocol.items():
            print(
                f"{split_name:5s} {protocol:7s} users {metrics['users']:6d}  "
                + "  ".join(f"{name} {metrics[name]:.4f}" for name in ("hit@10", "ndcg@10", "mrr@10", "ndcg@20"))
            )
    if args.output:
        output = {
            "model": args.model,
            "data_spec": spec.to_dict(),
            "negatives_seed": args.negatives_seed,
            "exclude_history": args.exclude_history,
            "ties": "pessimistic",
            "max_users": args.max_users,
            "device": str(device),
            "precision": "fp32",
            "attn_implementation": model.config._attn_implementation,
            "command": " ".join(shlex.quote(a) for a in ["python", "scripts/evaluate.py", *(argv or sys.argv[1:])]),
            **record,
        }
        Path(args.output).write_text(json.dumps(output, indent=2))
        LOGGER.info("Wrote %s", args.output)
    return record


if __name__ == "__main__":
    main()
