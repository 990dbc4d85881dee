#!/usr/bin/env python
"""Turn a training run (scripts/train.py --output-dir) into a Hub model repository folder with its model card.

Reads RUN_DIR/best_model (the best checkpoint and its item vocabulary) and RUN_DIR/metrics.json, and writes
TARGET with config.json, model.safetensors, item_vocabulary.json, the flat remote-code files, README.md
(model card generated from the metrics), metrics.json (local paths redacted) and sample_scores.json. The
folder is reloaded and checked before the command returns; nothing from the dataset is copied.

Examples:
  python scripts/export_checkpoint.py runs/ml1m-w200 model_cards/blossomrec-ml1m --repo-id ORG/blossomrec-ml1m
  python scripts/export_checkpoint.py runs/beauty model_cards/blossomrec-beauty --repo-id ORG/blossomrec-beauty \\
      --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

LOGGER = logging.getLogger("blossom_hf.scripts.export_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_checkpoint.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="training output folder holding best_model/ and metrics.json")
    parser.add_argument("target", help="folder to write (e.g. model_cards/blossomrec-ml1m)")
    parser.add_argument("--model", help="checkpoint folder inside the run (default: RUN_DIR/best_model)")
    parser.add_argument("--model-name", help="name in the card (default: the target folder's name)")
    parser.add_argument("--repo-id", help="Hub repo id the folder is meant for (used in the card's snippet)")
    parser.add_argument("--dataset", help="ml-1m, ml-100k, beauty or video-games (default: from metrics.json)")
    parser.add_argument(
        "--evaluation",
        help="an output of scripts/evaluate.py --output for this checkpoint: its valid/test metrics replace those "
        "recorded during training in the card and metrics.json (e.g. an fp32 re-evaluation on the CPU)",
    )
    parser.add_argument(
        "--evaluation-subset",
        help="an output of scripts/evaluate.py --max-users N --output ...: stored with the metrics so the tests can "
        "re-run that quick check against the exported folder",
    )
    parser.add_argument(
        "--sample-histories",
        help='JSON list of histories of raw ids for sample_scores.json, e.g. "[[1, 1196, 260], [2571]]" '
        "(default: well-known movies for ML-1M, evenly spread vocabulary items otherwise)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in TARGET")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from blossom_hf import BlossomRecModel
    from blossom_hf.hub import export_hub_folder, load_metrics

    run_dir = Path(args.run_dir)
    checkpoint = Path(args.model) if args.model else run_dir / "best_model"
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(f"export_checkpoint.py: no checkpoint at {checkpoint} (expected the run's best_model/)")
    try:
        metrics = load_metrics(run_dir)
        if args.evaluation:
            metrics = with_evaluation(metrics, Path(args.evaluation))
        if args.evaluation_subset:
            subset = json.loads(Path(args.evaluation_subset).read_text())
            if not subset.get("max_users"):
                raise ValueError(f"{args.evaluation_subset} is not an evaluate.py output made with --max-users")
            metrics.setdefault("evaluation", {})["subset"] = {
                key: subset[key] for key in ("max_users", "negatives_seed", "exclude_history", "valid", "test")
                if key in subset
            }
        histories = json.loads(args.sample_histories) if args.sample_histories else None
        model = BlossomRecModel.from_pretrained(checkpoint)
        folder = export_hub_folder(
            model, args.target, metrics, model_name=args.model_name, repo_id=args.repo_id, dataset=args.dataset,
            sample_histories=histories, overwrite=args.overwrite,
        )  # fmt: skip
    except (OSError, ValueError, KeyError) as err:  # HubExportError, UnknownItemError, JSON errors
        raise SystemExit(f"export_checkpoint.py: error: {err}") from None
    total = sum(p.stat().st_size for p in folder.iterdir())
    LOGGER.info("Wrote %s (%d files, %.1f MB); check it with: python scripts/recommend.py --model %s 1 2 3",
                folder, len(list(folder.iterdir())), total / 1e6, folder)  # fmt: skip
    return folder


def with_evaluation(metrics: dict, evaluation_file: Path) -> dict:
    """``metrics`` with the splits found in a ``scripts/evaluate.py`` output replacing those of training."""
    evaluation = json.loads(evaluation_file.read_text())
    splits = [split for split in ("valid", "test") if split in evaluation]
    if not splits:
        raise ValueError(f"{evaluation_file} holds no valid/test results of scripts/evaluate.py")
    updated = dict(metrics)
    for split in splits:
        updated[split] = evaluation[split]
    kept = [split for split in ("valid", "test") if split not in splits]
    updated["evaluation"] = {
        "note": f"{' and '.join(splits)} metrics re-computed from this checkpoint by scripts/evaluate.py "
        f"({evaluation.get('device', 'cpu')}, {evaluation.get('precision', 'fp32')}, "
        f"attn_implementation={evaluation.get('attn_implementation', 'sdpa')}): the numbers the script reproduces."
        + (f" The {' and '.join(kept)} metrics are those recorded during training." if kept else ""),
        "command": evaluation.get("command", "scripts/evaluate.py"),
        "splits": splits,
    }
    return updated


if __name__ == "__main__":
    main()
