"""Full and sampled ranking: pessimistic ties, padding never counts, negatives drawn once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from blossom_hf.data import SequenceData, leave_one_out
from blossom_hf.data.splits import RankingExamples
from blossom_hf.evaluation import (
    evaluate_ranking,
    full_ranks,
    most_popular_scorer,
    parse_protocol,
    sample_negatives,
    sampled_ranks,
)

NAN = float("nan")


def test_full_ranks_by_hand_with_ties_and_padding():
    # column 0 is padding (a huge score that must not count); items 1..4
    scores = torch.tensor(
        [
            [100.0, 0.5, 0.9, 0.5, 0.1],  # target 1 ties with item 3 and is below item 2 -> rank 3
            [100.0, 0.5, 0.9, 0.5, 0.1],  # target 2 -> rank 1
            [100.0, 0.5, 0.9, 0.5, 0.1],  # target 4 -> rank 4
            [100.0, 0.2, 0.2, 0.2, 0.2],  # all tie -> pessimistic: last, rank 4
            [100.0, NAN, 0.2, 0.2, 0.2],  # NaN target -> worst rank 4
        ]
    )
    targets = torch.tensor([1, 2, 4, 3, 1])
    assert full_ranks(scores, targets).tolist() == [3, 1, 4, 4, 4]


def test_sampled_ranks_by_hand():
    scores = torch.tensor([[0.0, 0.3, 0.7, 0.3, 0.1, 0.9]])
    targets = torch.tensor([1])
    # negatives 3 (tie 0.3), 4 (0.1), 5 (0.9), and a 0 = no candidate that must be ignored
    assert sampled_ranks(scores, targets, torch.tensor([[3, 4, 5, 0]])).tolist() == [3]
    assert sampled_ranks(scores, torch.tensor([5]), torch.tensor([[1, 2, 3, 0]])).tolist() == [1]
    nan_scores = torch.tensor([[0.0, NAN, 0.7, 0.3]])
    assert sampled_ranks(nan_scores, targets, torch.tensor([[2, 3]])).tolist() == [3]


def test_parse_protocol():
    assert parse_protocol("full").is_full
    assert parse_protocol("UNI100").num_negatives == 100
    with pytest.raises(ValueError, match="unknown ranking protocol"):
        parse_protocol("pop100")


def make_data(sequences: list[list[int]], n_items: int) -> SequenceData:
    lengths = [len(s) for s in sequences]
    return SequenceData(
        user_ids=pa.array([str(i) for i in range(len(sequences))]),
        item_ids=[str(i) for i in range(1, n_items + 1)],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.concatenate([np.asarray(s) for s in sequences]).astype(np.int32),
    )


def test_negatives_are_unseen_distinct_and_fixed_by_seed():
    rng = np.random.default_rng(1)
    n_items = 300
    sequences = [rng.choice(np.arange(1, n_items + 1), size=n, replace=False).tolist() for n in (5, 50, 120, 3)]
    sequences.append([i for i in range(1, n_items + 1) if i != 7][:295])  # 5 unseen items only
    data = make_data(sequences, n_items)
    users = np.arange(len(sequences))
    negatives = sample_negatives(data.offsets, data.items, n_items, users, 20, seed=3)
    assert negatives.shape == (5, 20)
    for user in range(4):
        row = negatives[user]
        assert len(set(row.tolist())) == 20 and row.min() >= 1 and row.max() <= n_items
        assert not set(row.tolist()) & set(sequences[user])
    dense = negatives[4]
    assert sorted(int(x) for x in dense if x) == sorted(set(range(1, n_items + 1)) - set(sequences[4]))
    assert (dense == 0).sum() == 15
    again = sample_negatives(data.offsets, data.items, n_items, users, 20, seed=3)
    other = sample_negatives(data.offsets, data.items, n_items, users, 20, seed=4)
    assert (again == negatives).all() and not (other == negatives).all()


def fixed_scorer(table: torch.Tensor):
    """Scores depend only on the last input item: row = table[last item]."""

    def score(input_ids: torch.Tensor) -> torch.Tensor:
        last = input_ids.gather(1, ((input_ids != 0).sum(1, keepdim=True) - 1).clamp_min(0))[:, 0]
        return table[last].clone()

    return score


def test_evaluate_ranking_full_by_hand_and_batch_invariant():
    items = np.array([1, 2, 3, 4, 2, 3, 1, 4], dtype=np.int32)
    examples = RankingExamples(
        items=items,
        starts=np.array([0, 4]),
        ends=np.array([3, 7]),  # histories [1,2,3] -> target 4; [2,3,1] -> target 4
        targets=np.array([4, 4]),
        users=np.array([0, 1]),
    )
    table = torch.zeros(5, 5)
    table[3] = torch.tensor([9.0, 0.1, 0.2, 0.3, 0.3])  # after item 3: target 4 ties item 3 -> rank 2
    table[1] = torch.tensor([9.0, 0.9, 0.8, 0.7, 0.1])  # after item 1: target 4 is last -> rank 4
    for batch_size in (1, 2):
        result = evaluate_ranking(
            fixed_scorer(table), examples, max_length=2, n_items=4, batch_size=batch_size, progress=False
        )
        assert result.ranks.tolist() == [2, 4]
        assert result.metrics["hit@1"] == 0.0 and result.metrics["mrr@5"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    # removing history items: user 0 loses items 1,2,3 -> rank 1; user 1 loses 2,3,1 -> rank 1
    excluded = evaluate_ranking(
        fixed_scorer(table), examples, max_length=2, n_items=4, exclude_history=True, progress=False
    )
    assert excluded.ranks.tolist() == [1, 1]


def test_exclude_history_never_removes_the_target():
    items = np.array([4, 1, 4], dtype=np.int32)  # the target 4 also occurs in the history
    examples = RankingExamples(items, np.array([0]), np.array([2]), np.array([4]), np.array([0]))
    table = torch.zeros(5, 5)
    table[1] = torch.tensor([0.0, 0.9, 0.1, 0.2, 0.5])
    result = evaluate_ranking(
        fixed_scorer(table), examples, max_length=5, n_items=4, exclude_history=True, progress=False
    )
    assert result.ranks.tolist() == [1]  # item 1 removed, target 4 (0.5) beats 3 (0.2) and 2 (0.1)


def test_evaluate_ranking_sampled_and_validation_of_inputs():
    items = np.array([1, 2, 3], dtype=np.int32)
    examples = RankingExamples(items, np.array([0]), np.array([2]), np.array([3]), np.array([0]))
    table = torch.zeros(6, 6)
    table[2] = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.6, 0.4])
    result = evaluate_ranking(
        fixed_scorer(table), examples, max_length=3, n_items=5, protocol="uni2",
        negatives=np.array([[4, 5]]), progress=False,
    )  # fmt: skip
    assert result.ranks.tolist() == [2] and result.protocol == "uni2"
    with pytest.raises(ValueError, match="needs negatives"):
        evaluate_ranking(fixed_scorer(table), examples, max_length=3, n_items=5, protocol="uni2", progress=False)
    with pytest.raises(ValueError, match="negatives have shape"):
        evaluate_ranking(
            fixed_scorer(table), examples, max_length=3, n_items=5, protocol="uni2",
            negatives=np.array([[4, 5, 1]]), progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="scorer returned shape"):
        evaluate_ranking(fixed_scorer(table), examples, max_length=3, n_items=4, progress=False)


def test_most_popular_scorer_ranks_by_training_counts():
    data = make_data([[1, 2, 1, 3, 4], [1, 2, 3, 2]], n_items=4)
    split = leave_one_out(data)
    counts = split.train_item_counts()  # train histories [1,2,1] and [1,2]
    assert counts.tolist() == [0, 3, 2, 0, 0]
    result = evaluate_ranking(most_popular_scorer(counts), split.test(), max_length=5, n_items=4, progress=False)
    # user 0: target 4 (count 0) ties item 3 -> pessimistic rank 4; user 1: target 2 -> rank 2
    assert result.ranks.tolist() == [4, 2]


def test_model_in_eval_mode_during_ranking_and_restored():
    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.modes: list[bool] = []

        def forward(self, input_ids):
            self.modes.append(self.training)
            logits = torch.zeros(input_ids.shape[0], 4)
            return type("Out", (), {"logits": logits})()

    model = Recorder().train()
    examples = RankingExamples(
        np.array([1, 2], dtype=np.int32), np.array([0]), np.array([1]), np.array([2]), np.array([0])
    )
    evaluate_ranking(model, examples, max_length=3, n_items=3, progress=False)
    assert model.modes == [False] and model.training
