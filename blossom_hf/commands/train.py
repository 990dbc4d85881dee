"""``blossom-hf train``: train a BlossomRec (or full-attention baseline) recommender and evaluate it.

Reads interactions (a preset or a file), preprocesses them, splits leave-one-out by time, trains with early
stopping on validation NDCG@10, then writes to --output-dir:

  best_model/     the best checkpoint: weights + config + item_vocabulary.json + data_spec.json
                  (BlossomRecModel.from_pretrained; blossom-hf evaluate --model DIR/best_model)
  metrics.json    validation and test metrics (full ranking and uni100), the config, the command, versions,
                  seed, per-epoch timings and validation curves (blossom_hf.run_record.RunRecord)
  checkpoint-*/   Trainer checkpoints (continue with --resume)

Every transformers.TrainingArguments option works (--report_to wandb, --lr_scheduler_type cosine,
--warmup_steps 100, --train_sampling_strategy group_by_length, ...), and --config run.yaml reads options
from a file.

Examples:
  blossom-hf train --dataset ml-1m --output-dir runs/ml1m-blossom
  blossom-hf train --dataset ml-1m --attention-type full --seed 2 --output-dir runs/ml1m-full-s2
  blossom-hf train --dataset clicks.csv --user-col visitor --item-col product --time-col ts --k-core 5 \\
      --output-dir runs/clicks
  torchrun --nproc_per_node 4 -m blossom_hf train --dataset ml-1m --output-dir runs/ml1m-ddp
"""

from __future__ import annotations

import logging
from typing import Any

from ..training import RecTrainingConfig
from .options import (
    DEFAULT_HISTORY_WINDOW,
    DataArguments,
    ModelArguments,
    OptionParser,
    RecTrainingArguments,
    RunArguments,
    main_with_json,
    parse_model_overrides,
    recorded_command,
    resolve_attn_implementation,
    setup_logging,
    training_arguments,
)

HELP = "train a BlossomRec recommender on a preset or your own interaction file, then evaluate it"
LOGGER = logging.getLogger(__name__)


def build_parser() -> OptionParser:
    paragraphs = __doc__.split("\n\n")
    return OptionParser(
        "blossom-hf train", paragraphs[0].split(": ", 1)[1],
        [DataArguments, ModelArguments, RunArguments, RecTrainingConfig, RecTrainingArguments],
        epilog="\n\n".join(paragraphs[1:]), defaults={"dataset": "ml-1m"},
    )  # fmt: skip


def run(argv: list[str] | None = None):
    """Parse ``argv``, train, and return the run's :class:`~blossom_hf.run_record.RunRecord`."""
    return _run(argv)[0]


def _run(argv: list[str] | None):
    data_args, model_args, run_args, rec, raw = build_parser().parse(argv)
    setup_logging()
    import torch

    from .. import BlossomRecConfig, BlossomRecModel
    from ..training import run_training

    args = training_arguments(raw, rec, run_args)  # validated before any data is read
    overrides = parse_model_overrides(model_args.model_config)
    window = run_args.max_history_length or DEFAULT_HISTORY_WINDOW
    if window < 1:
        raise ValueError(f"--max-history-length must be >= 1, got {window}")
    spec = data_args.to_spec()
    data = spec.load()
    config_values: dict[str, Any] = {
        "vocab_size": data.n_items + 1,
        "hidden_size": model_args.hidden_size,
        "num_hidden_layers": model_args.num_layers,
        "num_attention_heads": model_args.num_heads,
        "num_key_value_heads": model_args.num_kv_heads,
        "intermediate_size": model_args.intermediate_size,
        "hidden_dropout_prob": model_args.dropout,
        "max_history_length": window,
        "attention_type": model_args.attention_type,
        "ltis_straight_through": model_args.straight_through == "on",
        "attn_implementation": resolve_attn_implementation(
            run_args.attn_implementation, True, args.use_cpu, overrides.get("attention_type", model_args.attention_type)
        ),
    }
    config_values.update(overrides)
    torch.manual_seed(args.seed)
    model = BlossomRecModel(BlossomRecConfig(**config_values))
    LOGGER.info(
        "Training %s attention on %s: %d users, %d items, window %d, %s-style examples, %s loss",
        model_args.attention_type, data_args.dataset, data.n_users, data.n_items, window, rec.example_style,
        rec.loss,
    )  # fmt: skip
    resume = run_args.resume or args.resume_from_checkpoint
    record = run_training(data, model, args.output_dir, rec, args, resume_from_checkpoint=_resume(resume),
                          command=recorded_command("train", argv),
                          overwrite_output_dir=run_args.overwrite_output_dir)  # fmt: skip
    return record, run_args


def _resume(value: str | None) -> str | bool | None:
    return True if value in ("latest", "true", "True") else value


def main(argv: list[str] | None = None) -> int:
    return main_with_json(argv, _run)


__all__ = ["HELP", "RecTrainingArguments", "main", "run"]
