"""``blossom-hf evaluate``: rank the held-out items of a trained model (leave-one-out; full ranking and/or uniN).

By default the data are rebuilt exactly as at training time from the model folder's data_spec.json, with items
numbered by the model's item vocabulary. Give --dataset (and format options) to evaluate on another file;
interactions with items the model does not know are dropped (and counted in the log).

Ranking: the held-out item against all items (full; history items kept unless --exclude-history) or against N
negatives drawn once from --negatives-seed (uniN); ties count against the target. Metrics: HR/Recall, MRR, NDCG
at K = 1, 5, 10, 20, as fractions.

Examples:
  blossom-hf evaluate --model runs/ml1m-blossom/best_model
  blossom-hf evaluate --model runs/ml1m-blossom/best_model --protocols uni100 --splits valid test \\
      --output runs/ml1m-blossom/eval.json
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BlossomUserError
from .options import DataArguments, OptionParser, main_with_json, setup_logging

HELP = "evaluate a trained model on the validation/test users (full ranking and uniN)"
LOGGER = logging.getLogger(__name__)


@dataclass
class EvaluateArguments:
    """What to evaluate and how."""

    model: str | None = field(default=None, metadata={"help": "a model folder (e.g. runs/x/best_model) or Hub id"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model"})
    protocols: list[str] = field(default_factory=lambda: ["full", "uni100"], metadata={"help": "full and/or uniN"})
    splits: list[str] = field(default_factory=lambda: ["test"], metadata={"help": "valid and/or test"})
    exclude_history: bool = field(default=False, metadata={"help": "full ranking without the history items"})
    negatives_seed: int = field(default=0, metadata={"help": "uniN negative draw seed (as in training to match)"})
    batch_size: int = field(default=1024, metadata={"help": "users scored at once"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if available)"})
    max_users: int | None = field(default=None, metadata={"help": "evaluate only the first N evaluated users of "
                                                                  "each split (a quick check; default: all)"})
    attn_implementation: str | None = field(default=None, metadata={"help": "override the attention backend"})
    output: str | None = field(default=None, metadata={"help": "write the metrics JSON here"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})
    json: bool = field(default=False, metadata={"help": "print the metrics as JSON on stdout"})

    def __post_init__(self) -> None:
        if not self.model:
            raise BlossomUserError("--model is required: a model folder (e.g. runs/x/best_model) or a Hub id")
        if self.batch_size < 1:
            raise BlossomUserError(f"--batch-size must be >= 1 users, got {self.batch_size}")
        if self.max_users is not None and self.max_users < 1:
            raise BlossomUserError(f"--max-users must be >= 1, got {self.max_users} (omit it to evaluate every user)")
        bad = [s for s in self.splits if s not in ("valid", "test")]
        if bad:
            raise BlossomUserError(f"--splits: {bad} unknown; choose from valid, test")
        from ..evaluation import parse_protocol

        try:
            self.protocols = [parse_protocol(p).name for p in self.protocols]
        except ValueError as err:
            raise BlossomUserError(f"--protocols: {err}") from None


def build_parser() -> OptionParser:
    paragraphs = __doc__.split("\n\n")
    return OptionParser("blossom-hf evaluate", paragraphs[0].split(": ", 1)[1], [EvaluateArguments, DataArguments],
                        epilog="\n\n".join(paragraphs[1:]))  # fmt: skip


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, evaluate, return ``{split: {protocol: {metric: value, "users": n}}}``."""
    return _run(argv)[0]


def _run(argv: list[str] | None) -> tuple[dict[str, Any], EvaluateArguments]:
    args, data_args = build_parser().parse(argv)
    setup_logging()
    import numpy as np
    import torch

    from .. import BlossomRecModel
    from ..data import SPEC_FILE, DataSpec, leave_one_out
    from ..evaluation import build_evaluation_sets, evaluate_model, results_to_record
    from ..run_record import dumps_strict, write_text_atomic

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs: dict[str, Any] = {}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    if args.revision:
        kwargs["revision"] = args.revision
    if Path(args.model).exists() and not Path(args.model).is_dir():
        raise BlossomUserError(f"--model {args.model} is a file; pass the model folder (with config.json)")
    if not Path(args.model).exists() and (args.model.startswith((".", "/", "~")) or args.model.count("/") > 1):
        raise FileNotFoundError(f"--model: the folder {args.model} does not exist; pass a model folder or a Hub id")
    model = BlossomRecModel.from_pretrained(args.model, **kwargs).to(device)
    if data_args.dataset is not None:
        spec = data_args.to_spec()
    elif (Path(args.model) / SPEC_FILE).is_file():
        spec = DataSpec.load_file(Path(args.model) / SPEC_FILE)
        LOGGER.info("Data as at training time: %s", spec.to_dict())
    else:
        raise BlossomUserError(f"{args.model} has no {SPEC_FILE}; pass --dataset (and format options)")
    vocabulary = [str(raw) for raw in model.vocabulary.raw_ids] if model.vocabulary is not None else None
    if vocabulary is None:
        LOGGER.warning("the model has no item vocabulary; items are numbered afresh from the data")
    data = spec.load(item_vocabulary=vocabulary)
    if data.n_items + 1 != model.config.vocab_size:
        raise BlossomUserError(
            f"the data have {data.n_items} items but the model scores {model.config.vocab_size - 1}; evaluate on the "
            "data it was trained on (drop --dataset to use its data_spec.json)"
        )
    split = leave_one_out(data)
    sets = build_evaluation_sets(split, args.protocols, args.negatives_seed)
    shard = None
    if args.max_users is not None:
        shard = np.arange(min(args.max_users, *(len(sets[name].examples) for name in args.splits)))
    results = evaluate_model(
        model, sets, splits=args.splits, protocols=args.protocols, exclude_history=args.exclude_history,
        batch_size=args.batch_size, device=device, progress=not args.no_progress, shard=shard,
    )  # fmt: skip
    record = results_to_record(results)
    if not args.json:
        for split_name, by_protocol in record.items():
            for protocol, metrics in by_protocol.items():
                sys.stdout.write(
                    f"{split_name:5s} {protocol:7s} users {metrics['users']:6d}  "
                    + "  ".join(f"{n} {metrics[n]:.4f}" for n in ("hit@10", "ndcg@10", "mrr@10", "ndcg@20")) + "\n"
                )
    if args.output:
        words = ["blossom-hf", "evaluate", *(sys.argv[1:] if argv is None else argv)]
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
            "command": " ".join(shlex.quote(a) for a in words),
            **record,
        }
        write_text_atomic(args.output, dumps_strict(output) + "\n")
        LOGGER.info("Wrote %s", args.output)
    return record, args


def main(argv: list[str] | None = None) -> int:
    return main_with_json(argv, _run)
