#!/usr/bin/env python
"""Fine-tune a pretrained BlossomRec on a new interaction log, evaluate it, and export a Hub-ready folder.

The pretrained checkpoint (a folder or a Hub repo id) keeps all its encoder weights; its item embedding is
carried over to the new data's items: items shared with the pretrained vocabulary keep their embeddings,
new items start from N(0, initializer_range), and pretrained items absent from the new data are dropped
(or kept with --keep-old-items). Items are shared when their raw ids are equal, or through --mapping (a
TSV/CSV of "old raw id, new raw id" pairs) or --map-titles (a mapping built by title and year from two
catalogue files, e.g. ML-1M movies.dat and ML-100K u.item).

Writes to --output-dir what scripts/train.py writes (best_model/, metrics.json with a "finetuning"
entry, checkpoints) plus hub/ (or --export-dir): a Hub model repository with its own model card.

Examples:
  # ML-1M checkpoint -> ML-100K, items matched by title (the two catalogues number movies differently)
  python scripts/finetune.py --pretrained model_cards/blossomrec-ml1m --dataset ml-100k \\
      --map-titles ../shared/data/ml-1m/movies.dat ../shared/data/ml-100k/u.item \\
      --epochs 50 --output-dir runs/ft-ml1m-to-ml100k

  # the same architecture trained from scratch on the same data and epochs (the comparison)
  python scripts/finetune.py --pretrained model_cards/blossomrec-ml1m --dataset ml-100k --from-scratch \\
      --epochs 50 --output-dir runs/scratch-ml100k

  # your own log, same catalogue as the checkpoint, keep the items it lacks
  python scripts/finetune.py --pretrained org/blossomrec-ml1m --dataset clicks.csv --user-col visitor \\
      --item-col movie --time-col ts --keep-old-items --output-dir runs/ft-clicks
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Any

from blossom_hf.data.cli import add_data_arguments, data_spec_from_args

LOGGER = logging.getLogger("blossom_hf.scripts.finetune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pretrained", required=True, help="pretrained checkpoint: a folder or a Hub repo id")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of --pretrained")
    add_data_arguments(parser, dataset_default=None)

    vocab = parser.add_argument_group("item vocabulary")
    source = vocab.add_mutually_exclusive_group()
    source.add_argument("--mapping", help="TSV/CSV of 'old raw id, new raw id' pairs (header optional)")
    source.add_argument(
        "--map-titles",
        nargs=2,
        metavar=("OLD_CATALOG", "NEW_CATALOG"),
        help="build the mapping by title and year from two catalogues (movies.dat, u.item, or csv/tsv with "
        "item_id,title columns); the match rate is logged and the pairs saved to OUTPUT_DIR/item_mapping.tsv",
    )
    vocab.add_argument(
        "--keep-old-items",
        action="store_true",
        help="keep pretrained items the new data lacks (appended to the vocabulary; default: drop them)",
    )
    vocab.add_argument(
        "--old-id-prefix",
        default="pretrained:",
        help="with a mapping and --keep-old-items: raw-id prefix of kept, unmapped pretrained items",
    )
    vocab.add_argument("--init-std", type=float, help="std of new item embeddings (default: the config's)")
    vocab.add_argument(
        "--from-scratch",
        action="store_true",
        help="baseline: the pretrained architecture with random weights (no transfer), same training",
    )

    train = parser.add_argument_group("training (defaults as scripts/train.py)")
    train.add_argument("--example-style", default="sasrec", choices=["sasrec", "recbole"])
    train.add_argument("--windows", default="tile", choices=["tile", "last"])
    train.add_argument("--loss", default="full", choices=["full", "chunked", "sampled"])
    train.add_argument("--sampled-negatives", type=int, default=1024)
    train.add_argument("--batch-size", type=int, help="training batch per device (default: 256 / 2048 recbole)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    train.add_argument("--epochs", type=int, default=50, help="maximum epochs (default: 50)")
    train.add_argument("--patience", type=int, default=15, help="early-stopping patience (default: 15)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    train.add_argument("--max-history-length", type=int, help="change the history window (default: the checkpoint's)")
    train.add_argument("--attn-implementation", help="attention backend (eager, sdpa, triton; default: sdpa)")
    train.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    train.add_argument("--output-dir", required=True, help="where best_model/, metrics.json and hub/ go")
    train.add_argument("--no-progress", action="store_true", help="no tqdm bars")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-protocols", nargs="+", default=["full", "uni100"])
    evaluation.add_argument("--early-stopping-metric", default="full_ndcg@10")
    evaluation.add_argument("--eval-batch-size", type=int, default=1024)
    evaluation.add_argument("--exclude-history", action="store_true")
    evaluation.add_argument("--negatives-seed", type=int, default=0)

    export = parser.add_argument_group("export")
    export.add_argument("--export-dir", help="Hub folder to write (default: OUTPUT_DIR/hub)")
    export.add_argument("--no-export", action="store_true", help="train and evaluate only")
    export.add_argument("--model-name", help="name in the model card (default: the export folder's name)")
    export.add_argument("--repo-id", help="Hub repo id the export is meant for (shown in the card)")
    export.add_argument("--base-model-id", help="Hub id of the pretrained model for the card's base_model")
    return parser


def load_pretrained(args: argparse.Namespace):
    """The pretrained model, through the library classes (no remote code needed)."""
    import blossom_hf  # noqa: F401  (registers the Auto classes)
    from blossom_hf import BlossomRecModel

    kwargs: dict[str, Any] = {}
    if args.revision:
        kwargs["revision"] = args.revision
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    model = BlossomRecModel.from_pretrained(args.pretrained, **kwargs)
    if model.vocabulary is None:
        raise SystemExit(f"{args.pretrained} has no item_vocabulary.json: cannot map its items to the new data")
    return model


def build_mapping(args: argparse.Namespace, output_dir: Path) -> tuple[list[tuple[str, str]] | None, dict | None]:
    from blossom_hf.catalogs import build_title_mapping
    from blossom_hf.finetuning import read_item_mapping, write_item_mapping

    if args.mapping:
        return read_item_mapping(args.mapping), {"source": "file", "file": Path(args.mapping).name}
    if args.map_titles:
        match = build_title_mapping(*args.map_titles)
        path = write_item_mapping(match.pairs, output_dir / "item_mapping.tsv")
        LOGGER.info(
            "Title mapping: %d of %d new catalogue items matched (%.1f%%), %.1f%% of the old catalogue covered; "
            "pairs in %s", len({n for _, n in match.pairs}), match.n_new, 100 * match.match_rate,
            100 * match.old_coverage, path,
        )  # fmt: skip
        return match.pairs, {"source": "titles", **match.report()}
    return None, None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.dataset:
        raise SystemExit("finetune.py: --dataset is required (a preset name or an interaction file)")

    import torch

    from blossom_hf.finetuning import remap_item_vocabulary
    from blossom_hf.hub import CardOptions, export_hub_folder
    from blossom_hf.training import RecTrainingConfig, default_training_arguments, run_training

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pretrained = load_pretrained(args)
    data = data_spec_from_args(args).load()
    new_vocabulary = data.item_vocabulary()
    mapping, mapping_info = build_mapping(args, output_dir)

    if args.from_scratch:
        torch.manual_seed(args.seed)
        config = copy.deepcopy(pretrained.config)
        config.vocab_size = len(new_vocabulary) + 1
        model = type(pretrained)(config)
        model.vocabulary = new_vocabulary
        finetuning: dict[str, Any] = {"base_model": args.pretrained, "from_scratch": True,
                                      "note": "the pretrained architecture with random weights (no transfer)"}
    else:
        model, report = remap_item_vocabulary(
            pretrained, new_vocabulary, mapping, keep_old=args.keep_old_items,
            init_std=args.init_std, seed=args.seed, old_id_prefix=args.old_id_prefix,
        )  # fmt: skip
        data.item_ids.extend(str(raw) for raw in report.appended_ids)
        if data.item_vocabulary() != model.vocabulary:
            raise RuntimeError("internal error: the data's item numbering differs from the remapped vocabulary")
        finetuning = {"base_model": args.pretrained, "from_scratch": False, "keep_old_items": args.keep_old_items,
                      "vocabulary": report.to_dict(), "mapping": mapping_info}  # fmt: skip
    if args.max_history_length:
        model.config.max_history_length = args.max_history_length
    del pretrained

    rec = RecTrainingConfig(
        example_style=args.example_style, windows=args.windows, loss=args.loss,
        sampled_negatives=args.sampled_negatives, eval_protocols=tuple(args.eval_protocols),
        early_stopping_metric=args.early_stopping_metric, patience=args.patience,
        eval_batch_size=args.eval_batch_size, exclude_history=args.exclude_history,
        negatives_seed=args.negatives_seed,
    )  # fmt: skip
    overrides: dict[str, Any] = {
        "num_train_epochs": args.epochs, "learning_rate": args.lr, "seed": args.seed, "data_seed": args.seed,
        "disable_tqdm": args.no_progress, "use_cpu": args.cpu,
    }  # fmt: skip
    if args.batch_size is not None:
        overrides["per_device_train_batch_size"] = args.batch_size
    if args.precision != "auto":
        overrides["bf16"] = args.precision == "bf16"
    if args.cpu:
        overrides["bf16"] = False
        overrides["dataloader_pin_memory"] = False
    training_arguments = default_training_arguments(output_dir, rec, **overrides)
    command = [sys.executable, *sys.argv] if argv is None else ["scripts/finetune.py", *argv]
    record = run_training(data, model, output_dir, rec, training_arguments, command=command,
                          extra_record={"finetuning": finetuning})  # fmt: skip

    if not args.no_export and training_arguments.process_index == 0:
        export_dir = Path(args.export_dir) if args.export_dir else output_dir / "hub"
        base_id = args.base_model_id or (args.pretrained if not Path(args.pretrained).exists() else None)
        options = CardOptions(
            model_name=args.model_name or (export_dir if args.export_dir else output_dir).resolve().name,
            repo_id=args.repo_id,
            base_model=None if args.from_scratch else base_id,
            extra_sections={"Fine-tuning": finetuning_section(finetuning)},
            tags=("fine-tuned",) if not args.from_scratch else (),
        )
        export_hub_folder(model, export_dir, record, card_options=options, overwrite=True)
        LOGGER.info("Hub folder: %s", export_dir)
    return record


def finetuning_section(finetuning: dict[str, Any]) -> str:
    """The card's "Fine-tuning" section."""
    base = finetuning["base_model"]
    if finetuning.get("from_scratch"):
        return (f"Trained from scratch with the architecture of `{base}` (random weights, no transfer), as the "
                "baseline for the fine-tuned model trained the same way on the same data.")  # fmt: skip
    vocab = finetuning["vocabulary"]
    mapping = finetuning.get("mapping") or {"source": "identity"}
    if mapping["source"] == "titles":
        stages = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in mapping["stages"].items())
        matching = (f"by title and year: {mapping['matched_new_items']} of {mapping['new_items']} catalogue items "
                    f"matched ({100 * mapping['match_rate']:.1f}%; {stages}), {mapping['ambiguous_new']} "
                    f"ambiguous and {mapping['unmatched_new']} unmatched left out")  # fmt: skip
    elif mapping["source"] == "file":
        matching = f"by the mapping file `{mapping['file']}` ({vocab['mapping_pairs']} pairs)"
    else:
        matching = "by raw id (equal ids are the same item)"
    lines = [
        f"Fine-tuned from `{base}`: every encoder weight starts from the pretrained model; the item embedding "
        "was carried over to this dataset's items.",
        "",
        f"- {vocab['new_items']} items in the new data: {vocab['shared']} ({100 * vocab['shared_fraction']:.1f}%) "
        f"shared with the pretrained vocabulary kept their embeddings, {vocab['initialised']} were initialised "
        f"N(0, {vocab['init_std']}).",
        f"- Pretrained items without data here: {vocab['old_kept']} kept, {vocab['old_dropped']} dropped "
        f"(of {vocab['old_items']}).",
        f"- Items matched {matching}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
