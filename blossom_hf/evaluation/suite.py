"""The evaluation suite of the protocol: validation and test users, each under every requested protocol.

:func:`build_evaluation_sets` fixes the examples and draws the ``uniN`` negatives once;
:func:`evaluate_model` ranks them with a model. Training (per epoch, on validation) and
``blossom-hf evaluate`` (after training) both go through these, so their numbers agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.splits import LeaveOneOutSplit, RankingExamples
from ..errors import BlossomUserError, NonFiniteError
from .metrics import DEFAULT_CUTOFFS
from .ranking import RankingResult, Scorer, evaluate_ranking, parse_protocol, sample_negatives

SPLITS = ("valid", "test")


@dataclass
class EvaluationSet:
    """One split's examples and its ``uniN`` negatives (drawn once, keyed by protocol name)."""

    name: str
    examples: RankingExamples
    negatives: dict[str, np.ndarray] = field(default_factory=dict)


def build_evaluation_sets(split: LeaveOneOutSplit, protocols: Iterable[str], seed: int) -> dict[str, EvaluationSet]:
    """Validation and test examples, with negatives for every ``uniN`` protocol.

    Negatives come from the items the user never interacted with (in any split); validation uses
    ``seed`` and test ``seed + 1``, so the same seed gives the same candidates in every run.
    """
    data = split.data
    sets = {"valid": EvaluationSet("valid", split.validation()), "test": EvaluationSet("test", split.test())}
    for offset, evaluation_set in enumerate(sets.values()):
        for name in protocols:
            protocol = parse_protocol(name)
            if protocol.is_full:
                continue
            evaluation_set.negatives[protocol.name] = sample_negatives(
                data.offsets, data.items, data.n_items, evaluation_set.examples.users,
                protocol.num_negatives, seed + offset,
            )  # fmt: skip
    return sets


def evaluate_model(
    model: nn.Module,
    evaluation_sets: dict[str, EvaluationSet],
    *,
    splits: Iterable[str] = SPLITS,
    protocols: Iterable[str] = ("full", "uni100"),
    exclude_history: bool = False,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    cutoffs: Iterable[int] = DEFAULT_CUTOFFS,
    shard: np.ndarray | None = None,
    progress: bool = True,
) -> dict[str, dict[str, RankingResult]]:
    """``{split: {protocol: RankingResult}}`` for a model exposing ``config.max_history_length`` and
    ``config.vocab_size``. ``shard`` restricts every split to those example positions (one process's
    share in multi-process evaluation).

    Raises:
        NonFiniteError: the model scored an item NaN or infinite (a ranking of such scores means nothing).
        BlossomUserError: ``batch_size`` below 1, or an empty ``shard``.
    """
    if batch_size < 1:
        raise BlossomUserError(f"the evaluation batch size must be >= 1 users, got {batch_size}")
    if shard is not None and len(shard) == 0:
        raise BlossomUserError("no users to evaluate (an empty selection, e.g. --max-users 0); pass at least 1")
    if device is None:
        device = next(model.parameters()).device
    scorer = finite_scorer(model)
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, scorer, evaluation_sets, splits, protocols, exclude_history, batch_size, device,
                         cutoffs, shard, progress)  # fmt: skip
    finally:
        model.train(was_training)


def finite_scorer(model: nn.Module) -> Scorer:
    """``model(input_ids).logits`` in float32, refusing NaN/inf scores of real items."""

    def score(input_ids: torch.Tensor) -> torch.Tensor:
        scores = model(input_ids=input_ids).logits.float()
        finite = torch.isfinite(scores[:, 1:]).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NonFiniteError(
                f"the model gave NaN/inf scores to {bad} of {scores.shape[0]} histories in a batch: its weights are "
                "probably non-finite (a diverged training); evaluate an earlier checkpoint or retrain with a lower --lr"
            )
        return scores

    return score


def _evaluate(model, scorer, evaluation_sets, splits, protocols, exclude_history, batch_size, device, cutoffs, shard,
              progress) -> dict[str, dict[str, RankingResult]]:  # fmt: skip
    results: dict[str, dict[str, RankingResult]] = {}
    for split_name in splits:
        if split_name not in evaluation_sets:
            raise KeyError(f"unknown split {split_name!r}; choose from {list(evaluation_sets)}")
        evaluation_set = evaluation_sets[split_name]
        positions = shard if shard is not None else np.arange(len(evaluation_set.examples))
        examples = evaluation_set.examples.subset(positions)
        results[split_name] = {}
        for name in protocols:
            protocol = parse_protocol(name)
            negatives = None
            if not protocol.is_full:
                if protocol.name not in evaluation_set.negatives:
                    raise KeyError(
                        f"no negatives for {protocol.name!r} in the {split_name} set; build the sets with it"
                    )
                negatives = evaluation_set.negatives[protocol.name][positions]
            results[split_name][protocol.name] = evaluate_ranking(
                scorer,
                examples,
                max_length=model.config.max_history_length,
                n_items=model.config.vocab_size - 1,
                protocol=protocol,
                negatives=negatives,
                exclude_history=exclude_history,
                batch_size=batch_size,
                device=device,
                cutoffs=cutoffs,
                progress=progress,
                description=f"{split_name} {protocol.name}",
            )
    return results


def results_to_record(results: dict[str, dict[str, RankingResult]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{split: {protocol: {metric: value, ..., "users": n}}}`` (JSON-ready)."""
    return {
        split_name: {name: {**result.metrics, "users": result.n_examples} for name, result in by_protocol.items()}
        for split_name, by_protocol in results.items()
    }
