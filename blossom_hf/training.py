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
NDCG@10, final validation + test metrics, ``metrics.json``); ``blossom-hf train`` is its command line. The losses
live in :mod:`blossom_hf.losses`, the options in :mod:`blossom_hf.training_args`, the record in
:mod:`blossom_hf.run_record`, the run folder's safety (lock, atomic folders, resume checks) in
:mod:`blossom_hf.run_folders`, the Trainer subclass in :mod:`blossom_hf.trainer`; their public names are
importable from here too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn
from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments

from .data.collator import SequenceCollator
from .data.examples import RankingDataset, training_examples
from .data.preprocessing import SequenceData
from .data.splits import leave_one_out
from .errors import BlossomUserError
from .evaluation.suite import build_evaluation_sets, results_to_record
from .losses import chunked_cross_entropy, positions_with_targets, sampled_softmax_loss
from .run_folders import (
    OutputDirLock,
    check_resume,
    clean_output_dir,
    complete_checkpoints,
    data_fingerprint,
    replace_dir,
    save_run_arguments,
    staging_path,
)
from .run_record import (
    METRICS_FILE,
    RunRecord,
    best_epoch,
    device_description,
    elapsed_at_step,
    epoch_history,
    library_versions,
    log_summary,
    source_revision,
    summarize_seconds,
    training_arguments_record,
)
from .trainer import (
    EpochTimerCallback,
    SequentialRecTrainer,
    TimeLimitCallback,
    assert_finite_parameters,
    example_lengths,
    full_precision_forward,
)
from .training_args import (
    TRAINING_DEFAULTS,
    LossType,
    NonFinitePolicy,
    RecTrainingConfig,
    check_metric_name,
    default_batch_size,
    default_training_arguments,
    device_training_defaults,
    validate_training_arguments,
)

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best_model"

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
    overwrite_output_dir: bool = False,
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
        overwrite_output_dir: start afresh in a folder that holds an earlier run (its checkpoints, best model and
            record are deleted first); without it such a folder is refused unless resuming.

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
                                    extra_record, overwrite_output_dir)  # fmt: skip
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


def _start_afresh(output_dir: Path, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder that holds an earlier run: its checkpoints would mix with the
    new run's, and checkpoint rotation could delete the new ones."""
    earlier = [p for p in complete_checkpoints(output_dir, need_optimizer=False)]
    earlier += [output_dir / name for name in (BEST_MODEL_DIR, METRICS_FILE) if (output_dir / name).exists()]
    if not earlier:
        return
    if not overwrite:
        names = ", ".join(sorted(p.name for p in earlier)[:4])
        raise BlossomUserError(
            f"{output_dir} already holds a run ({names}); pass --resume to continue it, --overwrite-output-dir to "
            "replace it, or another --output-dir"
        )
    import shutil

    for path in earlier:
        logger.warning("--overwrite-output-dir: removing %s of the earlier run", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _run_training_locked(
    data: SequenceData,
    model: nn.Module,
    output_dir: Path,
    rec: RecTrainingConfig,
    args: TrainingArguments,
    resume_from_checkpoint: str | bool | None,
    command: list[str] | None,
    extra_record: dict[str, Any] | None,
    overwrite_output_dir: bool = False,
) -> RunRecord:
    started = time.perf_counter()
    measure_memory = reset_peak_gpu_memory(args)
    fingerprint = data_fingerprint(data.offsets, data.items, data.item_ids)
    arguments = run_arguments(model, rec, args, fingerprint)
    resume = _resolve_resume(output_dir, resume_from_checkpoint, args)
    if resume is not None:
        check_resume(output_dir, arguments, resume)
    elif int(os.environ.get("RANK", "0")) == 0:
        _start_afresh(output_dir, overwrite_output_dir)
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
    timer = EpochTimerCallback()
    callbacks: list[TrainerCallback] = [EarlyStoppingCallback(early_stopping_patience=rec.patience), timer]
    limited = rec.time_limit_minutes or rec.time_limit_at
    time_limit = TimeLimitCallback(rec.time_limit_minutes, rec.time_limit_at) if limited else None
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
    history = epoch_history(trainer.state.log_history)
    stop = stop_summary(trainer, args, time_limit)
    eval_seconds = [e["eval_seconds"] for e in history if isinstance(e.get("eval_seconds"), int | float)]
    # whole epochs only: a time limit ends the last one early
    train_epoch_seconds = [e["epoch_train_seconds"] for e in history
                           if "epoch_train_seconds" in e and float(e.get("epoch", 0.5)).is_integer()]  # fmt: skip
    record = RunRecord(
        valid=final["valid"],
        test=final["test"],
        best={
            "metric": rec.early_stopping_metric,
            "value": trainer.state.best_metric,
            "checkpoint": trainer.state.best_model_checkpoint,
            "epoch": best_epoch(trainer.state.log_history, trainer.state.best_global_step),
        },
        epochs=history,
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
        training={**rec.to_dict(), **training_arguments_record(args),
                  "nonfinite_losses_skipped": trainer.nonfinite_losses},
        data={k: v for k, v in data.metadata.items() if k != "source"} | {"source": data.metadata.get("source"),
                                                                           "fingerprint": fingerprint},
        seed=args.seed,
        command=command if command is not None else sys.argv,
        versions=library_versions(),
        device=device_description(),
        timings={
            "total_seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "train_runtime_reported_by_trainer": train_output.metrics.get("train_runtime"),
            "global_steps": trainer.state.global_step,
            "stopped_by_time_limit": bool(time_limit is not None and time_limit.triggered),
            "elapsed_training_seconds": timer.elapsed(),
        },
        epochs_run=trainer.state.epoch,
        capped=stop["capped"],
        stop_reason=stop["reason"],
        train_seconds_per_epoch=summarize_seconds(train_epoch_seconds),
        eval_seconds=summarize_seconds(eval_seconds),
        time_to_best_seconds=elapsed_at_step(history, trainer.state.best_global_step),
        peak_gpu_memory_bytes=peak_gpu_memory(args) if measure_memory else None,
        backend=getattr(model.config, "_attn_implementation", None),
        source_revision=source_revision(),
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
    log_summary(record)
    return record


def reset_peak_gpu_memory(args: TrainingArguments) -> bool:
    """Reset the CUDA peak-memory counter of the training device; ``False`` when training is not on a GPU."""
    import torch

    if args.use_cpu or not torch.cuda.is_available() or args.device.type != "cuda":
        return False
    torch.cuda.reset_peak_memory_stats(args.device)
    return True


def peak_gpu_memory(args: TrainingArguments) -> dict[str, int]:
    """``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of this process since the reset, in bytes."""
    import torch

    return {"allocated": int(torch.cuda.max_memory_allocated(args.device)),
            "reserved": int(torch.cuda.max_memory_reserved(args.device))}  # fmt: skip


def stop_summary(trainer: SequentialRecTrainer, args: TrainingArguments, time_limit: TimeLimitCallback | None
                 ) -> dict[str, Any]:
    """Why training ended: ``{"capped": bool, "reason": words}``; capped means something other than early stopping
    ended it (the time limit, or the epoch/step budget) while the model may still have been improving."""
    if time_limit is not None and time_limit.triggered:
        return {"capped": True, "reason": time_limit.reason}
    early = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)), None)
    if early is not None and early.early_stopping_patience_counter >= early.early_stopping_patience:
        return {"capped": False, "reason": f"early stopping ({early.early_stopping_patience} validations without "
                                           "improvement)"}
    if args.max_steps and args.max_steps > 0:
        return {"capped": True, "reason": f"step budget reached (--max-steps {args.max_steps})"}
    return {"capped": True, "reason": f"epoch budget reached (--epochs {args.num_train_epochs:g})"}


__all__ = [
    "BEST_MODEL_DIR",
    "TRAINING_DEFAULTS",
    "EpochTimerCallback",
    "LossType",
    "NonFinitePolicy",
    "RecTrainingConfig",
    "SequentialRecTrainer",
    "TimeLimitCallback",
    "assert_finite_parameters",
    "check_metric_name",
    "chunked_cross_entropy",
    "default_batch_size",
    "default_training_arguments",
    "device_training_defaults",
    "example_lengths",
    "full_precision_forward",
    "positions_with_targets",
    "run_arguments",
    "run_training",
    "sampled_softmax_loss",
    "validate_training_arguments",
]
