"""Writing checkpoint folders safely: stage beside the target, then swap it in, keeping the old copy until
the new one is complete.

Flat like the rest of this folder (standard library, torch and huggingface_hub only), because
``BlossomRecModel.save_pretrained`` runs it on the trust_remote_code route too.

The swap (:func:`replace_folder`):

* a new target: the staged folder is renamed into place (one atomic rename);
* an existing folder of plain files: the files of the old folder that the new save does not rewrite (and
  that do not describe the old weights) are hard-linked into the staged folder, and the two folders are
  exchanged in one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux); where that call is missing, the old folder
  is renamed to a backup, the new one into place, and the backup deleted -- a crash between the two renames
  leaves the backup, which the next save or export puts back (:func:`recover_folder`);
* an existing folder with sub-folders (a Trainer ``output_dir`` holding ``checkpoint-*``): it cannot be
  swapped without moving the user's other data, so each staged file replaces its old copy by
  ``os.replace`` (every file atomic, the weights before the config), after all of them were written.

A read-only target (the folder or a file the save would replace) is refused before anything is written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: Files that describe one set of weights: never carried over from an old folder into a new save.
WEIGHT_BOUND_FILES = frozenset({"config.json", "generation_config.json", "item_vocabulary.json", "sample_scores.json"})
_STAGING_TAG = ".staging-"
_BACKUP_TAG = ".replaced-"


def is_weights_file(name: str) -> bool:
    """``model.safetensors``, its shards and index, or a legacy ``pytorch_model*.bin``."""
    if name.startswith("model"):
        return name.endswith((".safetensors", ".safetensors.index.json"))
    return name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json"))


def check_finite(state: Mapping[str, torch.Tensor], what: str = "the model") -> None:
    """Raise ``ValueError`` if a floating-point tensor of ``state`` holds NaN or inf."""
    bad = [
        name for name, tensor in state.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]  # fmt: skip
    if bad:
        raise ValueError(
            f"refusing to save {what}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {', '.join(bad[:3])}); "
            "training diverged -- lower the learning rate or go back to an earlier checkpoint"
        )


def real_target(target: str | os.PathLike) -> Path:
    """``target``, or the folder it links to: a save through a symlink replaces the linked folder's content."""
    target = Path(target)
    return target.resolve() if target.is_symlink() else target


def staging_folder(target: Path, kind: str = "save") -> Path:
    """A fresh, unique sibling of ``target`` (hidden; named after this process so no other save touches it)."""
    path = target.parent / f".{target.name}.{kind}{_STAGING_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    return path


def check_writable(target: Path, replaced: Iterable[str] = ()) -> None:
    """Refuse (``PermissionError``) a read-only target folder, or read-only files a save would replace."""
    parent = target.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save into {target}: its parent folder {parent} is not writable")
    if not target.exists():
        return
    if not target.is_dir():
        raise NotADirectoryError(f"cannot save into {target}: it exists and is not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(f"{target} is read-only: nothing was changed (make it writable, or save elsewhere)")
    locked = [name for name in replaced if (target / name).is_file() and not os.access(target / name, os.W_OK)]
    if locked:
        raise PermissionError(f"{target}: {', '.join(sorted(locked))} read-only: nothing was changed "
                              "(make the files writable, or save elsewhere)")  # fmt: skip


def _renameat2_exchange() -> object | None:
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2_exchange()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2``); ``False`` where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # old kernel or filesystem
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def _backups(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*{_BACKUP_TAG}*"), key=lambda p: p.stat().st_mtime)


def _process_alive(name: str) -> bool:
    try:
        pid = int(name.rsplit(_STAGING_TAG, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return True
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_folder(target: Path) -> None:
    """Undo what a crashed save left beside ``target``: put a backup back when the target is missing, and
    delete the staging folders and backups of processes that no longer run (never another live save's)."""
    target = Path(target)
    backups = [b for b in _backups(target) if not _process_alive(b.name.replace(_BACKUP_TAG, _STAGING_TAG))]
    if not target.exists() and backups:
        latest = backups.pop()
        os.rename(latest, target)
        logger.warning("Restored %s from %s (a save or export was interrupted while swapping)", target, latest.name)
    for leftover in backups + sorted(target.parent.glob(f".{target.name}.*{_STAGING_TAG}*")):
        if leftover.is_dir() and (leftover in backups or not _process_alive(leftover.name)):
            shutil.rmtree(leftover, ignore_errors=True)
            logger.info("Removed %s, left by an interrupted save", leftover)


def replace_folder(staging: Path, target: Path, *, merge: bool) -> None:
    """Move the complete folder ``staging`` to ``target`` (see the module doc); ``staging`` is gone afterwards.

    ``merge``: keep the old folder's other files (``save_pretrained``); otherwise the target becomes exactly
    ``staging`` (an export).
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
        return
    old_entries = list(target.iterdir())
    if merge and any(entry.is_dir() for entry in old_entries):
        _replace_files(staging, target)
        return
    if merge:
        for entry in old_entries:
            if (staging / entry.name).exists() or entry.name in WEIGHT_BOUND_FILES or is_weights_file(entry.name):
                continue
            try:
                os.link(entry, staging / entry.name)
            except OSError:
                shutil.copy2(entry, staging / entry.name)
    if exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
        return
    backup = target.parent / staging.name.replace(_STAGING_TAG, _BACKUP_TAG)
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _replace_files(staging: Path, target: Path) -> None:
    names = sorted(p.name for p in staging.iterdir())
    for old in target.iterdir():
        if old.is_file() and old.name not in names and (is_weights_file(old.name) or old.name in WEIGHT_BOUND_FILES):
            old.unlink()  # a stale shard or a file of the old weights
    order = sorted(names, key=lambda n: (n == "config.json", not is_weights_file(n), n))
    for name in order:
        os.replace(staging / name, target / name)
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("Replaced the model files in %s one by one (the folder holds sub-folders, so it is not swapped)",
                target)  # fmt: skip


def copy_model_code(folder: Path) -> list[str]:
    """Copy every module of this folder (except ``__init__.py``) into ``folder``: the Hub repo's flat code."""
    here = Path(__file__).resolve().parent
    names = []
    for source in sorted(here.glob("*.py")):
        if source.name != "__init__.py":
            shutil.copyfile(source, Path(folder) / source.name)
            names.append(source.name)
    return names


BASIC_CARD = """---
library_name: transformers
pipeline_tag: other
tags:
- recommender-system
- sequential-recommendation
- sparse-attention
- blossomrec
---

# BlossomRec checkpoint

A BlossomRec sequential recommender (arXiv [2512.13368](https://arxiv.org/abs/2512.13368)): block-level fused
sparse attention over a history of item ids, scoring every item as the next one. Saved by `save_pretrained`;
no evaluation is recorded with it (`blossom-hf export` writes a full card with metrics and data terms).

## How to use

```python
from transformers import AutoModel

REVISION = "main"  # pin the commit hash of the revision you checked
model = AutoModel.from_pretrained("{repo}", revision=REVISION, trust_remote_code=True)
print(model.recommend({history}, k=10)[0].items)
```

- {items} items (`item_vocabulary.json` maps raw ids to the model's indices), history window
  {window}, `attention_type={attention}`.
- With the `blossom_hf` package installed, `import blossom_hf` registers the model and `trust_remote_code` is
  not needed.
"""


def basic_model_card(config, vocabulary, repo_id: str | None = None) -> str:
    """A short card for a checkpoint saved without an evaluation record (what ``save_pretrained`` writes)."""
    raw = list(getattr(vocabulary, "raw_ids", None) or [])
    history = [raw[i] for i in range(min(3, len(raw)))] if raw else [1, 2, 3]
    return BASIC_CARD.format(
        repo=repo_id or "PATH_OR_REPO_ID", history=history, items=config.vocab_size - 1,
        window=config.max_history_length, attention=config.attention_type,
    )  # fmt: skip


__all__ = [
    "check_finite",
    "check_writable",
    "copy_model_code",
    "exchange",
    "pid_alive",
    "real_target",
    "recover_folder",
    "replace_folder",
    "staging_folder",
]
