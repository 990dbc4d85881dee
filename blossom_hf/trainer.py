"""``SequentialRecTrainer``: a ``transformers.Trainer`` whose evaluation ranks the validation users, whose loss may be
chunked or sampled, whose checkpoints are staged and renamed (never saved non-finite), and whose batches can be
grouped by history length; with the callbacks training uses (epoch timer, time limit)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .data.examples import PrefixExamples, WindowExamples
from .data.splits import LeaveOneOutSplit
from .errors import NonFiniteError
from .evaluation.metrics import metrics_from_ranks
from .evaluation.ranking import RankingResult
from .evaluation.suite import EvaluationSet, build_evaluation_sets, evaluate_model
from .fused_losses import FUSED_LOSSES, check_fused_loss, fused_linear_cross_entropy
from .losses import chunked_cross_entropy, positions_with_targets, sampled_softmax_loss
from .run_folders import STAGING_DIR, fault_point, replace_dir
from .training_args import RecTrainingConfig

logger = logging.getLogger(__name__)


class EpochTimerCallback(TrainerCallback):
    """Adds ``{"epoch", "step", "epoch_train_seconds"}`` to the trainer's log history at each epoch end, and
    ``{"epoch", "step", "elapsed_seconds"}`` after each evaluation: wall-clock seconds since training began
    (a resumed run continues from the last recorded value), so a validation curve can be drawn against time."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._train_started = time.perf_counter()
        self._offset = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._train_started = time.perf_counter()
        earlier = [e["elapsed_seconds"] for e in state.log_history if "elapsed_seconds" in e]
        self._offset = float(earlier[-1]) if earlier else 0.0

    def elapsed(self) -> float:
        """Wall-clock seconds of training so far (earlier sessions of a resumed run included)."""
        return self._offset + time.perf_counter() - self._train_started

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

    def on_evaluate(self, args, state, control, **kwargs):
        state.log_history.append(
            {"epoch": round(state.epoch or 0.0, 4), "step": state.global_step, "elapsed_seconds": self.elapsed()}
        )


@contextmanager
def full_precision_forward(model: nn.Module):
    """Run ``model`` without Accelerate's mixed-precision forward wrapper, restoring it afterwards.

    With ``bf16=True`` Accelerate replaces ``model.forward`` by an autocast wrapper (and keeps the original
    as ``model._original_forward``); ranking must not run under it, or the recorded metrics would be those
    of a bf16 forward pass and differ from what ``blossom-hf evaluate`` reproduces from the checkpoint.
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
    """Stops training once ``minutes`` of wall-clock time have passed since training began, or once the clock
    reaches the Unix time ``at`` (seconds), whichever comes first; the step that crosses it is evaluated and
    saved, so the best checkpoint so far is kept.

    :attr:`triggered` says whether it stopped the run, :attr:`reason` why (in words)."""

    def __init__(self, minutes: float | None = None, at: float | None = None) -> None:
        if minutes is None and at is None:
            raise ValueError("TimeLimitCallback needs minutes or at")
        self.seconds = minutes * 60.0 if minutes is not None else None
        self.at = at
        self.started = time.perf_counter()
        self.triggered = False
        self.reason: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def _crossed(self) -> str | None:
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            return f"time limit of {self.seconds / 60:.2f} min (--time-limit-minutes)"
        if self.at is not None and time.time() >= self.at:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.at))
            return f"wall-clock deadline {when} UTC (--time-limit-at)"
        return None

    def on_step_end(self, args, state, control, **kwargs):
        if self.triggered:
            return control
        reason = self._crossed()
        if reason is not None:
            self.triggered = True
            self.reason = reason
            logger.warning("%s reached at step %d: stopping training", reason, state.global_step)
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
        if rec_config.loss in FUSED_LOSSES:  # before the first step: the library and a CUDA device
            check_fused_loss(rec_config.loss, self.args.device)
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
            elif rec.loss in FUSED_LOSSES:
                loss = fused_linear_cross_entropy(hidden, weight, targets, rec.loss)
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
        # (a stale staging folder of an interrupted run was removed at start: run_folders.clean_output_dir)
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
