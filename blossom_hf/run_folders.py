"""What keeps a training run's folder sound: its lock, atomic folder swaps, complete checkpoints, resume checks.

* :class:`OutputDirLock` -- one run per ``--output-dir``: a lock file names the holder (pid, host, start,
  command); a lock left by a dead process on this host is taken over with a warning.
* :func:`replace_dir` -- a folder written under a staging name replaces the target in one atomic exchange
  (``saving_blossomrec.exchange``, Linux ``renameat2``, the same swap ``save_pretrained`` and the Hub export
  use), so a kill leaves the old folder or the new one; where the system cannot exchange, by two renames
  (the old folder is kept under a ``.old`` name until the new one is in place; :func:`recover_dir` puts it
  back after a kill between them).
* :func:`complete_checkpoints` -- the ``checkpoint-N`` folders that hold everything a resume needs;
  ``--resume`` takes the latest of these and never a half-written one.
* :func:`check_resume` -- the arguments and data of a resumed run against those the run was started with
  (``run_arguments.json``): differences that change what is trained are refused with the differing fields;
  more epochs, another attention backend or other logging options are sound and continue.
* :func:`fault_point` -- a test hook: ``BLOSSOM_FAULT_INJECTION=<point>[:<step>]`` SIGKILLs the process at
  that point, to prove the above under a real kill.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputDirLockedError, ResumeMismatchError
from .models.blossomrec.saving_blossomrec import exchange, pid_alive
from .run_record import dumps_strict, write_text_atomic

logger = logging.getLogger(__name__)

LOCK_FILE = ".blossom-hf.lock"
RUN_ARGUMENTS_FILE = "run_arguments.json"
STAGING_DIR = ".staging"
FAULT_ENV = "BLOSSOM_FAULT_INJECTION"
CHECKPOINT_PREFIX = "checkpoint-"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------------------------------
# fault injection (tests)


def fault_point(name: str, step: int | None = None) -> None:
    """SIGKILL this process if ``$BLOSSOM_FAULT_INJECTION`` names this point (and this step, when given as
    ``point:step``). Does nothing otherwise."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, at_step = wanted.partition(":")
    if point != name or (at_step and step is not None and int(at_step) != step):
        return
    logger.warning("fault injection: killing the process at %s (step %s)", name, step)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# the lock


class OutputDirLock:
    """An exclusive lock on a run folder, held for the life of the ``with`` block.

    Raises:
        OutputDirLockedError: a live process holds the lock (the message says which, and what to do).
    """

    def __init__(self, output_dir: str | os.PathLike, command: list[str] | str | None = None):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.command = command
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def acquire(self) -> OutputDirLock:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": self.command if isinstance(self.command, str) else " ".join(map(str, self.command or []))}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
                    if age < 5.0:  # being written by its holder right now
                        time.sleep(0.2)
                        holder = self._holder()
                if holder is not None and (holder.get("host") != socket.gethostname()
                                           or pid_alive(int(holder.get("pid", -1)))):
                    raise OutputDirLockedError(
                        f"{self.output_dir} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                        f"started {holder.get('started')}: {holder.get('command') or '?'}); wait for it to finish, "
                        f"use another --output-dir, or delete {self.path} if that run is gone"
                    ) from None
                logger.warning(
                    "taking over the stale lock %s of a process that is gone (%s)", self.path,
                    f"pid {holder.get('pid')}, started {holder.get('started')}" if holder else "unreadable lock file",
                )  # fmt: skip
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(json.dumps(record))
            self.held = True
            return self
        raise OutputDirLockedError(f"could not take the lock {self.path}; delete it if no run uses {self.output_dir}")

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is None or holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------
# atomic folders


def _old_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def recover_dir(target: str | os.PathLike) -> None:
    """After a kill between the two renames of :func:`replace_dir`: put the kept old folder back (or drop it
    when the new one made it)."""
    target = Path(target)
    old = _old_name(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            logger.warning("restoring %s from %s (a previous save was interrupted)", target, old)
            old.rename(target)


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the complete folder ``staging`` in place of ``target`` (same file system): the old ``target`` is kept
    aside until the new one is in place, then deleted."""
    staging, target = Path(staging), Path(target)
    recover_dir(target)
    if target.exists() and exchange(staging, target):  # one atomic swap where the system has it
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
    else:
        old = _old_name(target)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    if staging.parent.name == STAGING_DIR:
        try:
            staging.parent.rmdir()  # only when empty
        except OSError:
            pass
    return target


def staging_path(output_dir: str | os.PathLike, name: str) -> Path:
    """A fresh staging folder for ``name`` inside ``output_dir/.staging`` (same file system as the target)."""
    path = Path(output_dir) / STAGING_DIR / name
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if digits.isdigit() else None


def is_complete_checkpoint(path: str | os.PathLike, need_optimizer: bool = True) -> bool:
    """A checkpoint folder with its trainer state, its weights and (unless ``need_optimizer`` is False) its
    optimizer state."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file() or not any((path / name).is_file() for name in WEIGHT_FILES):
        return False
    return not need_optimizer or (path / "optimizer.pt").is_file()


def complete_checkpoints(output_dir: str | os.PathLike, need_optimizer: bool = True) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir`` that a resume can use, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return [p for _, p in sorted(found) if is_complete_checkpoint(p, need_optimizer)]


def clean_output_dir(output_dir: str | os.PathLike) -> None:
    """Drop what an interrupted run left half-written: the staging folder and incomplete checkpoints (each
    named in a warning)."""
    output_dir = Path(output_dir)
    staging = output_dir / STAGING_DIR
    if staging.exists():
        logger.warning("removing %s: left by an interrupted save", staging)
        shutil.rmtree(staging, ignore_errors=True)
    if not output_dir.is_dir():
        return
    for path in output_dir.iterdir():
        if path.is_dir() and checkpoint_step(path) is not None and not is_complete_checkpoint(path, False):
            logger.warning("removing the incomplete checkpoint %s (an interrupted save)", path)
            shutil.rmtree(path, ignore_errors=True)
    recover_dir(output_dir / "best_model")


# --------------------------------------------------------------------------------------------------
# resume checks


def data_fingerprint(offsets: np.ndarray, items: np.ndarray, item_ids: list[str]) -> str:
    """SHA-256 of the preprocessed histories and the item numbering (what training actually sees)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(offsets, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(items, dtype=np.int64).tobytes())
    digest.update("\x1f".join(map(str, item_ids)).encode("utf-8"))
    return digest.hexdigest()


# Changing one of these at resume keeps the run sound: same model, same optimisation, same data.
SOUND_CHANGES = {
    "model": {"transformers_version", "_attn_implementation_autoset", "attn_implementation", "_attn_implementation",
              "architectures", "dtype", "torch_dtype", "auto_map"},
    "rec": {"patience", "eval_batch_size", "time_limit_minutes", "time_limit_at", "nonfinite_loss"},
    "training": {"num_train_epochs", "logging_steps", "disable_tqdm", "dataloader_num_workers", "report_to",
                 "save_total_limit", "per_device_eval_batch_size", "dataloader_pin_memory",
                 "dataloader_persistent_workers", "output_dir", "logging_dir", "run_name", "use_cpu"},
}


def save_run_arguments(output_dir: str | os.PathLike, arguments: dict[str, Any]) -> Path:
    """Write the arguments a run starts with (``run_arguments.json``), for :func:`check_resume`."""
    return write_text_atomic(Path(output_dir) / RUN_ARGUMENTS_FILE, dumps_strict(arguments) + "\n")


def _differences(group: str, saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    sound = SOUND_CHANGES.get(group, set())
    lines = []
    for key in sorted(set(saved) & set(now)):  # a field one library version lacks cannot be compared
        if key in sound:
            continue
        before, after = saved[key], now[key]
        if json.loads(dumps_strict(before)) != json.loads(dumps_strict(after)):
            lines.append(f"{key} {before!r} -> {after!r}")
    return lines


def check_resume(output_dir: str | os.PathLike, arguments: dict[str, Any], checkpoint: str | os.PathLike) -> None:
    """Refuse a resume whose arguments or data differ from the run's in a way that changes what is trained.

    ``arguments`` has the layout of ``run_arguments.json``: ``{"model": {...}, "rec": {...}, "training": {...},
    "data_fingerprint": "..."}``. More epochs are sound; as many epochs as the checkpoint already trained are not
    (nothing would be trained).

    Raises:
        ResumeMismatchError: naming every differing field, and what to do.
    """
    output_dir = Path(output_dir)
    path = output_dir / RUN_ARGUMENTS_FILE
    if not path.is_file():
        logger.warning("%s has no %s (a run of an older version): resuming without checking the arguments",
                       output_dir, RUN_ARGUMENTS_FILE)
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    if saved.get("data_fingerprint") != arguments.get("data_fingerprint"):
        problems.append("the data differ (another file, other contents, or other preprocessing options)")
    for group in ("model", "rec", "training"):
        problems += _differences(group, saved.get(group, {}), arguments.get(group, {}))
    if problems:
        raise ResumeMismatchError(
            f"--resume: the run in {output_dir} was started with other arguments or data: {'; '.join(problems)}; "
            "resume with the original values, or start a new run in another --output-dir"
        )
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    done, wanted = float(state.get("epoch") or 0.0), float(arguments.get("training", {}).get("num_train_epochs", 0))
    if wanted <= done + 1e-9:
        raise ResumeMismatchError(
            f"--resume: {checkpoint} has already trained {done:g} epochs and --epochs is {wanted:g}, so nothing would "
            f"be trained; pass --epochs larger than {done:g} to continue training"
        )
