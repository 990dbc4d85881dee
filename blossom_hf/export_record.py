"""A training run's record (``metrics.json``) as an export publishes it.

* :func:`load_metrics`, :func:`reported_test_metrics`, :func:`dataset_key` -- read a record (a dict, a
  ``metrics.json`` file or its folder): the test metrics the card's ``model-index`` lists, the data preset.
* :func:`redact_paths` -- local absolute paths replaced by placeholders, so nothing about the machine is
  published.
* :func:`merge_evaluation`, :func:`attach_evaluation_subset` -- what ``blossom-hf export --evaluation`` adds:
  the splits re-computed by ``blossom-hf evaluate`` replace those recorded during training.

Writing the record of a run is :mod:`blossom_hf.run_record`'s job; this module only reads and rewrites copies.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .data.presets import KNOWN_DATASETS
from .errors import HubExportError
from .run_record import METRICS_FILE

# An absolute local path inside a string (not a URL, not a relative path, not "a / b").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~>:/])/[^\s`'\"(),;:]+")


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


__all__ = [
    "METRICS_FILE",
    "attach_evaluation_subset",
    "dataset_key",
    "default_redaction_roots",
    "load_metrics",
    "merge_evaluation",
    "redact_paths",
    "reported_test_metrics",
]
