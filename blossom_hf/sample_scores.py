"""``sample_scores.json``: the top-10 items and scores of a few fixed histories, written by every export, so a
loaded copy of a checkpoint (another machine, the remote-code route, a re-download) can be checked against it.

* :func:`default_sample_histories` -- fixed histories of raw ids, never taken from a user's data;
* :func:`compute_sample_scores` -- the record, on a float32 CPU copy of the model;
* :func:`check_sample_scores` / :func:`compare_sample_scores` -- the differences of a model (or of recomputed
  top-k lists) from a record; empty when they agree.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .data.presets import _ML1M_SAMPLE_HISTORIES
from .errors import HubExportError

SAMPLE_SCORES_FILE = "sample_scores.json"
SAMPLE_SCORES_FORMAT = "blossomrec-sample-scores"


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


__all__ = [
    "SAMPLE_SCORES_FILE",
    "SAMPLE_SCORES_FORMAT",
    "check_sample_scores",
    "compare_sample_scores",
    "compute_sample_scores",
    "default_sample_histories",
]
