"""The options of a training run: :class:`RecTrainingConfig` (recommendation) and the project's
``transformers.TrainingArguments`` defaults (:data:`TRAINING_DEFAULTS`, :func:`default_training_arguments`), each
value checked before training starts."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import TrainingArguments

from .data.examples import ExampleStyle, WindowMode
from .errors import BlossomUserError
from .evaluation.metrics import DEFAULT_CUTOFFS, METRIC_NAMES
from .evaluation.ranking import parse_protocol

LossType = Literal["full", "chunked", "sampled", "liger"]
NonFinitePolicy = Literal["error", "skip"]



@dataclass
class RecTrainingConfig:
    """Recommendation-specific training options (the rest are ``transformers.TrainingArguments``).

    Attributes:
        example_style: ``"sasrec"`` (every position of each history once per epoch; fast, default) or
            ``"recbole"`` (every prefix predicts its next item; the paper's setting).
        windows: SASRec style only: ``"tile"`` (histories longer than the window are cut into windows so
            every training target is used once per epoch) or ``"last"`` (most recent window only).
        loss: ``"full"`` (the model's own cross-entropy over all items), ``"chunked"`` (exact, chunked over
            items), ``"sampled"`` (sampled softmax), or ``"liger"`` (the same exact loss fused in Triton by
            Liger-Kernel: an optional extra, CUDA only, fastest at small catalogues; :mod:`blossom_hf.fused_losses`).
        ce_chunk_size: items per chunk for ``"chunked"`` (default: automatic).
        sampled_negatives: negatives per batch for ``"sampled"``.
        eval_protocols: protocols ranked at every validation (``"full"``, ``"uniN"``).
        early_stopping_metric: ``"<protocol>_<metric>@K"`` watched for early stopping and the best checkpoint.
        patience: validations without improvement before stopping (the paper: 15).
        eval_batch_size: users scored at once.
        exclude_history: full ranking without the user's history items.
        negatives_seed: seed of the one-time draw of ``uniN`` negatives (independent of the training
            seed, so runs with different seeds are ranked on the same candidates).
        cutoffs: the K of the metrics.
        time_limit_minutes: stop training (then evaluate the best checkpoint as usual) once this much
            wall-clock time has passed; ``metrics.json`` records whether the limit ended the run.
        time_limit_at: the same, at a Unix time (seconds since 1970, UTC): for jobs that must end by a
            deadline whatever their start-up took (``date -d '+9 min' +%s``).
        nonfinite_loss: a NaN/inf training loss stops training with an error (``"error"``, default) or its
            batch is skipped (no gradient) and counted in ``metrics.json`` (``"skip"``).

    Every value is checked here, so a typo fails before the first epoch, not after it.
    """

    example_style: ExampleStyle = field(default="sasrec", metadata={"help": "sasrec: each history once per epoch, "
        "loss at every position (fast); recbole: every prefix predicts its next item (the paper's RecBole runs)"})
    windows: WindowMode = field(default="tile", metadata={"help": "sasrec style: cut long histories into windows so "
        "every target is used (tile) or use only the most recent window (last)"})
    loss: LossType = field(default="full", metadata={"help": "full: cross-entropy over all items; chunked: the same "
        "in item chunks (large catalogues); sampled: sampled softmax with --sampled-negatives uniform negatives; "
        "liger: the exact loss fused in Triton by Liger-Kernel (CUDA; pip install 'blossom_hf[liger]'; fastest for "
        "catalogues up to ~100k items, chunked is faster at 1M)"})
    ce_chunk_size: int | None = field(default=None, metadata={"help": "items per chunk for --loss chunked (default: "
        "automatic)"})
    sampled_negatives: int = field(default=1024, metadata={"help": "negatives per batch for --loss sampled"})
    eval_protocols: list[str] = field(default_factory=lambda: ["full", "uni100"], metadata={"help": "ranking "
        "protocols at each validation and at the end (full and/or uniN)"})
    early_stopping_metric: str = field(default="full_ndcg@10", metadata={"help": "<protocol>_<metric>@K to early-stop "
        "on and pick the best checkpoint by (the paper: uni100_ndcg@10)"})
    patience: int = field(default=15, metadata={"help": "validations without improvement before stopping"})
    eval_batch_size: int = field(default=1024, metadata={"help": "users scored at once in evaluation"})
    exclude_history: bool = field(default=False, metadata={"help": "full ranking without the user's history items"})
    negatives_seed: int = field(default=0, metadata={"help": "seed of the one-time uniN negative draw"})
    cutoffs: list[int] = field(default_factory=lambda: list(DEFAULT_CUTOFFS), metadata={"help": "the K of the "
        "metrics"})
    time_limit_minutes: float | None = field(default=None, metadata={"help": "stop training after this many minutes "
        "and evaluate the best checkpoint (recorded in metrics.json)"})
    time_limit_at: float | None = field(default=None, metadata={"help": "stop training at this Unix time (seconds "
        "since 1970; e.g. $(date -d '+9 min' +%%s)) and evaluate the best checkpoint, as --time-limit-minutes does"})
    nonfinite_loss: NonFinitePolicy = field(default="error", metadata={"help": "a NaN/inf training loss stops "
        "training with an error (error) or its batch is skipped and counted (skip)"})

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise BlossomUserError(message)

        check(self.example_style in ("sasrec", "recbole"),
              f"--example-style must be 'sasrec' or 'recbole', not {self.example_style!r}")
        check(self.windows in ("tile", "last"), f"--windows must be 'tile' or 'last', not {self.windows!r}")
        check(self.loss in ("full", "chunked", "sampled", "liger"),
              f"--loss must be 'full', 'chunked', 'sampled' or 'liger', not {self.loss!r}")
        check(self.nonfinite_loss in ("error", "skip"),
              f"--nonfinite-loss must be 'error' or 'skip', not {self.nonfinite_loss!r}")
        check(self.ce_chunk_size is None or self.ce_chunk_size >= 1,
              f"--ce-chunk-size must be a positive number of items, got {self.ce_chunk_size} (omit it for automatic)")
        check(self.sampled_negatives >= 1, f"--sampled-negatives must be >= 1, got {self.sampled_negatives}")
        check(self.patience >= 1, f"--patience must be >= 1, got {self.patience}")
        check(self.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {self.eval_batch_size}")
        check(self.time_limit_minutes is None or self.time_limit_minutes > 0,
              f"--time-limit-minutes must be positive, got {self.time_limit_minutes}")
        check(self.time_limit_at is None or self.time_limit_at > 0,
              f"--time-limit-at is a Unix time in seconds (e.g. $(date -d '+9 min' +%s)), got {self.time_limit_at}")
        self.cutoffs = tuple(int(k) for k in self.cutoffs)
        check(len(self.cutoffs) > 0 and min(self.cutoffs) >= 1, f"--cutoffs must be >= 1, got {list(self.cutoffs)}")
        try:
            self.eval_protocols = tuple(parse_protocol(p).name for p in self.eval_protocols)
        except ValueError as err:
            raise BlossomUserError(f"--eval-protocols: {err}") from None
        check(len(self.eval_protocols) > 0, "--eval-protocols needs at least one protocol (full, uniN)")
        check_metric_name(self.early_stopping_metric, self.eval_protocols, self.cutoffs)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["eval_protocols"] = list(self.eval_protocols)
        values["cutoffs"] = list(self.cutoffs)
        return values


def check_metric_name(name: str, protocols: tuple[str, ...], cutoffs: tuple[int, ...]) -> None:
    """Raise a :class:`BlossomUserError` (with the closest valid name) unless ``name`` is one of the
    ``<protocol>_<metric>@K`` that the evaluation will report."""
    valid = [f"{p}_{m}@{k}" for p in protocols for m in METRIC_NAMES for k in cutoffs]
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise BlossomUserError(
            f"--early-stopping-metric {name!r} is not reported by this evaluation; {hint}use <protocol>_<metric>@K "
            f"with a protocol of --eval-protocols {list(protocols)}, a metric of {list(METRIC_NAMES)} and K in "
            f"{list(cutoffs)}"
        )


def validate_training_arguments(args: TrainingArguments) -> None:
    """The ``TrainingArguments`` values that would fail late or silently train nothing, checked up front."""
    problems = []
    if not (args.max_steps and args.max_steps > 0) and not args.num_train_epochs > 0:
        problems.append(f"--epochs must be > 0, got {args.num_train_epochs:g}")
    if args.per_device_train_batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {args.per_device_train_batch_size}")
    if args.per_device_eval_batch_size < 1:
        problems.append(f"--per-device-eval-batch-size must be >= 1, got {args.per_device_eval_batch_size}")
    if args.gradient_accumulation_steps < 1:
        problems.append(f"--grad-accum must be >= 1, got {args.gradient_accumulation_steps}")
    if args.learning_rate < 0:
        problems.append(f"--lr must be >= 0, got {args.learning_rate}")
    if args.dataloader_num_workers < 0:
        problems.append(f"--num-workers must be >= 0, got {args.dataloader_num_workers}")
    if problems:
        raise BlossomUserError("; ".join(problems))


TRAINING_DEFAULTS: dict[str, Any] = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "greater_is_better": True,
    "save_total_limit": 2,
    "restore_callback_states_from_checkpoint": True,  # the early-stopping counter survives a resume
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "optim": "adamw_torch",
    "max_grad_norm": 0.0,  # no clipping, as RecBole
    "num_train_epochs": 300,
    "dataloader_num_workers": 0,
    "remove_unused_columns": False,
    "report_to": "none",
    "logging_strategy": "steps",
    "logging_steps": 50,
    "seed": 42,
}
"""Defaults of every training entry point (:func:`default_training_arguments`, ``blossom-hf train`` and
``blossom-hf finetune``), so they cannot drift apart."""


def default_batch_size(example_style: str) -> int:
    """256 histories per batch for SASRec-style examples, 2048 prefixes for RecBole-style ones."""
    return 256 if example_style == "sasrec" else 2048


def device_training_defaults() -> dict[str, Any]:
    """bf16 autocast on a GPU that supports it, pinned memory on a GPU, the CPU otherwise (which lets torchrun
    on CPU-only hosts run multi-process with gloo too)."""
    cuda = torch.cuda.is_available()
    return {"bf16": bool(cuda and torch.cuda.is_bf16_supported()), "dataloader_pin_memory": cuda, "use_cpu": not cuda}


def default_training_arguments(output_dir: str | Path, rec: RecTrainingConfig, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` for recommendation: evaluate and save every epoch, keep the best checkpoint by
    ``rec.early_stopping_metric``, constant learning rate, no weight decay and no gradient clipping
    (RecBole's Adam), bf16 on a GPU
    that supports it, pinned memory, no external loggers. ``overrides`` win."""
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        **TRAINING_DEFAULTS,
        **device_training_defaults(),
        "metric_for_best_model": rec.early_stopping_metric,
        "per_device_train_batch_size": default_batch_size(rec.example_style),
        "per_device_eval_batch_size": rec.eval_batch_size,
    }
    values.update(overrides)
    unknown = sorted(set(values) - set(TrainingArguments.__dataclass_fields__))
    if unknown:
        raise TypeError(f"TrainingArguments has no field(s) {unknown}")
    return TrainingArguments(**values)
