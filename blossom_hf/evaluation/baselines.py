"""Reference scorers that need no training, for sanity checks and tests."""

from __future__ import annotations

import numpy as np
import torch

from .ranking import Scorer


def most_popular_scorer(item_counts: np.ndarray, device: torch.device | str = "cpu") -> Scorer:
    """Score every item by its training-interaction count, whatever the history.

    ``item_counts`` has length ``n_items + 1`` (entry 0, padding, is ignored by the ranking), e.g.
    ``LeaveOneOutSplit.train_item_counts()``. Items with equal counts tie, and ties are pessimistic.
    """
    counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float32), device=device)

    def score(input_ids: torch.Tensor) -> torch.Tensor:
        return counts.to(input_ids.device)[None, :].expand(input_ids.shape[0], -1).clone()

    return score
