"""The record of a training run (``metrics.json``), written and read through one dataclass.

:class:`RunRecord` is to a ``blossom-hf train`` run what ``transformers.TrainerState`` is to a checkpoint:
:meth:`RunRecord.save` writes it (atomically, strict JSON: a non-finite number becomes ``null``, never
``NaN``), :meth:`RunRecord.load` reads it back, including records written before this class existed (the
JSON keys are the same; keys it does not know are kept in :attr:`RunRecord.extra` and written back).

It is also a mapping (``record["test"]["full"]["ndcg@10"]``), so code written for the plain dict keeps working.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BlossomUserError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, tuples as lists, non-finite floats as ``None`` and
    anything else unknown as its ``str``: what strict JSON (``allow_nan=False``) accepts."""
    if isinstance(value, MutableMapping | dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def dumps_strict(value: Any, indent: int | None = 2) -> str:
    """JSON text that every parser accepts (no ``NaN``/``Infinity``)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``: a kill or a full
    disk leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


#: Fields added after the first records were written; absent from older files (and left out while unset).
LATER_FIELDS = ("epochs_run", "capped", "stop_reason", "train_seconds_per_epoch", "eval_seconds",
                "time_to_best_seconds", "peak_gpu_memory_bytes", "backend", "source_revision")  # fmt: skip


@dataclass
class RunRecord(MutableMapping):
    """What a training run measured and how it ran (the keys of ``metrics.json``).

    Attributes:
        valid, test: ``{protocol: {"ndcg@10": ..., "users": n, ...}}`` of the best checkpoint.
        best: ``{"metric", "value", "checkpoint", "epoch"}`` of early stopping.
        epochs: per-epoch training time and validation metrics.
        protocol: split, ranking, negatives and ties, in words.
        model_config: the model's ``config.to_dict()``.
        training: the recommendation options and the main ``TrainingArguments``.
        data: source and preprocessing of the data.
        seed: the training seed.
        command: the command line.
        versions: library versions.
        device: the hardware, in words.
        timings: wall-clock seconds, global steps, whether the time limit ended the run.
        epochs_run: epochs trained (fractional when a time limit stopped the run inside an epoch).
        capped: ``True`` when something other than early stopping ended training (a time limit, the epoch or
            step budget), so the model may still have been improving; ``False`` after early stopping.
        stop_reason: why training ended, in words.
        train_seconds_per_epoch: ``{"median", "mean", "min", "max", "first", "n"}`` of the training seconds of
            each whole epoch (the first includes kernel compilation, hence the median; an epoch cut short by a
            time limit is left out).
        eval_seconds: the same for each validation (ranking every validation user under every protocol).
        time_to_best_seconds: wall-clock seconds from the start of training to the end of the best epoch's
            validation.
        peak_gpu_memory_bytes: ``{"allocated", "reserved"}``: ``torch.cuda.max_memory_allocated`` /
            ``max_memory_reserved`` of this process over the run (counters reset at its start); ``None`` off GPU.
        backend: the attention backend the model ran with (``attn_implementation``).
        source_revision: the git commit of the code that ran (``git rev-parse HEAD``, or
            ``$BLOSSOM_HF_REVISION`` for a copy without ``.git``).
        extra: any other entry (``finetuning``, ``evaluation`` ...), kept as read.
    """

    valid: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    command: list[str] | str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    epochs_run: float | None = None
    capped: bool | None = None
    stop_reason: str | None = None
    train_seconds_per_epoch: dict[str, Any] = field(default_factory=dict)
    eval_seconds: dict[str, Any] = field(default_factory=dict)
    time_to_best_seconds: float | None = None
    peak_gpu_memory_bytes: dict[str, int] | None = None
    backend: str | None = None
    source_revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- construction and files -----------------------------------------------------------------
    @classmethod
    def _field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        """A record from the dict of a ``metrics.json`` (unknown keys go to :attr:`extra`)."""
        if not isinstance(values, dict):
            raise BlossomUserError(f"a run record is a JSON object, not {type(values).__name__}")
        names = set(cls._field_names())
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` layout: every field at the top level, then the extra entries. The fields added after
        the first records (:data:`LATER_FIELDS`) are left out while unset (``None`` or empty), so a record read
        from an older file is written back unchanged."""
        values = {name: getattr(self, name) for name in self._field_names()}
        for name in LATER_FIELDS:
            if values[name] is None or values[name] == {}:
                del values[name]
        return {**values, **self.extra}

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (a non-finite number is ``null``)."""
        return dumps_strict(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (a file, or a folder that gets ``metrics.json``) atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_FILE
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunRecord:
        """Read a ``metrics.json`` (or the folder holding one); old records load too."""
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no run record at {path}: expected the metrics.json of a training run")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BlossomUserError(
                f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); re-create it by "
                "re-running the training or restore it from a copy"
            ) from None
        return cls.from_dict(values)

    # ---- mapping view (code written for the dict keeps working) -----------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in self._field_names():
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._field_names():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._field_names():
            raise KeyError(f"{key!r} is a field of RunRecord and cannot be deleted")
        del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    # ---- convenience ----------------------------------------------------------------------------
    def metric(self, split: str, protocol: str, name: str) -> float | None:
        """``record.metric("test", "full", "ndcg@10")``; ``None`` when absent."""
        value = (getattr(self, split, None) or {}).get(protocol, {}).get(name)
        return float(value) if isinstance(value, int | float) else None


# --------------------------------------------------------------------------------------------------
# building a record


def best_epoch(history: list[dict[str, Any]], best_step: int | None) -> float | None:
    """The epoch of ``best_step`` in a trainer's log history."""
    if not best_step:
        return None
    for entry in history:
        if entry.get("step") == best_step and "epoch" in entry:
            return entry["epoch"]
    return None


def epoch_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch training time, validation metrics and elapsed wall-clock seconds, merged by step."""
    merged: dict[int, dict[str, Any]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        if ("epoch_train_seconds" in entry or "elapsed_seconds" in entry
                or any(key.startswith("eval_") for key in entry)):
            merged.setdefault(step, {"step": step}).update(entry)
    return [merged[step] for step in sorted(merged)]


def summarize_seconds(values: list[float]) -> dict[str, Any]:
    """``{"median", "mean", "min", "max", "first", "n"}`` of a list of durations (``{"n": 0}`` when empty)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"median": median, "mean": sum(values) / len(values), "min": ordered[0], "max": ordered[-1],
            "first": values[0], "n": len(values)}  # fmt: skip


def elapsed_at_step(history: list[dict[str, Any]], step: int | None) -> float | None:
    """The ``elapsed_seconds`` recorded at ``step`` (after its validation), or ``None``."""
    if not step:
        return None
    for entry in history:
        if entry.get("step") == step and isinstance(entry.get("elapsed_seconds"), int | float):
            return float(entry["elapsed_seconds"])
    return None


REVISION_ENV = "BLOSSOM_HF_REVISION"


def source_revision() -> str | None:
    """The git commit of the running code: ``git rev-parse HEAD`` of the checkout that tracks this file
    (``-dirty`` appended when tracked files differ from it), else ``$BLOSSOM_HF_REVISION`` (for copies without
    ``.git``), else ``None``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name], cwd=here,
                                 capture_output=True, text=True, timeout=10)  # fmt: skip
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if tracked.returncode == 0 and head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
            return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(REVISION_ENV) or None


def training_arguments_record(args: Any) -> dict[str, Any]:
    """The main ``TrainingArguments`` values, for the record."""
    keys = (
        "learning_rate", "weight_decay", "lr_scheduler_type", "num_train_epochs",
        "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16", "seed", "optim",
        "max_grad_norm", "world_size",
    )  # fmt: skip
    return {key: getattr(args, key, None) for key in keys}


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a run depends on."""
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


def device_description() -> str:
    """The hardware, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()})"


def log_summary(record: dict[str, Any]) -> None:
    for split_name in ("valid", "test"):
        for protocol, metrics in record[split_name].items():
            logger.info(
                "%s %s: NDCG@10 %.4f  HR@10 %.4f  MRR@10 %.4f  (%d users)",
                split_name, protocol, metrics.get("ndcg@10", float("nan")),
                metrics.get("hit@10", float("nan")), metrics.get("mrr@10", float("nan")), metrics.get("users", 0),
            )  # fmt: skip
