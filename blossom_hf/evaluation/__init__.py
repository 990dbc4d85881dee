"""Ranking evaluation (full and sampled ``uniN``) and HR/Recall/MRR/NDCG@K metrics."""

from .baselines import most_popular_scorer
from .metrics import DEFAULT_CUTOFFS, RankingMetrics, hit_at_k, metrics_from_ranks, mrr_at_k, ndcg_at_k
from .ranking import (
    Protocol,
    RankingResult,
    Scorer,
    evaluate_ranking,
    full_ranks,
    model_scorer,
    parse_protocol,
    sample_negatives,
    sampled_ranks,
)
from .suite import EvaluationSet, build_evaluation_sets, evaluate_model, results_to_record

__all__ = [
    "DEFAULT_CUTOFFS",
    "EvaluationSet",
    "Protocol",
    "RankingMetrics",
    "RankingResult",
    "Scorer",
    "build_evaluation_sets",
    "evaluate_model",
    "evaluate_ranking",
    "full_ranks",
    "hit_at_k",
    "metrics_from_ranks",
    "model_scorer",
    "most_popular_scorer",
    "mrr_at_k",
    "ndcg_at_k",
    "parse_protocol",
    "results_to_record",
    "sample_negatives",
    "sampled_ranks",
]
