"""Export a trained BlossomRec as a Hugging Face Hub model repository, and check, complete and verify one.

:func:`export_hub_folder` writes exactly what a Hub repo holds::

    config.json               the config, with auto_map for trust_remote_code
    model.safetensors         the weights
    item_vocabulary.json      raw item id <-> index (0 = padding)
    *.py                      the model's flat code files (remote code), as save_pretrained writes them
    README.md                 model card (blossom_hf.model_card): YAML metadata + sections, from metrics.json
    metrics.json              the training run's record, local paths redacted (blossom_hf.export_record)
    sample_scores.json        top-10 items and scores of a few fixed histories (blossom_hf.sample_scores)

and nothing else: never interaction data (the MovieLens licence forbids redistribution), never a pickle.
An export is staged in a sibling folder and swapped in only once complete and verified (a failed or killed
export keeps the old folder; ``saving_blossomrec.replace_folder``).

The bundled folders (``model_cards/*/``, the ML-1M one shipped inside the package) hold the artefacts only
(no ``*.py``): :func:`complete_hub_folder` adds the installed package's model code when a folder is pushed
(``blossom-hf push``) or loaded through the remote-code route in the tests; :func:`verify_hub_folder` and
:func:`check_repo_id` are the checks ``blossom-hf push`` makes before an upload.

The card, the record and the sample scores live in their own modules; every name they define is importable
from here as well (``from blossom_hf.hub import build_model_card`` keeps working).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .data.presets import _ML1M_SAMPLE_HISTORIES, AMAZON_CITATIONS, KNOWN_DATASETS, MOVIELENS_CITATION, DatasetInfo  # noqa: F401
from .errors import HubExportError
from .export_record import (
    METRICS_FILE,
    attach_evaluation_subset,
    dataset_key,
    default_redaction_roots,
    load_metrics,
    merge_evaluation,
    redact_paths,
    reported_test_metrics,
)
from .model_card import (
    BLOSSOMREC_CITATION,
    BUNDLED_REPO_IDS,
    CARD_FILE,
    DATA_TERMS_LINKS,
    DEFAULT_TAGS,
    METRIC_NAMES,
    TASK_NAME,
    TASK_TYPE,
    CardOptions,
    build_model_card,
    eval_results_from_metrics,
    finetuning_section,
)
from .models.blossomrec.saving_blossomrec import (
    check_finite,
    check_writable,
    copy_model_code,
    real_target,
    recover_folder,
    replace_folder,
    staging_folder,
)
from .sample_scores import (
    SAMPLE_SCORES_FILE,
    SAMPLE_SCORES_FORMAT,
    check_sample_scores,
    compare_sample_scores,
    compute_sample_scores,
    default_sample_histories,
)

logger = logging.getLogger(__name__)

#: Files (besides the model's flat ``*.py`` code files) that an exported folder may hold.
HUB_DATA_FILES = ("config.json", "model.safetensors", "item_vocabulary.json", CARD_FILE, METRICS_FILE,
                  SAMPLE_SCORES_FILE)  # fmt: skip
#: The code files a Hub folder must have for ``trust_remote_code`` (the others come with them).
REQUIRED_CODE_FILES = ("configuration_blossomrec.py", "modeling_blossomrec.py")
#: The bundled ML-1M checkpoint, shipped as package data (``blossom-hf recommend`` uses it by default).
BUNDLED_ML1M = Path(__file__).resolve().parent / "checkpoints" / "blossomrec-ml1m"


def export_hub_folder(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    metrics: Mapping[str, Any] | str | os.PathLike,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    dataset: str | DatasetInfo | None = None,
    sample_histories: Iterable[Sequence[Any]] | None = None,
    card_options: CardOptions | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Write a Hub model repository for ``model`` into ``folder`` (see the module doc for the files).

    Args:
        model: a ``BlossomRecModel`` with ``model.vocabulary`` set (as training leaves it).
        folder: the target folder; created. An existing non-empty folder needs ``overwrite=True``.
        metrics: the run's record (``metrics.json`` path, its folder, or the dict).
        model_name: card title and ``model-index`` name (default: the folder's name).
        repo_id: the Hub repo it is meant for (shown in the usage snippet).
        dataset: a :data:`KNOWN_DATASETS` key or a :class:`DatasetInfo` (default: read from the metrics).
        sample_histories: histories of raw ids for ``sample_scores.json`` (default
            :func:`default_sample_histories`).
        card_options: full control of the card (``model_name``, ``repo_id`` and ``dataset`` then come from it).
        overwrite: replace an existing export in ``folder``.
        verify: reload the folder and check that it reproduces ``sample_scores.json``.

    Returns:
        The folder.

    Raises:
        HubExportError: no vocabulary, vocabulary/size mismatch, missing test metrics, a folder in the way,
            or a reloaded model that does not reproduce its sample scores.
    """
    folder = real_target(folder)
    record = load_metrics(metrics)
    vocabulary = getattr(model, "vocabulary", None)
    if vocabulary is None:
        raise HubExportError("model.vocabulary is not set: a Hub checkpoint must carry its item vocabulary")
    if len(vocabulary) + 1 != model.config.vocab_size:
        raise HubExportError(
            f"the vocabulary has {len(vocabulary)} items but the model's vocab_size is {model.config.vocab_size} "
            "(it must be the number of items + 1 for padding)"
        )
    reported_test_metrics(record)  # raises early on a record without test results
    try:
        check_finite(model.state_dict(), "the checkpoint")
    except ValueError as err:
        raise HubExportError(str(err)) from None
    if isinstance(dataset, str):
        if dataset not in KNOWN_DATASETS:
            known = ", ".join(KNOWN_DATASETS)
            raise HubExportError(f"unknown dataset {dataset!r}; known: {known} (or pass a DatasetInfo)")
        dataset = KNOWN_DATASETS[dataset]
    if card_options is None:
        card_options = CardOptions(model_name=model_name or folder.resolve().name, repo_id=repo_id, dataset=dataset)
    else:
        card_options = dataclasses.replace(card_options)  # filled in below; the caller's copy stays as it was
    if card_options.dataset is None:
        key = dataset_key(record)
        card_options.dataset = KNOWN_DATASETS.get(key) if key else None
    _check_target(folder, overwrite)
    key = card_options.dataset.key if card_options.dataset else None
    histories = [list(h) for h in sample_histories] if sample_histories is not None else \
        default_sample_histories(vocabulary, key)  # fmt: skip
    samples = compute_sample_scores(model, histories)
    if card_options.example_history is None:
        card_options.example_history = histories[0]
    record = redact_paths(record, default_redaction_roots(record))

    # Write next to the target and swap at the end (saving_blossomrec.replace_folder): a failed or killed
    # export leaves the old folder as it was, and no export ever deletes another one's staging folder.
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    check_writable(folder, [p.name for p in folder.iterdir()] if folder.is_dir() else [])
    staging = staging_folder(folder, "export")
    try:
        model.save_pretrained(staging)
        (staging / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (staging / SAMPLE_SCORES_FILE).write_text(json.dumps(samples, indent=2) + "\n", encoding="utf-8")
        build_model_card(record, card_options).save(staging / CARD_FILE)
        check_folder_contents(staging)
        if verify:
            problems = check_sample_scores(type(model).from_pretrained(staging), samples)
            if problems:
                raise HubExportError(f"the reloaded model does not reproduce sample_scores.json: {problems[:3]}")
        replace_folder(staging, folder, merge=False)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Exported %s (%s)", folder, ", ".join(sorted(p.name for p in folder.iterdir())))
    return folder


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise HubExportError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise HubExportError(f"{folder} is not empty; pass overwrite=True (--overwrite) to replace the export")
        unexpected = [p.name for p in folder.iterdir() if not _is_hub_file(p)]
        if unexpected:
            raise HubExportError(
                f"{folder} holds files an export does not write ({unexpected[:5]}); refusing to overwrite it"
            )


def _is_hub_file(path: Path) -> bool:
    return path.is_file() and (path.name in HUB_DATA_FILES or path.suffix == ".py" or path.name == ".gitattributes")


def check_folder_contents(folder: str | os.PathLike, require_code: bool = True) -> list[str]:
    """The folder's file names; raises :class:`HubExportError` on anything an export must not hold.

    ``require_code=False`` accepts an artefacts-only folder (the bundled ones: no ``*.py``, added at push).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubExportError(f"{folder} is not a folder (expected an exported Hub folder)")
    names = sorted(p.name for p in folder.iterdir())
    stray = [n for n in names if not _is_hub_file(folder / n)]
    if stray:
        raise HubExportError(f"{folder}: unexpected entries {stray} (an export holds only {HUB_DATA_FILES} and *.py)")
    missing = [n for n in HUB_DATA_FILES if n not in names] + [
        n for n in (REQUIRED_CODE_FILES if require_code else ()) if n not in names
    ]
    if missing:
        raise HubExportError(f"{folder}: missing {missing}")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HubExportError(f"{folder}/config.json is not valid JSON: {err}") from None
    if "auto_map" not in config:
        raise HubExportError(f"{folder}/config.json has no auto_map: export it again with `blossom-hf export`")
    return names


def complete_hub_folder(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy the Hub folder ``source`` to the new folder ``target`` with the installed package's model code.

    The bundled folders hold artefacts only; this is what a Hub repo of one looks like (what ``blossom-hf push``
    uploads). A ``*.py`` file already in ``source`` is replaced by the package's, the code the checks run.
    """
    source, target = Path(source), Path(target)
    check_folder_contents(source, require_code=False)
    target.mkdir(parents=True, exist_ok=False)
    for path in sorted(source.iterdir()):
        if path.suffix != ".py":
            shutil.copy2(path, target / path.name)
    copy_model_code(target)
    return target


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub model id (``NAMESPACE/NAME``); else a one-line ``HubExportError``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubExportError(f"invalid Hub repo id {repo_id!r}: {str(err).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise HubExportError(f"invalid Hub repo id {repo_id!r}: expected NAMESPACE/NAME, e.g. "
                             f"{BUNDLED_REPO_IDS['blossomrec-ml1m']}")  # fmt: skip
    return repo_id


def verify_hub_folder(folder: str | os.PathLike) -> None:
    """Load ``folder`` with the library classes and check it reproduces its ``sample_scores.json``.

    Raises:
        OSError: damaged or truncated weights (the model's own message: which file, how to get a good copy).
        HubExportError: a folder that does not load, or whose model does not reproduce its sample scores.
    """
    from .models.blossomrec import BlossomRecModel

    folder = Path(folder)
    try:
        expected = json.loads((folder / SAMPLE_SCORES_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HubExportError(f"{folder / SAMPLE_SCORES_FILE} is not valid JSON: {err}") from None
    try:
        model = BlossomRecModel.from_pretrained(folder, attn_implementation="sdpa")
    except OSError:
        raise
    except Exception as err:  # any load failure is reported as this folder's problem
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubExportError(f"{folder} does not load: {reason}") from None
    problems = check_sample_scores(model, expected)
    if problems:
        raise HubExportError(f"{folder}: the weights do not reproduce sample_scores.json ({'; '.join(problems[:2])}); "
                             "the folder's files do not belong together -- export it again")  # fmt: skip


def refresh_model_card(folder: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Rebuild ``folder/README.md`` from the folder's own ``metrics.json`` (after a change of the card builder)."""
    folder = Path(folder)
    record = load_metrics(folder / METRICS_FILE)
    samples = json.loads((folder / SAMPLE_SCORES_FILE).read_text(encoding="utf-8"))
    options = CardOptions(model_name=folder.resolve().name,
                          repo_id=repo_id or BUNDLED_REPO_IDS.get(folder.resolve().name),
                          example_history=samples["samples"][0]["history"])  # fmt: skip
    key = dataset_key(record)
    options.dataset = KNOWN_DATASETS.get(key) if key else None
    if record.get("finetuning") and not options.extra_sections:
        options.extra_sections = {"Fine-tuning": finetuning_section(record["finetuning"])}
    card = str(build_model_card(record, options))
    temporary = folder / f".{CARD_FILE}.tmp-{os.getpid()}"
    temporary.write_text(card, encoding="utf-8")
    os.replace(temporary, folder / CARD_FILE)
    return folder / CARD_FILE


__all__ = [
    # this module: the Hub folder
    "BUNDLED_ML1M",
    "HUB_DATA_FILES",
    "REQUIRED_CODE_FILES",
    "check_folder_contents",
    "check_repo_id",
    "complete_hub_folder",
    "export_hub_folder",
    "refresh_model_card",
    "verify_hub_folder",
    # re-exported from blossom_hf.errors, .export_record, .model_card, .sample_scores and .data.presets
    "AMAZON_CITATIONS",
    "BLOSSOMREC_CITATION",
    "BUNDLED_REPO_IDS",
    "CARD_FILE",
    "DATA_TERMS_LINKS",
    "DEFAULT_TAGS",
    "KNOWN_DATASETS",
    "METRICS_FILE",
    "METRIC_NAMES",
    "MOVIELENS_CITATION",
    "SAMPLE_SCORES_FILE",
    "SAMPLE_SCORES_FORMAT",
    "TASK_NAME",
    "TASK_TYPE",
    "CardOptions",
    "DatasetInfo",
    "HubExportError",
    "attach_evaluation_subset",
    "build_model_card",
    "check_sample_scores",
    "compare_sample_scores",
    "compute_sample_scores",
    "dataset_key",
    "default_redaction_roots",
    "default_sample_histories",
    "eval_results_from_metrics",
    "finetuning_section",
    "load_metrics",
    "merge_evaluation",
    "redact_paths",
    "reported_test_metrics",
]
