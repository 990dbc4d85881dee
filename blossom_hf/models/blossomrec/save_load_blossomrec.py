"""Saving and loading a BlossomRec model: the ``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` overrides
of :class:`BlossomRecModel` (a mixin placed before ``PreTrainedModel``) and their checks. Saves are staged and
swapped in whole (the helpers are in saving_blossomrec.py); loads check the path, the weights against the config
and the item vocabulary."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .item_vocabulary import VOCABULARY_FILE, ItemVocabulary

logger = logging.getLogger(__name__)

__all__ = ["SaveLoadMixin"]


class SaveLoadMixin:
    """What ``PreTrainedModel`` saving and loading needs for this model (see the methods)."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` made safe, plus what a Hub repo of this model needs.

        The folder gets the weights and config, the item vocabulary, the flat code files of this model folder
        with an ``auto_map`` (``register_for_auto_class``, so ``AutoModel.from_pretrained(folder,
        trust_remote_code=True)`` works without blossom_hf) and, if it has none, a short model card. Everything
        is written into a sibling staging folder and swapped in only when complete (saving_blossomrec.py): a
        failed or killed save leaves an existing folder as it was.

        Raises:
            ValueError: a weight tensor holds NaN or inf (nothing is written).
            PermissionError: the folder, or a file the save would replace, is read-only (nothing is changed).
        """
        from .saving_blossomrec import (
            basic_model_card,
            check_finite,
            check_writable,
            copy_model_code,
            real_target,
            recover_folder,
            replace_folder,
            staging_folder,
        )

        if "remote_code" in kwargs:
            raise TypeError("save_pretrained(remote_code=...) was removed: every save writes the code files and "
                            "auto_map (register_for_auto_class); drop the argument")  # fmt: skip
        is_main = args[0] if args else kwargs.get("is_main_process", True)
        if not is_main:
            return super().save_pretrained(save_directory, *args, **kwargs)
        push = kwargs.pop("push_to_hub", False)
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
        state = kwargs.get("state_dict")
        check_finite(state if state is not None else self.state_dict())
        target = real_target(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_folder(target)
        check_writable(target, ["config.json", "model.safetensors", VOCABULARY_FILE])
        staging = staging_folder(target)
        try:
            result = super().save_pretrained(staging, *args, **kwargs)
            if self.vocabulary is not None:
                self.vocabulary.save(staging)
            copy_model_code(staging)  # every module, also those no relative import names
            if not (target / "README.md").is_file():
                (staging / "README.md").write_text(basic_model_card(self.config, self.vocabulary), encoding="utf-8")
            replace_folder(staging, target, merge=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if push:
            self.push_to_hub(hub_kwargs.pop("repo_id", target.resolve().name), token=kwargs.get("token"), **hub_kwargs)
        return result

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, max_shard_size: int | str | None = "50GB",
                    tags: list[str] | None = None, **kwargs):
        """Upload what :meth:`save_pretrained` writes (weights, config with ``auto_map``, flat code, item
        vocabulary) to the Hub; the repo's own model card is kept, a new repo gets this model's short card
        (not transformers' template). A full card with metrics: ``blossom-hf export`` then ``blossom-hf push``."""
        import tempfile

        from huggingface_hub import HfApi, ModelCard

        from .saving_blossomrec import basic_model_card

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "upload"
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            card_path = folder / "README.md"
            try:
                has_card = api.file_exists(repo_id, "README.md", revision=revision)
            except Exception:  # a revision that does not exist yet
                has_card = False
            if has_card:
                card_path.unlink()
            else:
                card = ModelCard(basic_model_card(self.config, self.vocabulary, repo_id))
                card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *(tags or [])]))
                card.save(card_path)
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision, create_pr=create_pr,
                commit_message=commit_message or "Upload BlossomRecModel", commit_description=commit_description,
            )  # fmt: skip

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """``PreTrainedModel.from_pretrained`` (safetensors only) plus the item vocabulary when present.

        Args:
            strict: a checkpoint whose weights do not match the model exactly (a missing tensor would be left at
                its random init; an unexpected one, e.g. blossom weights under ``attention_type: full``, means the
                config and the weights disagree) raises ValueError listing the keys. ``strict=False`` loads anyway
                and logs a warning.

        Raises:
            FileNotFoundError: a local path that does not exist (and cannot be a Hub repo id).
            OSError: ``model.safetensors`` is damaged (truncated download, corrupted header); the message names
                the file and how to get a good copy.
            ValueError: the config is invalid or from a newer format version, the weights do not match the config
                (``strict``), or ``item_vocabulary.json`` is unreadable or does not fit the weights.
        """
        _check_local_path(pretrained_model_name_or_path)
        kwargs.setdefault("use_safetensors", True)
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            local = Path(str(pretrained_model_name_or_path))
            where = (local / (kwargs.get("subfolder") or "") / "model.safetensors") if local.is_dir() else (
                f"model.safetensors of {pretrained_model_name_or_path} (revision {kwargs.get('revision') or 'main'})"
            )
            raise OSError(
                f"Cannot read the weights in {where}: the file is damaged or incomplete (safetensors says: {err}). "
                "If it was downloaded, download it again (from_pretrained(..., force_download=True), or delete it "
                "from the Hugging Face cache); if it was exported locally, export the checkpoint again."
            ) from err
        _check_loading_info(pretrained_model_name_or_path, model, info, strict,
                            ignore_mismatched=bool(kwargs.get("ignore_mismatched_sizes")))
        vocabulary = _load_vocabulary(pretrained_model_name_or_path, kwargs)
        if vocabulary is not None and len(vocabulary) + 1 != model.config.vocab_size:
            raise ValueError(
                f"{pretrained_model_name_or_path}: item_vocabulary.json has {len(vocabulary)} items but the model's "
                f"vocab_size is {model.config.vocab_size} (items + 1 for padding): the files do not belong together"
            )
        model.vocabulary = vocabulary
        return (model, info) if wants_info else model


def _check_local_path(path_or_repo) -> None:
    """A path that cannot be a Hub repo id ("name" or "org/name") and does not exist: say so in one line."""
    text = os.fspath(path_or_repo) if isinstance(path_or_repo, os.PathLike) else str(path_or_repo)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{text} is a file; from_pretrained needs the checkpoint folder that holds it")
        return
    parts = text.replace("\\", "/").split("/")
    looks_local = (isinstance(path_or_repo, os.PathLike) or text.startswith((".", "/", "~")) or len(parts) > 2
                   or "\\" in text or any(not p for p in parts))
    if looks_local:
        raise FileNotFoundError(
            f"no checkpoint folder at {text}: check the path (a Hugging Face Hub id has the form 'org/name')"
        )


def _check_loading_info(source, model, info: dict, strict: bool, ignore_mismatched: bool) -> None:
    """Missing, unexpected or mismatched weights: ValueError (strict) or a warning (the load report)."""
    problems = []
    kinds = ("missing_keys", "unexpected_keys") + (() if ignore_mismatched else ("mismatched_keys",))
    for kind in kinds:
        keys = sorted(str(k) for k in (info.get(kind) or ()))
        if keys:
            problems.append(f"{kind.replace('_', ' ')}: {keys[:6]}{' ...' if len(keys) > 6 else ''}")
    if not problems:
        return
    message = (f"{source}: the weights do not match the config (attention_type={model.config.attention_type!r}); "
               + "; ".join(problems))
    if strict:
        raise ValueError(message + ". Re-export the checkpoint, fix config.json, or pass strict=False to load anyway "
                         "(missing weights keep their random init)")
    logger.warning("%s (strict=False: loaded anyway, missing weights keep their random init)", message)


def _load_vocabulary(path_or_repo, kwargs: dict) -> ItemVocabulary | None:
    """The checkpoint's ``item_vocabulary.json`` (local folder or Hub repo), or ``None`` if it has none."""
    local = Path(str(path_or_repo))
    subfolder = kwargs.get("subfolder") or ""
    if local.is_dir():
        candidate = local / subfolder / VOCABULARY_FILE
        return ItemVocabulary.load(candidate) if candidate.is_file() else None
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "force_download", "proxies", "token", "revision",
                                         "local_files_only", "subfolder") if k in kwargs}
    resolved = cached_file(str(path_or_repo), VOCABULARY_FILE, _raise_exceptions_for_missing_entries=False,
                           **hub_kwargs)
    return ItemVocabulary.load(resolved) if resolved else None


