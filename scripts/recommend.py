#!/usr/bin/env python
"""Recommend the next items for a history given on the command line, on the CPU.

The history is a list of raw item ids, oldest first; with the default model (model_cards/blossomrec-ml1m)
those are MovieLens-1M movie ids, the first field of movies.dat (1 = Toy Story, 260 = Star Wars ...).
Titles are shown when a catalogue is found: --movies, or ../shared/data/ml-1m/movies.dat for a
MovieLens-1M model.

Examples:
  python scripts/recommend.py 1 1196 260
  python scripts/recommend.py 1 1196 260 --k 20 --exclude-seen --movies ~/data/ml-1m/movies.dat
  python scripts/recommend.py --model ORG/blossomrec-ml1m 2571 1210 --json
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "model_cards" / "blossomrec-ml1m"
DEFAULT_MOVIES = REPO.parent / "shared" / "data" / "ml-1m" / "movies.dat"
LOGGER = logging.getLogger("blossom_hf.scripts.recommend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recommend.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("history", nargs="+", metavar="ITEM_ID", help="raw item ids, oldest first")
    parser.add_argument("--k", type=int, default=10, help="how many recommendations (default: 10)")
    parser.add_argument(
        "--model",
        default=None,
        help=f"model folder or Hub repo id (default: {DEFAULT_MODEL.relative_to(REPO)})",
    )
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--movies",
        help="item catalogue for titles: movies.dat, u.item, or csv/tsv with item_id,title columns "
        "(default: ../shared/data/ml-1m/movies.dat for a MovieLens-1M model, if it exists)",
    )
    parser.add_argument("--no-titles", action="store_true", help="print ids only")
    parser.add_argument("--exclude-seen", action="store_true", help="do not recommend items of the history")
    parser.add_argument(
        "--unknown",
        default="error",
        choices=["error", "skip"],
        help="what to do with an id the model does not know (default: error)",
    )
    parser.add_argument("--attn-implementation", default="sdpa", help="attention backend: sdpa (default) or eager")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded")
    return parser


class CommandError(Exception):
    """A user error: printed as one message (plus a hint), exit status 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def resolve_model(model: str | None) -> tuple[str, bool]:
    """The model to load and whether it is the bundled default."""
    if model is None:
        if not (DEFAULT_MODEL / "config.json").is_file():
            raise CommandError(
                f"the bundled checkpoint {DEFAULT_MODEL.relative_to(REPO)} does not exist in this checkout",
                "it is produced by scripts/export_checkpoint.py after a GPU training run (see model_cards/README.md); "
                "pass --model FOLDER_OR_REPO_ID to use another checkpoint",
            )
        return str(DEFAULT_MODEL), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CommandError(f"{path} is not a model folder (no config.json)",
                               "point --model at an exported folder such as model_cards/blossomrec-ml1m")  # fmt: skip
        return str(path), path.resolve() == DEFAULT_MODEL.resolve()
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise CommandError(f"model {model!r} is neither an existing folder nor a Hub repo id (ORG/NAME)")
    return model, False


def is_movielens_1m(model: str, is_default: bool) -> bool:
    """Whether titles from ML-1M movies.dat fit the model (the default one, or a card naming MovieLens-1M)."""
    if is_default:
        return True
    card = Path(model) / "README.md"
    if not card.is_file():
        return False
    from huggingface_hub import ModelCard

    try:
        datasets = ModelCard.load(card).data.to_dict().get("datasets") or []
    except Exception:  # a hand-edited card; no titles then
        return False
    return "movielens-1m" in datasets


def load_titles(args: argparse.Namespace, model: str, is_default: bool) -> dict[str, str]:
    from blossom_hf.catalogs import read_item_titles

    if args.no_titles:
        return {}
    if args.movies:
        try:
            return read_item_titles(Path(args.movies).expanduser())
        except (OSError, ValueError) as err:
            raise CommandError(f"cannot read titles from {args.movies}: {err}") from None
    if DEFAULT_MOVIES.is_file() and is_movielens_1m(model, is_default):
        return read_item_titles(DEFAULT_MOVIES)
    return {}


def unknown_id_hint(raw: str, vocabulary: Any, titles: dict[str, str]) -> str:
    examples = ", ".join(str(i) for i in vocabulary.raw_ids[:5])
    if raw in titles:
        return (f"{raw} is {titles[raw]!r} in the catalogue, but the model never saw it in training, so it cannot "
                "use it; drop it or pass --unknown skip")  # fmt: skip
    if titles:
        from blossom_hf.catalogs import normalize_title

        by_key: dict[str, list[str]] = {}
        for item, title in titles.items():
            if item in vocabulary:
                by_key.setdefault(normalize_title(title)[0], []).append(item)
        query = normalize_title(raw)[0]
        keys = ([query] if query in by_key else []) + difflib.get_close_matches(query, list(by_key), n=3, cutoff=0.6)
        close = list(dict.fromkeys(item for key in keys for item in by_key[key]))[:3]
        if close:
            return "ids, not titles, are expected; did you mean " + ", ".join(
                f"{item} ({titles[item]})" for item in close
            ) + "?"
    return (f"item ids are the raw ids of the model's training data (item_vocabulary.json: {len(vocabulary)} items, "
            f"e.g. {examples}); pass --unknown skip to ignore unknown ones")  # fmt: skip


def recommend(args: argparse.Namespace) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from transformers import AutoModel

    import blossom_hf  # noqa: F401  (registers BlossomRec with AutoModel)
    from blossom_hf import UnknownItemError

    model_id, is_default = resolve_model(args.model)
    titles = load_titles(args, model_id, is_default)
    kwargs: dict[str, Any] = {"attn_implementation": args.attn_implementation}
    if args.revision:
        kwargs["revision"] = args.revision
    try:
        model = AutoModel.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as err:
        raise CommandError(f"cannot load the model {model_id}: {err}") from None
    vocabulary = getattr(model, "vocabulary", None)
    if vocabulary is None:
        raise CommandError(f"{model_id} has no item_vocabulary.json, so raw item ids cannot be mapped")
    if not 1 <= args.k <= model.config.num_items:
        raise CommandError(f"--k must be between 1 and {model.config.num_items}, got {args.k}")
    history = list(args.history)
    if args.unknown == "skip":
        skipped = [raw for raw in history if raw not in vocabulary]
        if skipped:
            LOGGER.warning("Skipping %d unknown id(s): %s", len(skipped), ", ".join(skipped[:10]))
        history = [raw for raw in history if raw in vocabulary]
        if not history:
            raise CommandError("no id of the history is known to the model",
                               unknown_id_hint(args.history[0], vocabulary, titles))  # fmt: skip
    try:
        result = model.recommend(history, k=args.k, exclude_seen=args.exclude_seen)[0]
    except UnknownItemError:
        bad = next(raw for raw in history if raw not in vocabulary)
        raise CommandError(f"unknown item id {bad!r}: not in the model's vocabulary of {len(vocabulary)} items",
                           unknown_id_hint(bad, vocabulary, titles)) from None  # fmt: skip
    return {
        "model": model_id if not is_default else str(DEFAULT_MODEL.relative_to(REPO)),
        "attn_implementation": model.config._attn_implementation,
        "history": [{"item": raw, "title": titles.get(str(raw))} for raw in history],
        "recommendations": [
            {"rank": rank, "item": item, "score": round(score, 4), "title": titles.get(str(item))}
            for rank, (item, score) in enumerate(result, start=1)
        ],
    }


def print_table(output: dict[str, Any]) -> None:
    with_titles = any(r["title"] for r in output["recommendations"])
    history = ", ".join(f"{h['item']} ({h['title']})" if h["title"] else str(h["item"]) for h in output["history"])
    print(f"History: {history}")
    print(f"Top {len(output['recommendations'])} from {output['model']} ({output['attn_implementation']}):")
    width = max(len(str(r["item"])) for r in output["recommendations"])
    for r in output["recommendations"]:
        title = f"  {r['title']}" if with_titles and r["title"] else ""
        print(f"{r['rank']:>4}. {str(r['item']):>{width}}  {r['score']:9.4f}{title}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        output = recommend(args)
    except CommandError as err:
        print(f"recommend.py: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(output, indent=2, ensure_ascii=False))
    else:
        print_table(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
