"""``model.recommend(histories, k)``: raw item ids in, the top-k next items out (docs/MODEL.md, "Serving").

A mixin of :class:`BlossomRecModel`: it maps raw ids through ``model.vocabulary``, batches the histories, runs the
serving path (``output_last_hidden_state=False``: the last layer scores only the last real position) and ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .inputs_blossomrec import padded_batch
from .item_vocabulary import as_histories

__all__ = ["Recommendations", "RecommendMixin"]


@dataclass
class Recommendations:
    """Top-k items of one history: raw item ids (best first) and their scores."""

    items: list
    scores: list[float]

    def __iter__(self):
        return iter(zip(self.items, self.scores, strict=True))


class RecommendMixin:
    """``recommend()`` for a model with ``config``, ``vocabulary``, ``item_embeddings`` and the serving forward."""

    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence,
        k: int = 10,
        exclude_seen: bool = False,
        unknown: str = "error",
        batch_size: int = 256,
    ) -> list[Recommendations]:
        """Top-``k`` next items for each history of raw item ids (oldest first).

        Args:
            histories: one history (a list, or a 1-D numpy array / torch tensor, of raw ids) or a list of
                histories (or a 2-D array: one history per row). Ids are ints or strings; floats are refused.
            k: how many items to return per history.
            exclude_seen: drop every item of the history (all of it, not only the window the model reads) from
                the ranking; fewer than ``k`` items come back when fewer remain.
            unknown: "error" (default) raises on a raw id the vocabulary does not know; "skip" drops it.
            batch_size: histories scored per forward pass (a positive integer).

        Without ``model.vocabulary`` the ids are model indices (1..vocab_size-1). Runs the serving path (the last
        layer computes the last position only). Raises ValueError if the model produces NaN/inf scores.
        """
        batch = as_histories(histories)
        if not batch:
            raise ValueError("recommend() needs at least one history")
        num_items = self.config.num_items
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_items:
            raise ValueError(f"k must be an integer in [1, {num_items}], got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        vocab = self.vocabulary
        encoded = []
        for row, history in enumerate(batch):
            if vocab is not None:
                try:
                    indices = vocab.encode(history, unknown=unknown)
                except KeyError as err:
                    raise type(err)(f"history {row}: {err}") from None
            else:
                indices = [int(i) for i in history]
                outside = [i for i in indices if not 1 <= i <= num_items]
                if outside:
                    raise ValueError(f"history {row}: item index {outside[0]} is outside 1..{num_items}")
            if not indices:
                raise ValueError(f"history {row} is empty" + (" after skipping unknown ids" if history else ""))
            encoded.append(indices)

        window = self.config.max_history_length
        was_training = self.training
        self.eval()
        results: list[Recommendations] = []
        try:
            device = self.item_embeddings.weight.device
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start:start + batch_size]
                ids = padded_batch([h[-window:] for h in chunk]).to(device)
                scores = self(input_ids=ids, output_last_hidden_state=False).logits.float()
                finite = torch.isfinite(scores[:, 1:]).all(dim=1)
                if not bool(finite.all()):
                    row = start + int((~finite).nonzero()[0])
                    raise ValueError(
                        f"the model produced NaN/inf scores for history {row}: its weights are probably not finite "
                        "(check the checkpoint, e.g. a diverged training run); no ranking is returned"
                    )
                if exclude_seen:  # the whole history, not only the window the model read
                    scores.scatter_(1, padded_batch(chunk).to(device), float("-inf"))
                top = scores.topk(k, dim=1)
                for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    kept = [(i, v) for i, v in zip(indices, values, strict=True) if v != float("-inf")]
                    items = vocab.decode([i for i, _ in kept]) if vocab is not None else [i for i, _ in kept]
                    results.append(Recommendations(items=items, scores=[v for _, v in kept]))
        finally:
            self.train(was_training)
        return results
