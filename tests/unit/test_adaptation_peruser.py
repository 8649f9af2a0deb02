"""Per-user user-state offsets (adaptation/peruser.py): behaviour on tiny synthetic models,
vectorized == one-at-a-time, bad supports, and the k-shot helpers of experiments/coldstart.py."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from fsrec_serve.adaptation import AdaptConfig, adapt
from fsrec_serve.adaptation.peruser import PerUserConfig, PerUserResult, first_k, fit_user_params
from fsrec_serve.data import Example, UserSequence
from fsrec_serve.errors import AdaptationError, SupportSetError
from fsrec_serve.evaluation import evaluate_next_item
from fsrec_serve.evaluation.metrics import ndcg_at_k
from fsrec_serve.experiments.coldstart import paired_relative_gain, query_ranks
from fsrec_serve.model import FsRecConfig, FsRecModel, pad_histories

warnings.filterwarnings("ignore", message=".*[Pp]osition ids.*")
N_ITEMS, L, H = 40, 10, 16
CLUSTER = list(range(1, 11))  # items 1..10 share one direction in the clustered model


def tiny_model(seed=0, clustered=False) -> FsRecModel:
    torch.manual_seed(seed)
    cfg = FsRecConfig(num_items=N_ITEMS, hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_seq_len=L, objective="causal", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    m = FsRecModel(cfg).eval()
    if clustered:
        with torch.no_grad():
            w = m.item_embeddings.weight
            c = torch.randn(H)
            c = 2.0 * c / c.norm()
            w[CLUSTER] = c + 0.1 * torch.randn(len(CLUSTER), H)
            m.output_bias.bias[11:31] += 30.0  # 20 popular non-cluster items outrank the cluster
    return m


def support(n=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return [UserSequence(f"u{i}", [int(x) for x in rng.choice(np.arange(1, N_ITEMS + 1), k, replace=False)],
                         [1.0] * k) for i in range(n)]


def fixed(**kw) -> PerUserConfig:
    base = dict(lrs=(0.1,), steps=(15,), l2=1e-3, per_user_check=False)
    base.update(kw)
    return PerUserConfig(**base)


def test_zero_user_params_is_exactly_zero_shot():
    m = tiny_model()
    x = pad_histories([[1, 2, 3], [4], [5, 6, 7, 8, 9]], L)
    assert torch.equal(m.next_item_scores(x, user_params=torch.zeros(3, H)), m.next_item_scores(x))
    # users whose support is too short for an inner check get exact zeros (zero-shot)
    res = fit_user_params(m, [UserSequence("a", [3], [1.0]), UserSequence("b", [4, 5], [1.0, 1.0])])
    assert torch.equal(res.params, torch.zeros(2, H)) and not res.adapted.any()


def test_offset_raises_the_preferred_cluster():
    m = tiny_model(seed=1, clustered=True)
    sup = [UserSequence("fan", [1, 2, 3, 4, 5, 6], [1.0] * 6)]  # support entirely inside the cluster
    res = fit_user_params(m, sup, fixed(lrs=(0.3,), steps=(30,)))
    x = pad_histories([sup[0].items], L)
    before = m.next_item_scores(x)[0]
    after = m.next_item_scores(x, user_params=res.fitted)[0]
    unseen = [7, 8, 9, 10]  # cluster items the user has not interacted with

    def mean_rank(scores):
        s = scores.clone()
        s[[0] + sup[0].items] = float("-inf")
        order = torch.argsort(s, descending=True).tolist()
        return float(np.mean([order.index(i) for i in unseen]))

    assert mean_rank(before) >= 20  # zero-shot: the popular items come first
    assert mean_rank(after) <= 5  # fitted: the unseen cluster items lead the ranking


def test_vectorized_fit_equals_one_user_at_a_time():
    m = tiny_model(seed=2)
    sup = support(n=7, k=6, seed=3)
    together = fit_user_params(m, sup, fixed())
    alone = torch.cat([fit_user_params(m, [s], fixed()).fitted for s in sup])
    assert together.fitted.abs().max() > 1e-3  # something was fitted
    assert torch.allclose(together.fitted, alone, atol=1e-5)


def test_candidate_softmax_stays_close_to_full_softmax():
    m = tiny_model(seed=4)
    sup = support(n=5, k=6, seed=5)
    full = fit_user_params(m, sup, fixed()).fitted
    sampled = fit_user_params(m, sup, fixed(candidates=N_ITEMS)).fitted  # all items = exact
    assert torch.allclose(full, sampled, atol=1e-5)


def test_bad_supports_are_reported_and_never_stop_the_fit():
    m = tiny_model(seed=5)
    good = support(n=3, k=5, seed=6)
    sup = good + [UserSequence("empty", [], []), UserSequence("unknown", [999, 1000, 1001], [1.0] * 3)]
    res = fit_user_params(m, sup, fixed())
    assert set(res.failed) == {"empty", "unknown"}
    assert "empty support" in res.failed["empty"] and "item_map" in res.failed["unknown"]
    assert torch.equal(res.params[3:], torch.zeros(2, H))
    assert res.fitted[:3].abs().sum() > 0  # the good users were fitted
    with pytest.raises(SupportSetError, match="empty"):
        fit_user_params(m, [])


def test_k_larger_than_history_is_a_clear_error():
    s = UserSequence("u", [1, 2, 3], [1.0] * 3)
    assert first_k(s, 2).items == [1, 2]
    with pytest.raises(SupportSetError, match="k=5 is larger than user 'u'.s history .3 interactions.; use k <= 3"):
        first_k(s, 5)


def test_extreme_lr_diverges_to_zero_shot_with_a_report():
    m = tiny_model(seed=6)
    res = fit_user_params(m, support(n=4, k=5), fixed(lrs=(1e38,), steps=(5,)))
    assert torch.isfinite(res.params).all() and torch.equal(res.params, torch.zeros(4, H))
    assert len(res.failed) == 4 and all("diverged" in v and "lower" in v for v in res.failed.values())


def test_failed_runs_never_overwrite_what_is_saved(tmp_path):
    m = tiny_model(seed=7)
    sup = [UserSequence(f"u{i}", [1 + i, 2 + i, 3 + i, 4 + i, 5 + i], [1.0] * 5) for i in range(6)]
    cfg = AdaptConfig(epochs=2, patience=0, lr=1e-2)
    good = adapt(m, sup, strategy="head_only", config=cfg)
    art_dir = tmp_path / "artifact"
    good.save(art_dir)
    before = {p.name: p.read_bytes() for p in art_dir.iterdir()}
    with pytest.raises(AdaptationError, match="diverged .* lower the learning rate"):
        adapt(m, sup, strategy="full", config=cfg.with_overrides(lr=1e30, max_grad_norm=0.0))
    good.artifact.tensors = {k: v * float("nan") for k, v in good.artifact.tensors.items()}
    with pytest.raises(AdaptationError, match="NaN"):
        good.save(art_dir)
    assert {p.name: p.read_bytes() for p in art_dir.iterdir()} == before
    # per-user parameters: atomic JSON, non-finite refused
    path = tmp_path / "user_params.json"
    ok = PerUserResult(["a"], torch.ones(1, H), np.array([True]))
    ok.save(path)
    with pytest.raises(AdaptationError, match="non-finite"):
        PerUserResult(["a"], torch.full((1, H), float("nan")), np.array([True])).save(path)
    assert json.loads(path.read_text())["params"] == [[1.0] * H]


def test_query_ranks_match_the_evaluator_and_gains_are_paired():
    m = tiny_model(seed=8)
    q = [Example(f"u{i}", [1 + i, 5 + i], 20 + i) for i in range(6)]
    ranks = query_ranks(m, q)
    assert ranks.tolist() == evaluate_next_item(m, q, ks=(10,), return_ranks=True)["ranks"]
    assert np.allclose(ndcg_at_k([0, 1, 9, 10], 10), [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])
    g = paired_relative_gain([0.2, 0.2, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3])
    assert g["mean"] == pytest.approx(0.5) and g["ci_low"] == pytest.approx(0.5) and g["n_users"] == 4
    g = paired_relative_gain([0.2, 0.4], [0.3, 0.3])  # means 0.3 and 0.3: no gain
    assert g["mean"] == pytest.approx(0.0) and g["ci_low"] < 0 < g["ci_high"]


def test_cli_per_user_writes_one_offset_per_user(tmp_path):
    from fsrec_serve.cli import main
    from fsrec_serve.data import IdMap

    m = tiny_model(seed=9)
    m.item_map = IdMap([str(i) for i in range(1, N_ITEMS + 1)])
    m.save_pretrained(tmp_path / "base")
    (tmp_path / "support.txt").write_text("a 1 2 3 4 5\nb 6 7 8 9 10\nc 11\n")
    out = tmp_path / "user_params.json"
    rc = main(["adapt", "per-user", "--base", str(tmp_path / "base"), "--support-file",
               str(tmp_path / "support.txt"), "--out", str(out), "--set", "lrs=[0.1]", "--set", "steps=[5]"])
    d = json.loads(out.read_text())
    assert rc == 0 and d["users"] == ["a", "b", "c"] and len(d["params"]) == 3
    assert all(len(p) == H for p in d["params"]) and d["params"][2] == [0.0] * H  # k=1: zero-shot


def test_state_cache_gives_the_same_fit_and_reuses_prefixes(tiny_model, tiny_splits):
    """The learner's prefix-state cache: the same parameters as without it (to float noise), and a
    refit after one more event computes only the new prefixes."""
    from fsrec_serve.adaptation.peruser import PerUserConfig, StateCache, fit_user_params
    from fsrec_serve.data.splits import UserSequence

    model = tiny_model(objective="causal")
    seqs = [UserSequence(s.user, s.items[:8], [1.0] * 8) for s in tiny_splits.loo_train()[:6] if len(s) >= 9]
    cfg = PerUserConfig(lrs=(0.1,), steps=(10,))
    plain = fit_user_params(model, seqs, cfg)
    cache = StateCache()
    cached = fit_user_params(model, seqs, cfg, cache)
    assert torch.allclose(plain.params, cached.params, atol=1e-4)
    misses = cache.misses
    longer = [UserSequence(s.user, list(s.items) + [1], [1.0] * 9) for s in seqs]
    fit_user_params(model, longer, cfg, cache)
    assert cache.misses - misses == len(seqs)  # one new prefix per user


def test_history_context_keeps_prefixes_so_a_new_event_costs_one_encoder_pass(tiny_model, tiny_splits):
    """context="history": the newest `window` items are targets with their full prefix; when the
    history grows past the window, the refit meets one new prefix per user (the window context
    would shift every prefix)."""
    from fsrec_serve.adaptation.online import refit_user_params
    from fsrec_serve.adaptation.peruser import PerUserConfig, StateCache

    model = tiny_model(objective="causal")
    rng = np.random.default_rng(0)
    hist = {f"u{i}": [int(x) for x in rng.integers(1, 30, size=12)] for i in range(4)}
    cfg = PerUserConfig(lrs=(0.1,), steps=(10,))
    for context, new_per_user in (("history", 1), ("window", 3)):
        cache = StateCache()
        refit_user_params(model, hist, window=5, config=cfg, cache=cache, context=context)
        before = cache.misses
        grown = {u: h + [7] for u, h in hist.items()}
        params, info = refit_user_params(model, grown, window=5, config=cfg, cache=cache, context=context)
        new = cache.misses - before  # window: every prefix shifts (4 per user, fewer if two coincide)
        assert (new == len(hist)) if context == "history" else (new >= new_per_user * len(hist)), (context, new)
        assert all(p.shape == (16,) and np.isfinite(p).all() for p in params.values())
