"""Training a BlossomRec (or any model with the same interface) with ``transformers.Trainer``.

Why ``transformers.Trainer`` and not a hand-written loop or bare Accelerate:

* mixed precision (bf16 autocast through Accelerate), gradient accumulation, and DDP across GPUs with
  ``torchrun``/``accelerate launch`` come with it, without a line of code changing;
* checkpoints resume exactly (weights via ``save_pretrained``, optimizer, scheduler, RNG states and the
  trainer state, including the early-stopping counter), and the best checkpoint is a loadable model
  folder (with its item vocabulary, since ``BlossomRecModel.save_pretrained`` writes it);
* early stopping, best-checkpoint tracking, logging integrations and tqdm progress are callbacks.

What this module replaces: the evaluation loop (ranking metrics from :mod:`blossom_hf.evaluation`
instead of an eval loss: full ranking and ``uniN`` against negatives drawn once, users sharded across
processes and ranks gathered), and, optionally, the loss, with two catalogue-size-independent
variants computed from ``last_hidden_state`` and the tied item embedding:

* ``loss="chunked"`` -- exact cross-entropy over all items, computed chunk by chunk of items by a custom
  autograd function that never holds more than ``tokens x chunk`` logits (forward and backward);
* ``loss="sampled"`` -- sampled softmax against ``sampled_negatives`` uniform negatives shared by the
  batch (accidental hits masked; with a uniform proposal the logQ correction is a constant and drops out).

:func:`run_training` is the whole recipe (split, examples, Trainer, early stopping on validation
NDCG@10, final validation + test metrics, ``metrics.json``); ``scripts/train.py`` is its command line.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkpoints import (
    STAGING_DIR,
    OutputDirLock,
    check_resume,
    clean_output_dir,
    complete_checkpoints,
    data_fingerprint,
    fault_point,
    replace_dir,
    save_run_arguments,
    staging_path,
)
from .data.collator import SequenceCollator
from .data.examples import ExampleStyle, PrefixExamples, RankingDataset, WindowExamples, WindowMode, training_examples
from .data.preprocessing import SequenceData
from .data.splits import LeaveOneOutSplit, leave_one_out
from .errors import BlossomUserError, NonFiniteError
from .evaluation.metrics import DEFAULT_CUTOFFS, METRIC_NAMES, metrics_from_ranks
from .evaluation.ranking import RankingResult, parse_protocol
from .evaluation.suite import EvaluationSet, build_evaluation_sets, evaluate_model, results_to_record
from .run_record import METRICS_FILE, RunRecord

logger = logging.getLogger(__name__)

LossType = Literal["full", "chunked", "sampled"]
NonFinitePolicy = Literal["error", "skip"]
BEST_MODEL_DIR = "best_model"


# --------------------------------------------------------------------------------------------------
# losses


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean over tokens of ``logsumexp_{i>=1}(h . w_i) - h . w_target``, item chunk by item chunk.

    Products run in ``compute_dtype``; the log-sum-exp and the gradients accumulate in at least float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, compute_dtype):  # type: ignore[override]
        accumulate = torch.promote_types(compute_dtype, torch.float32)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)
            lse = torch.full((h.shape[0],), float("-inf"), device=h.device, dtype=accumulate)
            for start in range(1, weight.shape[0], chunk_size):  # column 0 (padding) never competes
                logits = (h @ weight[start : start + chunk_size].to(compute_dtype).t()).to(accumulate)
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
            target_logits = (hidden.to(accumulate) * weight[targets].to(accumulate)).sum(dim=1)
            loss = (lse - target_logits).mean()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk_size, compute_dtype, accumulate = ctx.chunk_size, ctx.compute_dtype, lse.dtype
        scale = grad_output.to(accumulate) / hidden.shape[0]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)
            grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=accumulate)
            grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=accumulate)
            for start in range(1, weight.shape[0], chunk_size):
                w = weight[start : start + chunk_size].to(compute_dtype)
                probabilities = torch.exp((h @ w.t()).to(accumulate) - lse[:, None]) * scale
                grad_hidden += (probabilities.to(compute_dtype) @ w).to(accumulate)
                grad_weight[start : start + chunk_size] += (probabilities.t().to(compute_dtype) @ h).to(accumulate)
            grad_hidden -= scale * weight[targets].to(accumulate)
            grad_weight.index_add_(0, targets, -scale * hidden.to(accumulate))
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    max_chunk_elements: int = 1 << 26,
) -> torch.Tensor:
    """Exact cross-entropy over all items (padding 0 excluded) without materialising ``T x V`` logits.

    Args:
        hidden: ``[T, d]`` states at the positions that have a target.
        weight: ``[V, d]`` item embedding (row 0 = padding).
        targets: ``[T]`` item indices in ``1..V-1``.
        chunk_size: items per chunk; default: ``max_chunk_elements // T`` (at least 128).

    Peak extra memory is about ``T x chunk_size`` floats (plus ``V x d`` for the weight gradient).
    Under autocast the chunk products run in the autocast dtype (e.g. bf16) with float32 accumulation
    of the log-sum-exp and of the gradients.
    """
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected hidden [T, d] and targets [T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    if chunk_size is None:
        chunk_size = max(128, max_chunk_elements // hidden.shape[0])
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, int(chunk_size), compute_dtype)


def sampled_softmax_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, num_negatives: int
) -> torch.Tensor:
    """Softmax over the target and ``num_negatives`` uniform negatives shared by the batch.

    A negative equal to a row's target is masked for that row. The proposal is uniform, so the logQ
    correction is the same constant for every candidate and cancels.
    """
    negatives = torch.randint(1, weight.shape[0], (num_negatives,), device=hidden.device)
    positive = (hidden * weight[targets].to(hidden.dtype)).sum(dim=1, keepdim=True)
    negative = hidden @ weight[negatives].to(hidden.dtype).t()
    negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1).float()
    return F.cross_entropy(logits, torch.zeros_like(targets))


def positions_with_targets(
    last_hidden_state: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States and targets where a loss applies: every ``labels > 0`` of ``[B, L]`` labels, or the last
    real position of each row for ``[B]`` labels."""
    if labels.dim() == 2:
        keep = labels > 0
        return last_hidden_state[keep], labels[keep]
    real = input_ids != 0
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(real, positions, -1).amax(dim=1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    keep = labels > 0
    return last_hidden_state[rows, last][keep], labels[keep]


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class RecTrainingConfig:
    """Recommendation-specific training options (the rest are ``transformers.TrainingArguments``).

    Attributes:
        example_style: ``"sasrec"`` (every position of each history once per epoch; fast, default) or
            ``"recbole"`` (every prefix predicts its next item; the paper's setting).
        windows: SASRec style only: ``"tile"`` (histories longer than the window are cut into windows so
            every training target is used once per epoch) or ``"last"`` (most recent window only).
        loss: ``"full"`` (the model's own cross-entropy over all items), ``"chunked"`` (exact, chunked over
            items) or ``"sampled"`` (sampled softmax).
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
        nonfinite_loss: a NaN/inf training loss stops training with an error (``"error"``, default) or its
            batch is skipped (no gradient) and counted in ``metrics.json`` (``"skip"``).

    Every value is checked here, so a typo fails before the first epoch, not after it.
    """

    example_style: ExampleStyle = field(default="sasrec", metadata={"help": "sasrec: each history once per epoch, "
        "loss at every position (fast); recbole: every prefix predicts its next item (the paper's RecBole runs)"})
    windows: WindowMode = field(default="tile", metadata={"help": "sasrec style: cut long histories into windows so "
        "every target is used (tile) or use only the most recent window (last)"})
    loss: LossType = field(default="full", metadata={"help": "full: cross-entropy over all items; chunked: the same "
        "in item chunks (large catalogues); sampled: sampled softmax with --sampled-negatives uniform negatives"})
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
    nonfinite_loss: NonFinitePolicy = field(default="error", metadata={"help": "a NaN/inf training loss stops "
        "training with an error (error) or its batch is skipped and counted (skip)"})

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise BlossomUserError(message)

        check(self.example_style in ("sasrec", "recbole"),
              f"--example-style must be 'sasrec' or 'recbole', not {self.example_style!r}")
        check(self.windows in ("tile", "last"), f"--windows must be 'tile' or 'last', not {self.windows!r}")
        check(self.loss in ("full", "chunked", "sampled"),
              f"--loss must be 'full', 'chunked' or 'sampled', not {self.loss!r}")
        check(self.nonfinite_loss in ("error", "skip"),
              f"--nonfinite-loss must be 'error' or 'skip', not {self.nonfinite_loss!r}")
        check(self.ce_chunk_size is None or self.ce_chunk_size >= 1,
              f"--ce-chunk-size must be a positive number of items, got {self.ce_chunk_size} (omit it for automatic)")
        check(self.sampled_negatives >= 1, f"--sampled-negatives must be >= 1, got {self.sampled_negatives}")
        check(self.patience >= 1, f"--patience must be >= 1, got {self.patience}")
        check(self.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {self.eval_batch_size}")
        check(self.time_limit_minutes is None or self.time_limit_minutes > 0,
              f"--time-limit-minutes must be positive, got {self.time_limit_minutes}")
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


# --------------------------------------------------------------------------------------------------
# trainer


class EpochTimerCallback(TrainerCallback):
    """Adds ``{"epoch", "step", "epoch_train_seconds"}`` to the trainer's log history at each epoch end."""

    def __init__(self) -> None:
        self._started: float | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._started is not None:
            seconds = time.perf_counter() - self._started
            state.log_history.append(
                {
                    "epoch": round(state.epoch or 0.0, 4),
                    "step": state.global_step,
                    "epoch_train_seconds": seconds,
                }
            )
            logger.info("epoch %.0f trained in %.1f s", state.epoch or 0.0, seconds)


@contextmanager
def full_precision_forward(model: nn.Module):
    """Run ``model`` without Accelerate's mixed-precision forward wrapper, restoring it afterwards.

    With ``bf16=True`` Accelerate replaces ``model.forward`` by an autocast wrapper (and keeps the original
    as ``model._original_forward``); ranking must not run under it, or the recorded metrics would be those
    of a bf16 forward pass and differ from what ``scripts/evaluate.py`` reproduces from the checkpoint.
    """
    original = model.__dict__.get("_original_forward")
    patched = model.__dict__.get("forward")
    if original is None or patched is None:
        yield model
        return
    model.forward = original
    try:
        yield model
    finally:
        model.forward = patched


class TimeLimitCallback(TrainerCallback):
    """Stops training once ``minutes`` of wall-clock time have passed since training began."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.started = time.perf_counter()
        self.triggered = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.triggered and time.perf_counter() - self.started > self.seconds:
            self.triggered = True
            logger.warning("time limit of %.1f min reached at step %d: stopping training", self.seconds / 60,
                           state.global_step)
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


def assert_finite_parameters(model: nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first NaN/inf parameter (nothing is saved then)."""
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter.detach()).all()):
            raise NonFiniteError(
                f"parameter {name} holds NaN/inf values, so {what} was not saved; training diverged: lower --lr, "
                "clip gradients (--max-grad-norm 1.0), or resume from an earlier checkpoint"
            )


def example_lengths(dataset: Any) -> np.ndarray | None:
    """Real length of every training example (for length-grouped batches), or ``None`` for other datasets."""
    if isinstance(dataset, WindowExamples):
        return np.asarray(dataset.label_ends - dataset.label_starts)
    if isinstance(dataset, PrefixExamples):
        return np.minimum(dataset.targets_at - dataset.history_starts, dataset.max_length)
    return None


class SequentialRecTrainer(Trainer):
    """``Trainer`` whose evaluation ranks the validation users, and whose loss may be chunked or sampled.

    ``evaluate()`` returns ``eval_<protocol>_<metric>@K`` (e.g. ``eval_full_ndcg@10``) for every
    protocol of ``rec_config.eval_protocols``. With several processes each ranks a shard of the users
    and the ranks are gathered, so every process sees the same metrics.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(
        self,
        *args: Any,
        split: LeaveOneOutSplit,
        rec_config: RecTrainingConfig,
        evaluation_sets: dict[str, EvaluationSet] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.split = split
        self.rec_config = rec_config
        self.evaluation_sets = evaluation_sets or build_evaluation_sets(
            split, rec_config.eval_protocols, rec_config.negatives_seed
        )
        self._supports_no_logits: bool | None = None
        self._staging_root: Path | None = None
        self.nonfinite_losses = 0

    # ---- loss ---------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rec = self.rec_config
        input_ids, labels = inputs["input_ids"], inputs["labels"]
        if rec.loss == "full":
            outputs = model(input_ids=input_ids, labels=labels)
            loss = outputs.loss
        else:
            outputs = model(input_ids=input_ids, **self._no_logits_kwargs())
            hidden, targets = positions_with_targets(outputs.last_hidden_state, input_ids, labels)
            weight = self.accelerator.unwrap_model(model).item_embeddings.weight
            if rec.loss == "chunked":
                loss = chunked_cross_entropy(hidden, weight, targets, rec.ce_chunk_size)
            else:
                loss = sampled_softmax_loss(hidden, weight, targets, rec.sampled_negatives)
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            loss = self._nonfinite_loss(model, loss)
        return (loss, outputs) if return_outputs else loss

    def _nonfinite_loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """Stop with a clear error, or (``nonfinite_loss="skip"``) count the batch and give it no gradient."""
        self.nonfinite_losses += 1
        where = f"step {self.state.global_step + 1} (epoch {self.state.epoch or 0.0:.2f})"
        if self.rec_config.nonfinite_loss == "skip":
            logger.warning("training loss is %s at %s: batch skipped (%d so far)", float(loss.detach()), where,
                           self.nonfinite_losses)
            zero = torch.zeros((), device=loss.device)
            return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), zero)
        raise NonFiniteError(
            f"the training loss became {float(loss.detach())} at {where}; nothing non-finite was saved. Lower --lr "
            f"(now {self.args.learning_rate:g}), clip gradients (--max-grad-norm 1.0), or pass --nonfinite-loss skip "
            "to skip such batches"
        )

    # ---- checkpoints: staged and renamed, never saved non-finite ----------------------------------
    def _get_output_dir(self, trial) -> str:  # type: ignore[override]
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:  # type: ignore[override]
        """The checkpoint is written to ``output_dir/.staging/checkpoint-N`` and renamed into place once complete,
        so a kill during the save never leaves a partial ``checkpoint-N`` for ``--resume`` to pick up."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        assert_finite_parameters(self.accelerator.unwrap_model(model), f"checkpoint {run_dir / name}")
        staging_root = run_dir / STAGING_DIR
        if self.args.should_save and (staging_root / name).exists():
            import shutil

            shutil.rmtree(staging_root / name)
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = staging_root / name
            best = self.state.best_model_checkpoint
            if best is not None and Path(best).parent == staging_root:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                self.state.save_to_json(str(staged / "trainer_state.json"))
            fault_point("checkpoint-rename", self.state.global_step)
            replace_dir(staged, run_dir / name)
            rotate_checkpoints(
                output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False,
            )  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:  # type: ignore[override]
        fault_point("checkpoint-save", self.state.global_step)  # weights written, optimizer not yet (tests)
        super()._save_optimizer_and_scheduler(output_dir)

    # ---- length-grouped batches ---------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):  # type: ignore[override]
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = example_lengths(dataset)
        if getattr(self.args, "train_sampling_strategy", "random") == "group_by_length" and lengths is not None:
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths.tolist()
            )
        return super()._get_train_sampler(train_dataset)

    def _no_logits_kwargs(self) -> dict[str, Any]:
        """Ask the model not to compute ``[B, V]`` logits when its forward supports ``return_logits``."""
        if self._supports_no_logits is None:
            import inspect

            forward = self.accelerator.unwrap_model(self.model).forward
            self._supports_no_logits = "return_logits" in inspect.signature(forward).parameters
        return {"return_logits": False} if self._supports_no_logits else {}

    # ---- evaluation ---------------------------------------------------------------------------
    def rank(self, split_name: str = "valid", protocols: tuple[str, ...] | None = None) -> dict[str, RankingResult]:
        """Rank the users of ``split_name`` (``"valid"`` or ``"test"``) under each protocol.

        With several processes each ranks its shard of the users; ranks are gathered everywhere.
        """
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        total = len(self.evaluation_sets[split_name].examples) if split_name in self.evaluation_sets else 0
        shard = np.array_split(np.arange(total), world)[rank] if world > 1 else None
        model = self.accelerator.unwrap_model(self.model)
        with full_precision_forward(model):
            results = evaluate_model(
                model,
                self.evaluation_sets,
                splits=(split_name,),
                protocols=protocols or self.rec_config.eval_protocols,
                exclude_history=self.rec_config.exclude_history,
                batch_size=self.rec_config.eval_batch_size,
                device=self.args.device,
                cutoffs=self.rec_config.cutoffs,
                shard=shard,
                progress=not self.args.disable_tqdm and self.is_local_process_zero(),
            )[split_name]
        if world > 1:
            results = {name: self._gather(result, total) for name, result in results.items()}
        return results

    def _gather(self, result: RankingResult, total: int) -> RankingResult:
        width = -(-total // self.accelerator.num_processes)
        padded = torch.zeros(width, dtype=torch.long, device=self.args.device)
        padded[: result.ranks.size] = torch.from_numpy(result.ranks).to(self.args.device)
        gathered = self.accelerator.gather(padded).cpu().numpy()
        ranks = gathered[gathered > 0]
        return RankingResult(
            protocol=result.protocol,
            ranks=ranks,
            metrics=metrics_from_ranks(ranks, self.rec_config.cutoffs),
            seconds=result.seconds,
            options=result.options,
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        started = time.perf_counter()
        results = self.rank("valid")
        metrics: dict[str, float] = {}
        for protocol, result in results.items():
            for key, value in result.metrics.items():
                metrics[f"{metric_key_prefix}_{protocol}_{key}"] = value
        metrics[f"{metric_key_prefix}_seconds"] = time.perf_counter() - started
        if self.state.epoch is not None:
            metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# --------------------------------------------------------------------------------------------------
# the recipe


def run_training(
    data: SequenceData,
    model: nn.Module,
    output_dir: str | Path,
    rec_config: RecTrainingConfig | None = None,
    training_arguments: TrainingArguments | None = None,
    resume_from_checkpoint: str | bool | None = None,
    command: list[str] | None = None,
    extra_record: dict[str, Any] | None = None,
) -> RunRecord:
    """Train with early stopping, reload the best checkpoint, evaluate it, save it, write ``metrics.json``.

    Args:
        data: preprocessed histories (their item map becomes ``model.vocabulary``).
        model: a fresh model with ``config.vocab_size == data.n_items + 1``.
        output_dir: checkpoints go to ``output_dir/checkpoint-*``, the best model to
            ``output_dir/best_model`` (``save_pretrained`` + item vocabulary + data spec), the record
            to ``output_dir/metrics.json``.
        rec_config: recommendation options (default :class:`RecTrainingConfig`).
        training_arguments: default :func:`default_training_arguments`.
        resume_from_checkpoint: ``True`` (latest complete checkpoint in ``output_dir``) or a checkpoint folder.
        command: the command line to record (default ``sys.argv``).
        extra_record: more entries for ``metrics.json``.

    The folder is locked for the run (a second run in it is refused, naming the holder); checkpoints,
    ``best_model/`` and ``metrics.json`` are written atomically, never with non-finite weights; a resume is
    refused when its arguments or data differ from the run's in a way that changes what is trained.

    Returns:
        The run's :class:`~blossom_hf.run_record.RunRecord` (also a mapping with the ``metrics.json`` keys).
    """
    rec = rec_config or RecTrainingConfig()
    output_dir = Path(output_dir)
    args = training_arguments or default_training_arguments(output_dir, rec)
    validate_training_arguments(args)
    if model.config.vocab_size != data.n_items + 1:
        raise BlossomUserError(
            f"model vocab_size {model.config.vocab_size} != number of items {data.n_items} + 1 (padding); build the "
            "model with vocab_size=data.n_items + 1"
        )
    main_process = int(os.environ.get("RANK", "0")) == 0
    lock = OutputDirLock(output_dir, command if command is not None else sys.argv)
    if main_process:
        lock.acquire()
    try:
        if main_process:
            clean_output_dir(output_dir)
        return _run_training_locked(data, model, output_dir, rec, args, resume_from_checkpoint, command,
                                    extra_record)  # fmt: skip
    finally:
        lock.release()


def run_arguments(model: nn.Module, rec: RecTrainingConfig, args: TrainingArguments, fingerprint: str) -> dict:
    """What ``run_arguments.json`` holds: everything that decides what a run trains."""
    training = {key: value for key, value in args.to_dict().items() if not key.startswith("_")}
    return {"model": model.config.to_dict(), "rec": rec.to_dict(), "training": training,
            "data_fingerprint": fingerprint}  # fmt: skip


def _resolve_resume(output_dir: Path, resume: str | bool | None, args: TrainingArguments) -> str | None:
    if resume is None or resume is False:
        return None
    if resume is True or resume == "latest":
        found = complete_checkpoints(output_dir, need_optimizer=not args.save_only_model)
        if not found:
            raise BlossomUserError(
                f"--resume: {output_dir} holds no complete checkpoint to resume from; drop --resume to start afresh"
            )
        logger.info("resuming from %s", found[-1])
        return str(found[-1])
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume: checkpoint folder {path} does not exist; pass a checkpoint-N folder")
    return str(path)


def _run_training_locked(
    data: SequenceData,
    model: nn.Module,
    output_dir: Path,
    rec: RecTrainingConfig,
    args: TrainingArguments,
    resume_from_checkpoint: str | bool | None,
    command: list[str] | None,
    extra_record: dict[str, Any] | None,
) -> RunRecord:
    started = time.perf_counter()
    fingerprint = data_fingerprint(data.offsets, data.items, data.item_ids)
    arguments = run_arguments(model, rec, args, fingerprint)
    resume = _resolve_resume(output_dir, resume_from_checkpoint, args)
    if resume is not None:
        check_resume(output_dir, arguments, resume)
    elif int(os.environ.get("RANK", "0")) == 0:
        save_run_arguments(output_dir, arguments)
    split = leave_one_out(data)
    max_length = model.config.max_history_length
    train_dataset = training_examples(split, rec.example_style, max_length, rec.windows)
    if len(train_dataset) == 0:
        raise BlossomUserError(
            "the data leave no training example (every history is shorter than 3 interactions after the split); "
            "use a larger dataset or lower --k-core"
        )
    logger.info(
        "%d training examples (%s style, window %d); %d users evaluated",
        len(train_dataset), rec.example_style, max_length, len(split.evaluated_users),
    )  # fmt: skip
    model.vocabulary = data.item_vocabulary()
    evaluation_sets = build_evaluation_sets(split, rec.eval_protocols, rec.negatives_seed)
    callbacks: list[TrainerCallback] = [EarlyStoppingCallback(early_stopping_patience=rec.patience),
                                        EpochTimerCallback()]
    time_limit = TimeLimitCallback(rec.time_limit_minutes) if rec.time_limit_minutes else None
    if time_limit is not None:
        callbacks.append(time_limit)
    trainer = SequentialRecTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=RankingDataset(evaluation_sets["valid"].examples, max_length),
        data_collator=SequenceCollator(max_length),
        callbacks=callbacks,
        split=split,
        rec_config=rec,
        evaluation_sets=evaluation_sets,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - started

    final = results_to_record({name: trainer.rank(name) for name in ("valid", "test")})
    record = RunRecord(
        valid=final["valid"],
        test=final["test"],
        best={
            "metric": rec.early_stopping_metric,
            "value": trainer.state.best_metric,
            "checkpoint": trainer.state.best_model_checkpoint,
            "epoch": _best_epoch(trainer.state.log_history, trainer.state.best_global_step),
        },
        epochs=_epoch_history(trainer.state.log_history),
        protocol={
            "split": split.summary,
            "ranking": "full ranking excludes padding; history items "
            + ("removed" if rec.exclude_history else "kept (RecBole)"),
            "uniN": f"negatives drawn once (seed {rec.negatives_seed} valid, {rec.negatives_seed + 1} test), "
            "uniformly without replacement from items the user never interacted with",
            "ties": "pessimistic (the target ranks below every equal score)",
            "training_examples": rec.example_style,
        },
        model_config=model.config.to_dict(),
        training={**rec.to_dict(), **_training_arguments_record(args),
                  "nonfinite_losses_skipped": trainer.nonfinite_losses},
        data={k: v for k, v in data.metadata.items() if k != "source"} | {"source": data.metadata.get("source"),
                                                                           "fingerprint": fingerprint},
        seed=args.seed,
        command=command if command is not None else sys.argv,
        versions=_versions(),
        device=_device_description(),
        timings={
            "total_seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "train_runtime_reported_by_trainer": train_output.metrics.get("train_runtime"),
            "global_steps": trainer.state.global_step,
            "stopped_by_time_limit": bool(time_limit is not None and time_limit.triggered),
        },
    )
    if extra_record:
        record.update(extra_record)
    if trainer.is_world_process_zero():
        best_dir = output_dir / BEST_MODEL_DIR
        assert_finite_parameters(model, str(best_dir))
        staging = staging_path(output_dir, BEST_MODEL_DIR)
        trainer.save_model(str(staging))
        spec = data.metadata.get("data_spec")
        if spec is not None:
            (staging / "data_spec.json").write_text(json.dumps(spec, indent=2))
        replace_dir(staging, best_dir)
        record.save(output_dir / METRICS_FILE)
        logger.info("Wrote %s and %s", output_dir / METRICS_FILE, best_dir)
    _log_summary(record)
    return record


# --------------------------------------------------------------------------------------------------
# record helpers


def _best_epoch(history: list[dict[str, Any]], best_step: int | None) -> float | None:
    if not best_step:
        return None
    for entry in history:
        if entry.get("step") == best_step and "epoch" in entry:
            return entry["epoch"]
    return None


def _epoch_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch training time and validation metrics, merged by step."""
    merged: dict[int, dict[str, Any]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        if "epoch_train_seconds" in entry or any(key.startswith("eval_") for key in entry):
            merged.setdefault(step, {"step": step}).update(entry)
    return [merged[step] for step in sorted(merged)]


def _training_arguments_record(args: TrainingArguments) -> dict[str, Any]:
    keys = (
        "learning_rate", "weight_decay", "lr_scheduler_type", "num_train_epochs",
        "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16", "seed", "optim",
        "max_grad_norm", "world_size",
    )  # fmt: skip
    return {key: getattr(args, key, None) for key in keys}


def _versions() -> dict[str, str]:
    import datasets
    import transformers

    import blossom_hf

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": np.__version__,
        "blossom_hf": getattr(blossom_hf, "__version__", "unknown"),
    }
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions


def _device_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()})"


def _log_summary(record: dict[str, Any]) -> None:
    for split_name in ("valid", "test"):
        for protocol, metrics in record[split_name].items():
            logger.info(
                "%s %s: NDCG@10 %.4f  HR@10 %.4f  MRR@10 %.4f  (%d users)",
                split_name, protocol, metrics.get("ndcg@10", float("nan")),
                metrics.get("hit@10", float("nan")), metrics.get("mrr@10", float("nan")), metrics.get("users", 0),
            )  # fmt: skip
