"""`blossom-hf export`: turn a training run into a Hub model repository folder with its model card.

Reads RUN_DIR/best_model (the best checkpoint and its item vocabulary) and RUN_DIR/metrics.json, and writes
TARGET with config.json (auto_map), model.safetensors, item_vocabulary.json, the flat remote-code files,
README.md (the model card, generated from the metrics), metrics.json (local paths redacted) and
sample_scores.json. The folder is staged beside TARGET, reloaded and checked, and only then swapped in: a
failed or interrupted export leaves an existing TARGET as it was. Nothing from the dataset is copied.

Examples:
  blossom-hf export runs/ml1m-w200 exports/blossomrec-ml1m --repo-id blossom-hf/blossomrec-ml1m
  blossom-hf export runs/beauty exports/blossomrec-beauty --repo-id blossom-hf/blossomrec-beauty --overwrite
  blossom-hf export runs/ml1m-w200 exports/blossomrec-ml1m --overwrite --onnx exports/blossomrec-ml1m.onnx
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from pathlib import Path

from ..errors import BlossomUserError

HELP = "export a training run as a Hub model folder (weights, vocabulary, code, model card), optionally ONNX"
LOGGER = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blossom-hf export",
        description=__doc__.split("\n\n")[1],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="training output folder holding best_model/ and metrics.json")
    parser.add_argument("target", help="folder to write (e.g. exports/blossomrec-ml1m)")
    parser.add_argument("--model", help="checkpoint folder inside the run (default: RUN_DIR/best_model)")
    parser.add_argument("--model-name", help="name in the card (default: the target folder's name)")
    parser.add_argument("--repo-id", help="Hub repo id the folder is meant for (used in the card's snippet)")
    parser.add_argument("--dataset", help="ml-1m, ml-100k, beauty or video-games (default: from metrics.json)")
    parser.add_argument(
        "--evaluation",
        help="an evaluation record of this checkpoint (blossom-hf evaluate --output): its valid/test metrics "
        "replace those recorded during training in the card and metrics.json (e.g. an fp32 re-evaluation on the CPU)",
    )
    parser.add_argument(
        "--evaluation-subset",
        help="an evaluation record made with --max-users N: stored with the metrics so the tests can re-run that "
        "quick check against the exported folder",
    )
    parser.add_argument(
        "--sample-histories",
        help='JSON list of histories of raw ids for sample_scores.json, e.g. "[[1, 1196, 260], [2571]]" '
        "(default: well-known movies for ML-1M, evenly spread vocabulary items otherwise)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in TARGET")
    parser.add_argument("--onnx", metavar="FILE", help="also write the scoring path as an ONNX model to FILE")
    return parser


def require_onnx_export() -> None:
    """Raise a one-line error where this install cannot export ONNX (no ``blossom_hf.serving``)."""
    if importlib.util.find_spec("blossom_hf.serving") is None:
        raise BlossomUserError("ONNX export is unavailable in this version of blossom_hf (no blossom_hf.serving "
                               "module); export without --onnx")  # fmt: skip


def export_onnx_file(model, path: Path, overwrite: bool = False) -> Path:
    """``blossom_hf.serving.export_onnx``: the scoring path as ONNX, staged and renamed, top-10 checked in
    onnxruntime against PyTorch."""
    require_onnx_export()
    from .. import serving

    path.parent.mkdir(parents=True, exist_ok=True)
    return serving.export_onnx(model, path, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from ..hub import attach_evaluation_subset, export_hub_folder, load_metrics, merge_evaluation
    from ..models.blossomrec import BlossomRecModel

    run_dir = Path(args.run_dir)
    checkpoint = Path(args.model) if args.model else run_dir / "best_model"
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (expected the run's best_model/, or pass --model)")
    if args.onnx:
        require_onnx_export()  # before any work
        if Path(args.onnx).resolve().is_relative_to(Path(args.target).resolve()):
            raise BlossomUserError(f"--onnx {args.onnx} lies inside the Hub folder {args.target}; write it elsewhere")
        if Path(args.onnx).exists() and not args.overwrite:
            raise FileExistsError(f"--onnx {args.onnx} exists; pass --overwrite to replace it")
    metrics = load_metrics(run_dir)
    if args.evaluation:
        metrics = merge_evaluation(metrics, args.evaluation)
    if args.evaluation_subset:
        metrics = attach_evaluation_subset(metrics, args.evaluation_subset)
    try:
        histories = json.loads(args.sample_histories) if args.sample_histories else None
    except json.JSONDecodeError as err:
        raise BlossomUserError(f"--sample-histories is not valid JSON ({err}); e.g. \"[[1, 1196, 260]]\"") from None
    try:
        model = BlossomRecModel.from_pretrained(checkpoint)
    except OSError as err:  # damaged weights (the model names the file and the fix)
        raise BlossomUserError(str(err)) from None
    folder = export_hub_folder(
        model, args.target, metrics, model_name=args.model_name, repo_id=args.repo_id, dataset=args.dataset,
        sample_histories=histories, overwrite=args.overwrite,
    )  # fmt: skip
    total = sum(p.stat().st_size for p in folder.iterdir())
    LOGGER.info("Wrote %s (%d files, %.1f MB); check it with: blossom-hf recommend --model %s ITEM_ID ...",
                folder, len(list(folder.iterdir())), total / 1e6, folder)  # fmt: skip
    if args.onnx:
        LOGGER.info("Wrote %s", export_onnx_file(model, Path(args.onnx), overwrite=args.overwrite))
    return 0
