"""Top-K metrics from the rank of a single target per user (``docs/PROTOCOL.md``, "Ranking and metrics").

With rank ``r`` (1 = best) of the one held-out item and cut-off ``K``:

* ``HR@K = Recall@K = 1[r <= K]`` (with one target, RecBole's Hit and Recall coincide),
* ``MRR@K = 1[r <= K] / r``,
* ``NDCG@K = 1[r <= K] / log2(r + 1)`` (the ideal DCG of one relevant item is 1).

Every metric is the mean over evaluated users, as a fraction in [0, 1] (not a percentage).
How ranks are computed, ties included, is :mod:`blossom_hf.evaluation.ranking`'s business.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


class RankingMetrics:
    """HR/Recall/MRR/NDCG@K for a plain ``transformers.Trainer`` (its ``compute_metrics``).

    A plain ``Trainer`` evaluates only ``eval_loss``; with this it reports ``eval_ndcg@10`` and the rest, from full
    ranking with pessimistic ties (the rank of the target among all items, padding 0 excluded), as
    :func:`blossom_hf.evaluation.evaluate_ranking` computes them. Pass the same object twice::

        metrics = RankingMetrics()
        trainer = Trainer(model=model, args=args, eval_dataset=eval_dataset, data_collator=collator,
                          compute_metrics=metrics, preprocess_logits_for_metrics=metrics.preprocess_logits)

    ``preprocess_logits`` turns each batch's ``[B, vocab_size]`` scores into ``[B]`` target ranks on the device,
    so the evaluation never accumulates ``users x items`` scores. The evaluation examples carry ``labels`` ``[B]``:
    the held-out next item of each history.
    """

    def __init__(self, cutoffs: Iterable[int] = DEFAULT_CUTOFFS):
        self.cutoffs = tuple(int(k) for k in cutoffs)

    @staticmethod
    def preprocess_logits(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
        """``[B]`` 1-based rank of each row's target; a NaN/inf score raises."""
        if isinstance(logits, tuple):
            logits = logits[0]
        if logits.dim() == 3:  # [B, L, V] scores at every position: the last one predicts the held-out item
            logits = logits[:, -1]
        if labels.dim() != 1:
            raise ValueError(
                f"RankingMetrics needs one target per history (labels [B]), got labels of shape {tuple(labels.shape)}"
            )
        scores = logits.float()
        if not bool(torch.isfinite(scores[:, 1:]).all()):
            from ..errors import NonFiniteError

            raise NonFiniteError("the model gave NaN/inf scores during evaluation: its weights are probably non-finite")
        scores = scores.clone()
        scores[:, 0] = float("-inf")  # padding never competes
        target = scores.gather(1, labels[:, None].long())
        others = (scores >= target).sum(dim=1) - 1  # the target itself is >= itself
        return others + 1

    def __call__(self, eval_prediction: Any) -> dict[str, float]:
        ranks = eval_prediction.predictions
        if isinstance(ranks, tuple):
            ranks = ranks[0]
        return metrics_from_ranks(np.asarray(ranks).reshape(-1), self.cutoffs)
