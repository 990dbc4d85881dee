"""Top-K metrics from the rank of a single target per user (``PROTOCOL.md``, "Ranking and metrics").

With rank ``r`` (1 = best) of the one held-out item and cut-off ``K``:

* ``HR@K = Recall@K = 1[r <= K]`` (with one target, RecBole's Hit and Recall coincide),
* ``MRR@K = 1[r <= K] / r``,
* ``NDCG@K = 1[r <= K] / log2(r + 1)`` (the ideal DCG of one relevant item is 1).

Every metric is the mean over evaluated users, as a fraction in [0, 1] (not a percentage).
How ranks are computed, ties included, is :mod:`blossom_hf.evaluation.ranking`'s business.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

DEFAULT_CUTOFFS: tuple[int, ...] = (1, 5, 10, 20)
METRIC_NAMES: tuple[str, ...] = ("hit", "recall", "mrr", "ndcg")


def hit_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user ``1[r <= k]``."""
    return (ranks <= k).astype(np.float64)


def mrr_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user ``1[r <= k] / r``."""
    return np.where(ranks <= k, 1.0 / ranks, 0.0)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user ``1[r <= k] / log2(r + 1)``."""
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def metrics_from_ranks(
    ranks: np.ndarray | torch.Tensor | Iterable[int], cutoffs: Iterable[int] = DEFAULT_CUTOFFS
) -> dict[str, float]:
    """Mean HR/Recall/MRR/NDCG at every cut-off, keyed ``"hit@10"``, ``"recall@10"``, ``"mrr@10"``, ...

    Args:
        ranks: 1-based rank of each user's target (integers >= 1).
        cutoffs: the K values.

    Raises:
        ValueError: no ranks, or a rank below 1.
    """
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to compute metrics from (no evaluated users)")
    if (ranks < 1).any() or np.isnan(ranks).any():
        raise ValueError(f"ranks must be >= 1 (1 = best); got minimum {np.nanmin(ranks)}")
    results: dict[str, float] = {}
    for k in sorted(set(int(k) for k in cutoffs)):
        if k < 1:
            raise ValueError(f"cut-off K must be >= 1, got {k}")
        hit = float(hit_at_k(ranks, k).mean())
        results[f"hit@{k}"] = hit
        results[f"recall@{k}"] = hit
        results[f"mrr@{k}"] = float(mrr_at_k(ranks, k).mean())
        results[f"ndcg@{k}"] = float(ndcg_at_k(ranks, k).mean())
    return results
