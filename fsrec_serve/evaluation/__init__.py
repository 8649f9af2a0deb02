"""Evaluation: ranking metrics, next-item / rating protocols, baselines.

The names below are imported lazily, so that ``fsrec_serve.evaluation.metrics`` (numpy only) loads
without the protocols' torch and model code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "baselines": ["PopularityModel"],
    "metrics": ["hit_at_k", "mrr_at_k", "ndcg_at_k", "rank_in_top_lists", "rank_of_targets", "summarize_ranks"],
    "protocols": ["Scorer", "evaluate_next_item", "evaluate_ratings"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
