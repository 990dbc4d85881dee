"""Export a trained BlossomRec as a Hugging Face Hub model repository, with a model card built from metrics.

:func:`export_hub_folder` writes exactly what a Hub repo holds::

    config.json               the config, with auto_map for trust_remote_code
    model.safetensors         the weights
    item_vocabulary.json      raw item id <-> index (0 = padding)
    *.py                      the model's flat code files (remote code), as save_pretrained writes them
    README.md                 model card: YAML metadata (tags, datasets, model-index) + the sections below
    metrics.json              the training run's record (local paths redacted)
    sample_scores.json        top-10 items and scores of a few fixed histories, to check a loaded model

and nothing else: never interaction data (the MovieLens licence forbids redistribution), never a
pickle. The card is generated from ``metrics.json`` as written by :func:`blossom_hf.training.run_training`:
results under both ranking protocols (the ``model-index`` lists the test metrics), the exact protocol,
the training command, hardware and software, limitations, the data's terms and the citations.

The bundled folders (``model_cards/*/``, the ML-1M one shipped inside the package) hold the artefacts only
(no ``*.py``): :func:`complete_hub_folder` adds the installed package's model code when a folder is pushed
(``blossom-hf push``) or loaded through the remote-code route in the tests. An export is staged in a sibling
folder and swapped in only once complete and verified (a failed or killed export keeps the old folder).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data.presets import _ML1M_SAMPLE_HISTORIES, AMAZON_CITATIONS, KNOWN_DATASETS, MOVIELENS_CITATION, DatasetInfo  # noqa: F401
from .models.blossomrec.saving_blossomrec import (
    check_finite,
    check_writable,
    copy_model_code,
    real_target,
    recover_folder,
    replace_folder,
    staging_folder,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SAMPLE_SCORES_FILE = "sample_scores.json"
CARD_FILE = "README.md"
SAMPLE_SCORES_FORMAT = "blossomrec-sample-scores"
DEFAULT_TAGS = ("recommender-system", "sequential-recommendation", "sparse-attention", "blossomrec")
TASK_TYPE = "sequential-recommendation"
TASK_NAME = "Sequential recommendation (next item)"
METRIC_NAMES = {"hit": "HR", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR"}
#: Files (besides the model's flat ``*.py`` code files) that an exported folder may hold.
HUB_DATA_FILES = ("config.json", "model.safetensors", "item_vocabulary.json", CARD_FILE, METRICS_FILE,
                  SAMPLE_SCORES_FILE)  # fmt: skip
#: The code files a Hub folder must have for ``trust_remote_code`` (the others come with them).
REQUIRED_CODE_FILES = ("configuration_blossomrec.py", "modeling_blossomrec.py")
#: The one Hub repo id of each bundled checkpoint (cards, README, commands use these and no other).
BUNDLED_REPO_IDS = {
    "blossomrec-ml1m": "blossom-hf/blossomrec-ml1m",
    "blossomrec-beauty": "blossom-hf/blossomrec-beauty",
    "blossomrec-video-games": "blossom-hf/blossomrec-video-games",
}
#: The bundled ML-1M checkpoint, shipped as package data (``blossom-hf recommend`` uses it by default).
BUNDLED_ML1M = Path(__file__).resolve().parent / "checkpoints" / "blossomrec-ml1m"
#: Where each dataset's terms of use are published (the cards' ``license_link``: the weights follow the data).
DATA_TERMS_LINKS = {
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m-README.txt",
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt",
    "beauty": "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
    "video-games": "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
}

BLOSSOMREC_CITATION = """@inproceedings{ma2026blossomrec,
  title     = {BlossomRec: Block-level Fused Sparse Attention Mechanism for Sequential Recommendations},
  author    = {Ma, M. and Li, X. and Wang, W. and Du, Z. and Gao, J. and Jia, P. and Ye, Y. and Wang, Y. and
               Weng, Y. and Luo, W. and Han, X. and Zhao, X.},
  booktitle = {Proceedings of the ACM Web Conference 2026 (WWW '26)},
  year      = {2026},
  note      = {arXiv:2512.13368}
}"""
# An absolute local path inside a string (not a URL, not a relative path, not "a / b").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~>:/])/[^\s`'\"(),;:]+")


class HubExportError(ValueError):
    """The model, the metrics or the target folder cannot make a valid Hub repository."""


# --------------------------------------------------------------------------------------------------
# metrics.json


def load_metrics(metrics: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A run record: a dict, a ``metrics.json`` file, or a folder holding one."""
    if isinstance(metrics, Mapping):
        return copy.deepcopy(dict(metrics))
    path = Path(metrics)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics record at {path} (expected the metrics.json of a training run)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HubExportError(f"{path} is not valid JSON: {err}") from None


def dataset_key(metrics: Mapping[str, Any]) -> str | None:
    """The data preset a run trained on (``ml-1m``, ...), read from its record; ``None`` if not a preset."""
    data = metrics.get("data") or {}
    spec = data.get("data_spec") or {}
    source = data.get("source") or {}
    for candidate in (source.get("preset"), spec.get("path")):
        if isinstance(candidate, str) and candidate in KNOWN_DATASETS:
            return candidate
    return None


def reported_test_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{protocol: {metric@K: value}}`` of the test split (``users`` dropped)."""
    test = metrics.get("test")
    if not isinstance(test, Mapping) or not test:
        raise HubExportError("the metrics record has no 'test' results (expected run_training's metrics.json)")
    return {
        protocol: {k: float(v) for k, v in values.items() if "@" in k and _is_number(v)}
        for protocol, values in test.items()
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def redact_paths(value: Any, roots: Mapping[str, str | os.PathLike] | None = None) -> Any:
    """Replace local absolute paths in a JSON-like value, so nothing about the machine is published.

    Known roots become placeholders (``<data>/ml-1m/...``, ``<repo>/...``, ``~/...``); any other absolute
    path keeps only its last component (``<local>/run1``).
    """
    if roots is None:
        roots = default_redaction_roots()
    ordered = sorted(((str(Path(p)), name) for name, p in roots.items() if p), key=lambda x: -len(x[0]))

    def one(match: re.Match) -> str:
        text = match.group(0)
        for prefix, name in ordered:
            if text == prefix or text.startswith(prefix + "/"):
                return name + text[len(prefix):]
        return "<local>/" + Path(text).name if text.count("/") >= 2 else text

    def walk(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        if isinstance(item, str) and "/" in item:
            return _ABSOLUTE_PATH.sub(one, item)
        return item

    return walk(value)


def default_redaction_roots(metrics: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Placeholders for known local roots: ``~``, the checkout (``<repo>``), and the data folder (``<data>``:
    ``$BLOSSOM_DATA_DIR``, or the folder a run's record says its data preset was read from)."""
    roots = {"~": str(Path.home())}
    roots["<repo>"] = str(Path(__file__).resolve().parents[1])
    data_root = _record_data_root(metrics) if metrics is not None else None
    env = os.environ.get("BLOSSOM_DATA_DIR")
    if data_root or env:
        roots["<data>"] = data_root or env
    return roots


def _record_data_root(metrics: Mapping[str, Any]) -> str | None:
    data = metrics.get("data") or {}
    spec = data.get("data_spec") or {}
    if isinstance(spec.get("data_dir"), str) and spec["data_dir"].startswith("/"):
        return spec["data_dir"]
    source = data.get("source") or {}
    preset, path = source.get("preset"), source.get("path")
    if isinstance(preset, str) and isinstance(path, str) and path.startswith("/"):
        for parent in Path(path).parents:
            if parent.name == preset:  # <data>/<preset>/<file>
                return str(parent.parent)
    return None


# --------------------------------------------------------------------------------------------------
# sample scores


def default_sample_histories(vocabulary: Any, key: str | None = None) -> list[list[Any]]:
    """A few fixed histories of raw ids, never taken from a user's data.

    For ML-1M: three hand-picked sets of well-known movies. Otherwise: the first item, then five and
    eight items spread evenly over the vocabulary (deterministic, so a re-export gives the same ones).
    """
    raw_ids = vocabulary.raw_ids
    if key == "ml-1m" and all(i in vocabulary for history in _ML1M_SAMPLE_HISTORIES for i in history):
        return [list(h) for h in _ML1M_SAMPLE_HISTORIES]
    n = len(raw_ids)
    histories = [[raw_ids[0]]]
    for size in (5, 8):
        step = max(1, n // (size + 1))
        histories.append([raw_ids[min(n - 1, step * (j + 1))] for j in range(min(size, n))])
    return histories


@torch.no_grad()
def compute_sample_scores(model: torch.nn.Module, histories: Sequence[Sequence[Any]], k: int = 10) -> dict[str, Any]:
    """Top-``k`` raw ids and scores of each history, computed on a float32 CPU copy of ``model``."""
    if getattr(model, "vocabulary", None) is None:
        raise HubExportError("the model has no item vocabulary (model.vocabulary); cannot compute sample scores")
    cpu = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    k = min(k, cpu.config.num_items)
    recommendations = cpu.recommend([list(h) for h in histories], k=k)
    return {
        "format": SAMPLE_SCORES_FORMAT,
        "version": 1,
        "k": k,
        "attn_implementation": cpu.config._attn_implementation,
        "dtype": "float32",
        "device": "cpu",
        "torch": torch.__version__,
        "samples": [
            {"history": list(h), "items": list(r.items), "scores": [float(s) for s in r.scores]}
            for h, r in zip(histories, recommendations, strict=True)
        ],
    }


def check_sample_scores(model: torch.nn.Module, expected: Mapping[str, Any], atol: float = 1e-4) -> list[str]:
    """Recompute ``expected`` (a ``sample_scores.json``) with ``model``; return the differences (empty = same)."""
    if expected.get("format") != SAMPLE_SCORES_FORMAT:
        return [f"not a sample-scores record (format {expected.get('format')!r})"]
    got = model.recommend([s["history"] for s in expected["samples"]], k=int(expected["k"]))
    return compare_sample_scores(expected, [r.items for r in got], [r.scores for r in got], atol)


def compare_sample_scores(
    expected: Mapping[str, Any], items: Sequence[Sequence[Any]], scores: Sequence[Sequence[float]], atol: float = 1e-4
) -> list[str]:
    """Differences between ``expected`` (a ``sample_scores.json``) and recomputed top-k ``items``/``scores``.

    Scores must agree within ``atol`` (plus 1e-5 relative); the ids must be the same, except that items whose
    scores lie within that tolerance of each other may swap places.
    """
    samples = expected.get("samples") or []
    if len(items) != len(samples) or len(scores) != len(samples):
        return [f"expected {len(samples)} histories, got {len(items)}"]
    problems: list[str] = []
    for index, (sample, got_items, got_scores) in enumerate(zip(samples, items, scores, strict=True)):
        if len(got_items) != len(sample["items"]):
            problems.append(f"history {index}: {len(got_items)} items, expected {len(sample['items'])}")
            continue
        tol = atol + 1e-5 * max(abs(s) for s in sample["scores"])
        got = {str(i): float(s) for i, s in zip(got_items, got_scores, strict=True)}
        for rank, (item, score) in enumerate(zip(sample["items"], sample["scores"], strict=True)):
            here_item, here_score = got_items[rank], float(got_scores[rank])
            if str(here_item) == str(item):
                if abs(here_score - score) > tol:
                    problems.append(f"history {index}, rank {rank + 1}: item {item!r} scores {here_score:.6g}, "
                                    f"expected {score:.6g}")  # fmt: skip
            elif not (str(item) in got and abs(got[str(item)] - score) <= tol and abs(here_score - score) <= 2 * tol):
                problems.append(f"history {index}, rank {rank + 1}: got item {here_item!r} (score {here_score:.6g}), "
                                f"expected {item!r} (score {score:.6g})")  # fmt: skip
    return problems


# --------------------------------------------------------------------------------------------------
# model card


@dataclass
class CardOptions:
    """What the model card says beyond the metrics record.

    Attributes:
        model_name: the model's name (``model-index`` name, card title).
        repo_id: the Hub repo the folder is meant for (used in the usage snippet).
        dataset: the training data (default: recognised from the metrics record).
        license: the card's licence id; ``other`` with ``license_name`` (default) because the weights are
            derived from data licensed for research use only.
        base_model: the checkpoint this one was fine-tuned from (a Hub repo id), if any.
        extra_sections: more ``{heading: markdown}`` sections, placed before the limitations.
        tags: extra tags (the four default ones are always present).
        training_command: overrides the command recorded in the metrics.
        hardware: overrides the device recorded in the metrics.
        example_history: raw ids for the usage snippet (default: a placeholder, or well-known ML-1M movies).
    """

    model_name: str
    repo_id: str | None = None
    dataset: DatasetInfo | None = None
    license: str = "other"
    license_name: str | None = "research-use-only"
    license_link: str | None = None
    base_model: str | None = None
    extra_sections: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    training_command: str | None = None
    hardware: str | None = None
    example_history: list[Any] | None = None


def _metric_label(key: str) -> str:
    name, _, cutoff = key.partition("@")
    return f"{METRIC_NAMES.get(name, name.upper())}@{cutoff}"


def eval_results_from_metrics(metrics: Mapping[str, Any], dataset: DatasetInfo | None) -> list[EvalResult]:
    """One :class:`EvalResult` per test metric and protocol (``full``, ``uni100``, ...)."""
    dataset_id = dataset.dataset_id if dataset else "custom"
    dataset_name = dataset.pretty_name if dataset else "custom interaction log"
    window = (metrics.get("model_config") or {}).get("max_history_length")
    results = []
    for protocol, values in reported_test_metrics(metrics).items():
        args = {"split": "leave-one-out by time", "protocol": protocol, "ties": "pessimistic"}
        if window:
            args["history_window"] = int(window)
        if protocol.startswith("uni"):
            args["negatives"] = "drawn once, uniformly from items the user never interacted with"
        for key, value in values.items():
            if key.startswith("recall@"):
                continue  # identical to hit@K with one held-out item; listed once
            results.append(
                EvalResult(
                    task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=dataset_id, dataset_name=dataset_name,
                    dataset_config=protocol, dataset_split="test", dataset_args=args,
                    metric_type=key.replace("@", "_at_"), metric_name=f"{_metric_label(key)} ({protocol})",
                    metric_value=round(value, 6),
                )  # fmt: skip
            )
    return results


def _table(metrics: Mapping[str, Any]) -> str:
    rows = []
    keys = ("hit@1", "hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10")
    header = "| split | protocol | users | " + " | ".join(_metric_label(k) for k in keys) + " |"
    rows.append(header)
    rows.append("|" + "---|" * (3 + len(keys)))
    for split in ("test", "valid"):
        for protocol, values in (metrics.get(split) or {}).items():
            cells = [f"{values[k]:.4f}" if _is_number(values.get(k)) else "" for k in keys]
            rows.append(f"| {split} | {protocol} | {values.get('users', '')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _command_text(metrics: Mapping[str, Any], override: str | None) -> str:
    if override:
        return override
    command = metrics.get("command")
    if isinstance(command, list | tuple) and command:
        parts = [str(c) for c in command]
        if re.search(r"python[\d.]*(\.exe)?$", parts[0]) and len(parts) > 1:
            parts = parts[1:]  # the interpreter's local path says nothing
        parts = [p.replace("<repo>/", "") for p in parts]
        if parts[0].endswith(".py"):
            parts = ["python", *parts]
        return " ".join(_shell_quote(p) for p in parts)
    return str(command) if command else "(not recorded)"


def _shell_quote(text: str) -> str:
    return text if re.fullmatch(r"[\w@%+=:,./<>~-]+", text) else "'" + text.replace("'", "'\"'\"'") + "'"


def _model_summary(config: Mapping[str, Any]) -> str:
    keys = (
        "attention_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "max_history_length", "ltis_block_size", "ltis_compression_window",
        "ltis_num_selected_blocks", "stis_window", "stis_num_sinks", "hidden_dropout_prob", "vocab_size",
    )  # fmt: skip
    return ", ".join(f"`{k}={config[k]}`" for k in keys if k in config)


def _protocol_section(metrics: Mapping[str, Any]) -> str:
    protocol = metrics.get("protocol") or {}
    split = protocol.get("split") or {}
    training = metrics.get("training") or {}
    data = metrics.get("data") or {}
    window = (metrics.get("model_config") or {}).get("max_history_length", "?")
    cutoffs = training.get("cutoffs", [1, 5, 10, 20])
    best = metrics.get("best") or {}
    lines = [
        "- **Data preprocessing** (in this order): "
        + ("; ".join(_step_text(s) for s in data.get("steps", [])) or "(not recorded)")
        + f". Options: {', '.join(f'{k}={v}' for k, v in (data.get('preprocessing') or {}).items())}.",
        f"- **Split**: {split.get('split', 'leave-one-out by time')}. "
        f"{split.get('users', '?')} users, {split.get('evaluated_users', '?')} evaluated "
        f"({split.get('users_with_fewer_than_3_interactions', '?')} with fewer than 3 interactions stay in training "
        "only). Validation input = training history; test input = training history + the validation item.",
        f"- **Model input**: the most recent {window} items of the history (the history window).",
        f"- **Full ranking**: {protocol.get('ranking', 'the target against every item')}.",
        f"- **uniN ranking** (uni100 = the paper's protocol): the target against N sampled negatives; "
        f"{protocol.get('uniN', 'negatives drawn once from a fixed seed')}. (RecBole redraws them at every "
        "evaluation; fixed negatives rank every model against the same candidates.)",
        f"- **Ties**: {protocol.get('ties', 'pessimistic')}.",
        f"- **Metrics** at K in {list(cutoffs)}, as fractions, averaged over evaluated users, from the rank r "
        "(1 = best) of the single held-out item: HR@K = Recall@K = 1[r <= K]; MRR@K = 1[r <= K] / r; "
        "NDCG@K = 1[r <= K] / log2(r + 1).",
        f"- **Model selection**: early stopping on validation "
        f"`{best.get('metric', training.get('early_stopping_metric'))}` "
        f"(patience {training.get('patience', '?')}); the reported test metrics are those of the best validation "
        f"epoch ({best.get('epoch', '?')}).",
        f"- **Training examples**: `{protocol.get('training_examples', training.get('example_style', '?'))}` style "
        "(`sasrec`: each training history once per epoch, loss at every position; `recbole`: every prefix "
        "predicts its next item, loss at the last position).",
    ]
    evaluation = metrics.get("evaluation")
    if evaluation:
        note, command = evaluation.get("note", ""), evaluation.get("command", "?")
        lines.append(f"- **Reported metrics**: {note} Command: `{command}`.")
    timings = metrics.get("timings") or {}
    if timings.get("stopped_by_time_limit"):
        lines.append("- **Training budget**: training was stopped by a wall-clock limit "
                     f"(`--time-limit-minutes`) after {len(metrics.get('epochs') or [])} epochs, before early "
                     "stopping triggered; the model is likely not fully converged.")
    return "\n".join(lines)


def _step_text(step: Mapping[str, Any]) -> str:
    name = step.get("step", "?")
    details = ", ".join(f"{k} {v}" for k, v in step.items() if k not in ("step", "note"))
    return f"{name} ({details})" if details else str(name)


def _hardware_section(metrics: Mapping[str, Any], override: str | None) -> str:
    versions = metrics.get("versions") or {}
    timings = metrics.get("timings") or {}
    epochs = metrics.get("epochs") or []
    seconds = [e["epoch_train_seconds"] for e in epochs if _is_number(e.get("epoch_train_seconds"))]
    lines = [f"- **Device**: {override or metrics.get('device', '(not recorded)')}"]
    if versions:
        lines.append("- **Software**: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if timings:
        total = timings.get("total_seconds")
        lines.append(
            f"- **Time**: {len(seconds) or '?'} epochs"
            + (f", {sum(seconds) / len(seconds):.1f} s per training epoch on average" if seconds else "")
            + (f", {total / 60:.1f} min in total including evaluation" if _is_number(total) else "")
            + f", {timings.get('global_steps', '?')} optimiser steps."
        )
    return "\n".join(lines)


def build_model_card(metrics: Mapping[str, Any], options: CardOptions) -> ModelCard:
    """The model card (YAML metadata + markdown) of a run, from its ``metrics.json`` record."""
    dataset = options.dataset
    if dataset is None:
        key = dataset_key(metrics)
        dataset = KNOWN_DATASETS.get(key) if key else None
    config = metrics.get("model_config") or {}
    training = metrics.get("training") or {}
    stats = (metrics.get("data") or {}).get("stats") or {}
    eval_results = eval_results_from_metrics(metrics, dataset)
    tags = list(DEFAULT_TAGS) + [t for t in options.tags if t not in DEFAULT_TAGS]
    license_link = options.license_link or (DATA_TERMS_LINKS.get(dataset.key) if dataset else None)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="other",
        tags=tags,
        datasets=[dataset.dataset_id] if dataset else None,
        license=options.license,
        license_name=options.license_name if options.license == "other" else None,
        license_link=license_link if options.license == "other" else None,
        base_model=options.base_model,
        model_name=options.model_name,
        eval_results=eval_results,
    )
    repo = options.repo_id or BUNDLED_REPO_IDS.get(options.model_name) or f"<org>/{options.model_name}"
    dataset_name = dataset.pretty_name if dataset else "a custom interaction log"
    item_kind = dataset.item_kind if dataset else "item"
    sample = options.example_history or (_ML1M_SAMPLE_HISTORIES[0] if dataset and dataset.key == "ml-1m" else None)
    sample_text = json.dumps(sample) if sample else "[first_item_id, second_item_id, third_item_id]"
    headline = reported_test_metrics(metrics)
    head_bits = [f"{p}: NDCG@10 {v['ndcg@10']:.4f}, HR@10 {v.get('hit@10', float('nan')):.4f}"
                 for p, v in headline.items() if "ndcg@10" in v]  # fmt: skip

    sections: list[tuple[str, str]] = []
    sections.append(("How to use", (
        "Item ids are the raw ids of the training data (see `item_vocabulary.json`); histories are oldest "
        "first. With `transformers` only (the model code comes with the repo, so pin the revision you checked):"
        f"\n\n```python\nfrom transformers import AutoModel\n\n"
        "REVISION = \"main\"  # replace with the commit hash you reviewed: trust_remote_code runs this repo's code\n"
        f"model = AutoModel.from_pretrained(\"{repo}\", revision=REVISION, trust_remote_code=True)\n"
        f"for item, score in model.recommend({sample_text}, k=10, exclude_seen=True)[0]:\n"
        "    print(item, score)\n```\n\n"
        "With the `blossom_hf` package installed, `import blossom_hf` registers the model with `AutoModel`, "
        "so `trust_remote_code` is not needed, and `blossom-hf recommend --model "
        f"{repo} ITEM_ID ...` gives recommendations on the command line. `attn_implementation=` picks the "
        "attention backend (`sdpa`, `eager`, or `triton` on a CUDA GPU); the weights are the same for all of them.\n\n"
        "`sample_scores.json` lists the top-10 items and scores of a few fixed histories, computed at export "
        "(float32, CPU): a loaded copy should reproduce them to about 1e-4."
    )))  # fmt: skip
    sections.append(("Results", (
        "Leave-one-out by time, test split (the validation split picked the checkpoint). "
        f"Headline: {'; '.join(head_bits) or 'see the table'}.\n\n{_table(metrics)}\n\n"
        + (f"For context, the BlossomRec paper reports {dataset.published} on its own copy of "
           f"{dataset.pretty_name}; the data copy, history window and sampling differ, so compare with care "
           "and against a full-attention baseline trained the same way.\n" if dataset and dataset.published else "")
    )))  # fmt: skip
    sections.append(("Intended use", (
        f"Next-{item_kind} recommendation research on {dataset_name}: reproducing and extending BlossomRec, "
        "comparing attention mechanisms for sequential recommenders, and as a starting point for fine-tuning on "
        f"another interaction log (`blossom-hf finetune`). Histories must use the item ids of "
        f"`item_vocabulary.json`; the model cannot score {item_kind}s it has not seen in training. Not intended "
        "for production recommendation to real users without evaluation on their data, nor for any use the "
        "data's terms (below) exclude."
    )))  # fmt: skip
    sections.append(("Training data", (
        (dataset.description if dataset else "A custom interaction log.")
        + (f" After preprocessing: {stats.get('n_users', '?')} users, {stats.get('n_items', '?')} items, "
           f"{stats.get('n_interactions', '?')} interactions." if stats else "")
        + " The data is not part of this repository."
    )))  # fmt: skip
    sections.append(("Evaluation protocol", _protocol_section(metrics)))
    sections.append(("Training procedure", (
        "Command (as run, from the `blossom_hf` repository):\n\n"
        f"```bash\n{_command_text(metrics, options.training_command)}\n```\n\n"
        f"- **Model**: BlossomRec, {_model_summary(config)}.\n"
        f"- **Optimisation**: loss `{training.get('loss', '?')}`, learning rate {training.get('learning_rate', '?')}, "
        f"batch size {training.get('per_device_train_batch_size', '?')} x {training.get('world_size', 1)} process(es), "
        f"at most {training.get('num_train_epochs', '?')} epochs, "
        f"seed {metrics.get('seed', training.get('seed', '?'))}, "
        f"bf16 {training.get('bf16', '?')}.\n"
        "- The full record (per-epoch validation metrics, every option) is in `metrics.json`."
    )))  # fmt: skip
    sections.append(("Hardware and software", _hardware_section(metrics, options.hardware)))
    for heading, text in options.extra_sections.items():
        sections.append((heading, redact_paths(text)))
    sections.append(("Limitations", (
        "- Trained and evaluated offline on one public dataset with leave-one-out splits; offline metrics are a "
        "weak proxy for online quality, and sampled (uniN) metrics overstate quality relative to full ranking.\n"
        f"- Closed vocabulary: new {item_kind}s need fine-tuning (`blossom-hf finetune` maps a new vocabulary "
        "and keeps the shared items' embeddings); there are no user or item features, only ids and order.\n"
        "- Reflects the popularity and demographic biases of its training data; the catalogue and period are "
        "old and narrow, so recommendations for other populations or times will be poor.\n"
        "- History items are not removed from the scores: pass `exclude_seen=True` to `recommend` for "
        "recommendations of unseen items.\n"
        "- A port of the authors' method to Hugging Face `transformers` by the `blossom_hf` project, which documents "
        "where it deliberately differs from the authors' code; numbers are not the paper's."
    )))  # fmt: skip
    sections.append(("Data terms", (
        (dataset.terms if dataset else "The training data's own terms of use apply; this repository holds none of it.")
        + "\n\nThe model weights are derived from that data and are released for research use under the same "
        "terms; the code files are Apache-2.0 (the `blossom_hf` project)."
    )))  # fmt: skip
    citation = BLOSSOMREC_CITATION + ("\n" + dataset.citation if dataset else "")
    sections.append(("Citation", f"```bibtex\n{citation}\n```"))

    body = [f"# {options.model_name}", "",
            f"BlossomRec (arXiv [2512.13368](https://arxiv.org/abs/2512.13368)), a sequential recommender whose "
            "self-attention is block-level fused sparse attention (long-term blocks selected by importance plus a "
            f"short-term sliding window, mixed by a learned gate), trained on {dataset_name} and packaged for "
            "Hugging Face `transformers` by `blossom_hf`. Given a history of item ids it scores every item as the "
            "next one.", ""]  # fmt: skip
    for heading, text in sections:
        body += [f"## {heading}", "", text.strip(), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# --------------------------------------------------------------------------------------------------
# export


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


# --------------------------------------------------------------------------------------------------
# evaluation records and fine-tuning (what the export and finetune commands add to a run's record)


def merge_evaluation(metrics: Mapping[str, Any], evaluation: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """``metrics`` with the splits of an evaluation record (``blossom-hf evaluate --output``) replacing those
    recorded during training, and an ``evaluation`` note saying so (shown in the card)."""
    source = str(evaluation) if not isinstance(evaluation, Mapping) else "the evaluation record"
    if not isinstance(evaluation, Mapping):
        evaluation = _read_json(Path(evaluation), "an evaluation record")
    splits = [split for split in ("valid", "test") if split in evaluation]
    if not splits:
        raise HubExportError(f"{source} holds no valid/test results (expected `blossom-hf evaluate --output`)")
    updated = dict(metrics)
    for split in splits:
        updated[split] = evaluation[split]
    kept = [split for split in ("valid", "test") if split not in splits]
    updated["evaluation"] = {
        "note": f"{' and '.join(splits)} metrics re-computed from this checkpoint by the evaluate command "
        f"({evaluation.get('device', 'cpu')}, {evaluation.get('precision', 'fp32')}, "
        f"attn_implementation={evaluation.get('attn_implementation', 'sdpa')}): the numbers it reproduces."
        + (f" The {' and '.join(kept)} metrics are those recorded during training." if kept else ""),
        "command": evaluation.get("command", "blossom-hf evaluate"),
        "splits": splits,
    }
    return updated


def attach_evaluation_subset(metrics: dict[str, Any], subset: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Store an evaluation made with ``--max-users N`` in ``metrics['evaluation']['subset']``: the quick check
    the tests re-run against the exported folder."""
    source = str(subset) if not isinstance(subset, Mapping) else "the subset record"
    if not isinstance(subset, Mapping):
        subset = _read_json(Path(subset), "an evaluation record")
    if not subset.get("max_users"):
        raise HubExportError(f"{source} is not an evaluation made with --max-users")
    metrics.setdefault("evaluation", {})["subset"] = {
        key: subset[key] for key in ("max_users", "negatives_seed", "exclude_history", "valid", "test") if key in subset
    }
    return metrics


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HubExportError(f"{path} is not valid JSON ({what}): {err}") from None


def finetuning_section(finetuning: Mapping[str, Any]) -> str:
    """The card's "Fine-tuning" section, from the ``finetuning`` entry of a fine-tuned run's record."""
    base = finetuning["base_model"]
    if finetuning.get("from_scratch"):
        return (f"Trained from scratch with the architecture of `{base}` (random weights, no transfer), as the "
                "baseline for the fine-tuned model trained the same way on the same data.")  # fmt: skip
    vocab = finetuning["vocabulary"]
    mapping = finetuning.get("mapping") or {"source": "identity"}
    if mapping["source"] == "titles":
        stages = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in mapping["stages"].items())
        matching = (f"by title and year: {mapping['matched_new_items']} of {mapping['new_items']} catalogue items "
                    f"matched ({100 * mapping['match_rate']:.1f}%; {stages}), {mapping['ambiguous_new']} "
                    f"ambiguous and {mapping['unmatched_new']} unmatched left out")  # fmt: skip
    elif mapping["source"] == "file":
        matching = f"by the mapping file `{mapping['file']}` ({vocab['mapping_pairs']} pairs)"
    else:
        matching = "by raw id (equal ids are the same item)"
    lines = [
        f"Fine-tuned from `{base}`: every encoder weight starts from the pretrained model; the item embedding "
        "was carried over to this dataset's items.",
        "",
        f"- {vocab['new_items']} items in the new data: {vocab['shared']} ({100 * vocab['shared_fraction']:.1f}%) "
        f"shared with the pretrained vocabulary kept their embeddings, {vocab['initialised']} were initialised "
        f"N(0, {vocab['init_std']}).",
        f"- Pretrained items without data here: {vocab['old_kept']} kept, {vocab['old_dropped']} dropped "
        f"(of {vocab['old_items']}).",
        f"- Items matched {matching}.",
    ]
    return "\n".join(lines)


__all__ = [
    "BLOSSOMREC_CITATION",
    "BUNDLED_ML1M",
    "BUNDLED_REPO_IDS",
    "attach_evaluation_subset",
    "check_repo_id",
    "complete_hub_folder",
    "finetuning_section",
    "merge_evaluation",
    "refresh_model_card",
    "verify_hub_folder",
    "CardOptions",
    "DEFAULT_TAGS",
    "DatasetInfo",
    "HubExportError",
    "KNOWN_DATASETS",
    "SAMPLE_SCORES_FILE",
    "build_model_card",
    "check_folder_contents",
    "check_sample_scores",
    "compare_sample_scores",
    "compute_sample_scores",
    "dataset_key",
    "default_sample_histories",
    "eval_results_from_metrics",
    "export_hub_folder",
    "load_metrics",
    "redact_paths",
    "reported_test_metrics",
]
