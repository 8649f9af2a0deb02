"""Online learning steps: refit_user_params (a row per user) and refine_model (guarded, never
modifies the served model, refuses a broken candidate with a reason)."""

from __future__ import annotations

import numpy as np
import pytest

from fsrec_serve.adaptation.online import RefineConfig, refine_model, refit_user_params
from fsrec_serve.model.fingerprint import model_fingerprint


@pytest.fixture
def trained(tiny_splits, tiny_model, fast_train_config):
    """A causal tiny model trained briefly on the warm users (so that refining can keep it)."""
    from fsrec_serve.training import train_loop

    m = tiny_model(objective="causal", max_seq_len=20)
    for p in m.parameters():
        p.requires_grad_(True)
    train_loop(m, tiny_splits.loo_train(), fast_train_config(epochs=15))
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_refit_gives_a_row_per_user_and_zeros_for_short_histories(tiny_splits, tiny_model):
    m = tiny_model(objective="causal")
    H = m.config.hidden_size
    hist = {s.user: list(s.items) for s in tiny_splits.warm[:6]}
    hist["one-item"] = [1]
    hist["empty"] = []
    params, info = refit_user_params(m, hist, window=8)
    assert set(params) == set(hist)
    for u, v in params.items():
        assert v.shape == (H,) and v.dtype == np.float32 and np.isfinite(v).all()
    assert not params["one-item"].any() and not params["empty"].any()
    assert info["n_users"] == len(hist) and info["n_fitted"] == 6
    assert info["cpu_seconds"] >= 0 and 0 <= info["n_adapted"] <= 6


def test_refine_keeps_the_served_model_and_accepts_a_reasonable_candidate(tiny_splits, trained):
    before = model_fingerprint(trained)
    recent = tiny_splits.cold_users
    res = refine_model(trained, recent, tiny_splits.warm,
                       RefineConfig(epochs=2, lr=1e-4, tolerance=0.5, min_forgetting=0.5,
                                    forgetting_users=20))
    assert model_fingerprint(trained) == before  # served weights untouched
    assert res.accepted, res.reason
    assert res.fingerprint is not None and res.fingerprint != before
    assert res.fingerprint == model_fingerprint(res.model)
    assert res.n_recent == sum(len(s) >= 2 for s in recent)
    assert res.cpu_seconds > 0 and np.isfinite(res.new_ndcg) and np.isfinite(res.forgetting)


def test_refine_refuses_a_candidate_broken_on_purpose(tiny_splits, trained):
    before = model_fingerprint(trained)
    res = refine_model(trained, tiny_splits.cold_users, tiny_splits.warm,
                       RefineConfig(epochs=3, lr=50.0, forgetting_users=20))
    assert not res.accepted
    assert res.reason and ("NDCG@10" in res.reason or "diverged" in res.reason or "failed" in res.reason)
    assert model_fingerprint(trained) == before


def test_refine_without_usable_recent_events_is_refused_not_raised(tiny_splits, trained):
    from fsrec_serve.data import UserSequence

    res = refine_model(trained, [UserSequence("x", [1], [1.0])], tiny_splits.warm, RefineConfig())
    assert not res.accepted and res.model is None and res.n_recent == 0
