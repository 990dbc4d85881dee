"""`blossom-hf recommend`: the next items for a history given on the command line, on the CPU.

The history is a list of raw item ids, oldest first. Without --model the bundled MovieLens-1M checkpoint
(package data, no download) is used: its ids are MovieLens-1M movie ids, the first field of movies.dat
(1 = Toy Story, 260 = Star Wars ...). --titles shows titles from your copy of a catalogue.

Examples:
  blossom-hf recommend 1 1196 260
  blossom-hf recommend 1 1196 260 --k 20 --exclude-seen --titles ~/data/ml-1m/movies.dat
  blossom-hf recommend --model blossom-hf/blossomrec-ml1m --revision main 2571 1210 --json
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import BlossomUserError
from ..hub import BUNDLED_ML1M, BUNDLED_REPO_IDS

HELP = "recommend the next items for a history of item ids (default: the bundled MovieLens-1M model)"
LOGGER = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blossom-hf recommend",
        description=__doc__.split("\n\n")[1],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("history", nargs="+", metavar="ITEM_ID", help="raw item ids, oldest first")
    parser.add_argument("--k", type=int, default=10, help="how many recommendations (default: 10)")
    parser.add_argument(
        "--model",
        default=None,
        help="model folder or Hub repo id (default: the bundled MovieLens-1M checkpoint, "
        f"{BUNDLED_REPO_IDS['blossomrec-ml1m']} on the Hub)",
    )
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--titles",
        "--movies",
        dest="titles",
        metavar="CATALOG",
        help="item catalogue for titles: movies.dat, u.item, or csv/tsv with item_id,title columns",
    )
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


def resolve_model(model: str | None) -> tuple[str, bool]:
    """The model to load and whether it is the bundled default."""
    if model is None:
        if not (BUNDLED_ML1M / "config.json").is_file():
            raise FileNotFoundError(
                f"the bundled checkpoint is missing from the installed package ({BUNDLED_ML1M}); reinstall "
                f"blossom_hf, or pass --model FOLDER_OR_REPO_ID (e.g. {BUNDLED_REPO_IDS['blossomrec-ml1m']})"
            )
        return str(BUNDLED_ML1M), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BlossomUserError(f"{path} is not a model folder (no config.json); point --model at an exported "
                                   "folder or a Hub repo id")  # fmt: skip
        return str(path), path.resolve() == BUNDLED_ML1M.resolve()
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise BlossomUserError(f"model {model!r} is neither an existing folder nor a Hub repo id (ORG/NAME)")
    return model, False


def load_titles(catalog: str | None) -> dict[str, str]:
    from ..catalogs import read_item_titles

    if not catalog:
        return {}
    try:
        return read_item_titles(Path(catalog).expanduser())
    except (OSError, ValueError) as err:
        raise BlossomUserError(f"cannot read titles from {catalog}: {err}") from None


def unknown_id_hint(raw: str, vocabulary: Any, titles: dict[str, str]) -> str:
    examples = ", ".join(str(i) for i in vocabulary.raw_ids[:5])
    if raw in titles:
        return (f"{raw} is {titles[raw]!r} in the catalogue, but the model never saw it in training, so it cannot "
                "use it; drop it or pass --unknown skip")  # fmt: skip
    if titles:
        from ..catalogs import normalize_title

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


def check_loaded_weights(model_id: str, model: Any, revision: str | None = None) -> None:
    """Refuse a checkpoint whose weight file lacks tensors of the model, or holds tensors it does not use.

    transformers would fill missing tensors with random values (and report it in a log line easily missed),
    which gives plausible-looking but wrong recommendations; blossom weights under a config saying
    ``attention_type: full`` show up as unused tensors.
    """
    from safetensors import safe_open

    local = Path(model_id)
    if local.is_dir():
        weights: str | None = str(local / "model.safetensors")
        if not Path(weights).is_file():
            weights = None
    else:
        from transformers.utils import cached_file

        weights = cached_file(model_id, "model.safetensors", revision=revision,
                              _raise_exceptions_for_missing_entries=False)  # fmt: skip
    if weights is None:
        LOGGER.warning("%s has no single model.safetensors; its tensors were not compared with the model's", model_id)
        return
    with safe_open(weights, framework="pt") as handle:
        stored = set(handle.keys())
    expected = set(model.state_dict())
    tied = getattr(model, "all_tied_weights_keys", None) or {}  # stored once, under the tensor they share
    missing, unexpected = sorted(expected - stored - set(tied)), sorted(stored - expected)
    if missing:
        raise BlossomUserError(
            f"{model_id}: the weights lack {len(missing)} tensor(s) the model needs (e.g. {', '.join(missing[:3])}), "
            "so they would be random; export the checkpoint again from its training run"
        )
    if unexpected:
        raise BlossomUserError(
            f"{model_id}: the weights hold {len(unexpected)} tensor(s) the config's model does not use (e.g. "
            f"{', '.join(unexpected[:3])}); config.json does not describe these weights (attention_type="
            f"{model.config.attention_type!r}?) -- export the checkpoint again"
        )


def recommend(args: argparse.Namespace) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # warnings (e.g. transformers' load report) stay visible
    from transformers import AutoModel

    import blossom_hf  # noqa: F401  (registers BlossomRec with AutoModel)
    from blossom_hf import UnknownItemError

    if args.k < 1:
        raise BlossomUserError(f"--k must be a positive number of recommendations, got {args.k}")
    model_id, is_default = resolve_model(args.model)
    titles = load_titles(args.titles)
    kwargs: dict[str, Any] = {"attn_implementation": args.attn_implementation}
    if args.revision:
        kwargs["revision"] = args.revision
    try:
        model = AutoModel.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as err:
        raise BlossomUserError(f"cannot load the model {model_id}: {str(err).splitlines()[0]}") from None
    check_loaded_weights(model_id, model, args.revision)
    vocabulary = getattr(model, "vocabulary", None)
    if vocabulary is None:
        raise BlossomUserError(f"{model_id} has no item_vocabulary.json, so raw item ids cannot be mapped")
    if not 1 <= args.k <= model.config.num_items:
        raise BlossomUserError(f"--k must be between 1 and {model.config.num_items}, got {args.k}")
    history = list(args.history)
    if args.unknown == "skip":
        skipped = [raw for raw in history if raw not in vocabulary]
        if skipped:
            LOGGER.warning("Skipping %d unknown id(s): %s", len(skipped), ", ".join(skipped[:10]))
        history = [raw for raw in history if raw in vocabulary]
        if not history:
            raise BlossomUserError("no id of the history is known to the model -- "
                                   + unknown_id_hint(args.history[0], vocabulary, titles))  # fmt: skip
    try:
        result = model.recommend(history, k=args.k, exclude_seen=args.exclude_seen)[0]
    except UnknownItemError:
        bad = next(raw for raw in history if raw not in vocabulary)
        raise BlossomUserError(f"unknown item id {bad!r}: not in the model's vocabulary of {len(vocabulary)} items -- "
                               + unknown_id_hint(bad, vocabulary, titles)) from None  # fmt: skip
    return {
        "model": model_id if not is_default else "bundled:blossomrec-ml1m",
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
    width = max((len(str(r["item"])) for r in output["recommendations"]), default=1)
    for r in output["recommendations"]:
        title = f"  {r['title']}" if with_titles and r["title"] else ""
        print(f"{r['rank']:>4}. {str(r['item']):>{width}}  {r['score']:9.4f}{title}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    output = recommend(args)
    if args.json:
        print(json.dumps(output, indent=2, ensure_ascii=False))
    else:
        print_table(output)
    return 0
