"""Evaluation: ranking metrics, next-item / rating protocols, baselines."""

from .baselines import PopularityModel
from .metrics import hit_at_k, mrr_at_k, ndcg_at_k, rank_of_targets, summarize_ranks
from .protocols import Scorer, evaluate_next_item, evaluate_ratings

__all__ = [
    "PopularityModel", "hit_at_k", "mrr_at_k", "ndcg_at_k", "rank_of_targets", "summarize_ranks",
    "Scorer", "evaluate_next_item", "evaluate_ratings",
]
