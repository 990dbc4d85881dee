"""HR/Recall/MRR/NDCG@K against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blossom_hf.evaluation import metrics_from_ranks, mrr_at_k, ndcg_at_k


def test_single_ranks_by_hand():
    # rank 1: everything is 1; rank 3: HR@5 = 1, MRR = 1/3, NDCG = 1/log2(4) = 0.5
    m = metrics_from_ranks([3], cutoffs=(1, 5))
    assert m["hit@1"] == 0.0 and m["mrr@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["hit@5"] == 1.0 and m["recall@5"] == 1.0
    assert m["mrr@5"] == pytest.approx(1 / 3)
    assert m["ndcg@5"] == pytest.approx(0.5)
    top = metrics_from_ranks([1], cutoffs=(1,))
    assert top == {"hit@1": 1.0, "recall@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0}


def test_means_over_users_by_hand():
    ranks = [1, 2, 7, 10, 11, 25]
    m = metrics_from_ranks(ranks)
    assert set(m) == {f"{name}@{k}" for name in ("hit", "recall", "mrr", "ndcg") for k in (1, 5, 10, 20)}
    assert m["hit@10"] == pytest.approx(4 / 6)
    assert m["hit@20"] == pytest.approx(5 / 6)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 7 + 1 / 10) / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(8) + 1 / math.log2(11)) / 6)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 6)
    assert m["ndcg@20"] == pytest.approx(m["ndcg@10"] + 1 / math.log2(12) / 6)


def test_cut_off_is_inclusive():
    assert metrics_from_ranks([10], cutoffs=(10,))["hit@10"] == 1.0
    assert metrics_from_ranks([11], cutoffs=(10,))["hit@10"] == 0.0
    assert ndcg_at_k(np.array([10.0]), 10)[0] == pytest.approx(1 / math.log2(11))
    assert mrr_at_k(np.array([10.0]), 9)[0] == 0.0


def test_accepts_tensors_and_rejects_bad_ranks():
    assert metrics_from_ranks(torch.tensor([1, 3]), cutoffs=(1,))["hit@1"] == 0.5
    with pytest.raises(ValueError, match="no ranks"):
        metrics_from_ranks([])
    with pytest.raises(ValueError, match=">= 1"):
        metrics_from_ranks([0, 1])
    with pytest.raises(ValueError, match="cut-off"):
        metrics_from_ranks([1], cutoffs=(0,))
