"""The model card (``README.md``) of an exported checkpoint, built from its run's ``metrics.json``.

:func:`build_model_card` writes the YAML metadata (tags, datasets, licence, ``model-index`` with the test
metrics of every ranking protocol) and the sections: how to use, results, intended use, training data, the
exact evaluation protocol, the training command, hardware and software, limitations, the data's terms and the
citations. :class:`CardOptions` holds what the record does not say; :func:`finetuning_section` is the
"Fine-tuning" section of a fine-tuned run's card.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data.presets import _ML1M_SAMPLE_HISTORIES, KNOWN_DATASETS, DatasetInfo
from .export_record import _is_number, dataset_key, redact_paths, reported_test_metrics

CARD_FILE = "README.md"
DEFAULT_TAGS = ("recommender-system", "sequential-recommendation", "sparse-attention", "blossomrec")
TASK_TYPE = "sequential-recommendation"
TASK_NAME = "Sequential recommendation (next item)"
METRIC_NAMES = {"hit": "HR", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR"}
#: The one Hub repo id of each bundled checkpoint (cards, README, commands use these and no other).
BUNDLED_REPO_IDS = {
    "blossomrec-ml1m": "blossom-hf/blossomrec-ml1m",
    "blossomrec-beauty": "blossom-hf/blossomrec-beauty",
    "blossomrec-video-games": "blossom-hf/blossomrec-video-games",
}
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
    "BUNDLED_REPO_IDS",
    "CARD_FILE",
    "DATA_TERMS_LINKS",
    "DEFAULT_TAGS",
    "CardOptions",
    "build_model_card",
    "eval_results_from_metrics",
    "finetuning_section",
]
