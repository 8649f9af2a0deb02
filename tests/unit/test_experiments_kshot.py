"""The k-shot benchmark of issue 18.3: baselines, inner-user selection, two-level bootstrap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fsrec_serve.data.splits import Example, UserSequence
from fsrec_serve.experiments.kshot import (
    KshotSettings,
    first_k_popularity,
    item_counts,
    kshot_run,
    static_ranks,
    two_level_gain,
    two_level_mean,
    two_level_means,
)
from fsrec_serve.experiments.kshot_folds import (
    K_MAX,
    kshot_time_folds,
    kshot_user_folds,
)


def _seq(u, items):
    return UserSequence(u, list(items), [1.0] * len(items))


def test_first_k_popularity_counts_the_first_k_plus_one_items():
    seqs = [_seq("a", [1, 2, 3]), _seq("b", [2, 4]), _seq("c", [5, 1, 2])]
    # k=1: the first two items of each user: [1, 2], [2, 4], [5, 1]
    assert item_counts(seqs, 5, first=2).tolist() == [0, 2, 2, 0, 1, 1]
    s = first_k_popularity(seqs, 1, 5)
    total = [0, 2, 3, 1, 1, 1]  # overall counts break the tie between items 1 and 2
    assert s.tolist() == pytest.approx([e + t / 4 for e, t in zip([0, 2, 2, 0, 1, 1], total)])
    assert s[2] > s[1] > s[4] > s[3]
    # ranks: the history is excluded, padding never ranks
    q = [Example("x", [2], 1), Example("y", [1], 3)]
    assert static_ranks(s, q).tolist() == [0, 3]  # 1 first once 2 is excluded; 3 after 1/2-excluded, 4, 5


def test_two_level_bootstrap_on_a_hand_made_example():
    base = [np.array([1.0, 1.0]), np.array([1.0, 1.0])]
    adapted = [np.array([1.0, 1.0]), np.array([3.0, 3.0])]
    g = two_level_gain(base, adapted, n_boot=400, seed=0)
    assert g["mean"] == pytest.approx(1.0) and g["n_users"] == 4 and g["n_groups"] == 2
    # users are identical within a group, so a resample's gain is set by the groups drawn:
    # (A, A) -> 0, (A, B) / (B, A) -> +1, (B, B) -> +2
    boots = two_level_means([(b, a) for b, a in zip(base, adapted)], n_boot=400, seed=0)
    assert set(np.round(boots[:, 1] / boots[:, 0] - 1, 9)) <= {0.0, 1.0, 2.0}
    assert g["ci_low"] == 0.0 and g["ci_high"] == 2.0 and g["boot_undefined"] == 0.0
    # one group: the user-level bootstrap; a zero baseline makes every resample undefined
    z = two_level_gain([np.zeros(3)], [np.ones(3)], n_boot=50)
    assert z["boot_undefined"] == 1.0 and np.isnan(z["ci_low"]) and np.isnan(z["mean"])
    m = two_level_mean([np.array([0.0, 1.0]), np.array([1.0, 1.0])], n_boot=200)
    assert m["mean"] == 0.75 and m["n"] == 2 and m["std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert m["std_users"] == pytest.approx(np.std([0, 1, 1, 1], ddof=1)) and 0.0 <= m["ci_low"] <= m["ci_high"] <= 1.0


def test_user_folds_hold_out_inner_prefixes(tiny_interactions):
    folds = kshot_user_folds(tiny_interactions, n_folds=3, inner_frac=0.3)
    cold = [s.user for f in folds for s in f.splits.cold_users]
    assert len(cold) == len(set(cold))  # every eligible user is cold once
    for f in folds:
        inner = {s.user: s for s in f.inner}
        assert inner and not inner.keys() & {s.user for s in f.splits.cold_users}
        pre = {s.user: s for s in f.pretrain_sequences()}
        for u, s in inner.items():  # the base never trains on an inner user's first K_MAX + 1 items
            assert pre[u].items == s.items[K_MAX + 1:-2]


def test_time_folds_pretrain_only_before_the_cut(tiny_interactions):
    from fsrec_serve.experiments.kshot_folds import all_warm_splits, first_event_times

    times = first_event_times(tiny_interactions, all_warm_splits(tiny_interactions))
    for f in kshot_time_folds(tiny_interactions, quantiles=(0.5,)):
        assert f.splits.cold_users and all(times[s.user][0] >= f.cut_time for s in f.splits.cold_users)
        assert all(times[s.user][len(s) - 1] < f.cut_time for s in f.splits.warm)


def _bases(fold, tiny_config):
    from fsrec_serve.model import FsRecModel

    out = {}
    for i, name in enumerate(("base", "prefix")):
        torch.manual_seed(i)
        m = FsRecModel(tiny_config(len(fold.splits.item_map), "causal", max_seq_len=16))
        m.item_map = fold.splits.item_map
        out[name] = m.eval()
    return out


def _choices(rec):
    m = rec["methods"]
    return (rec["base"], m["head-only+warm"]["info"]["lr"], m["per-user"]["info"].get("lr"),
            m["per-user"]["info"].get("steps"), m["cohort+per-user"]["info"].get("lr"),
            m["inner-best"]["info"]["picked"], {n: v["inner_ranks"] for n, v in m.items()})


def test_selection_never_reads_the_cold_users_queries(tiny_interactions, tiny_model_config):
    fold = kshot_user_folds(tiny_interactions, n_folds=3, inner_frac=0.5)[0]
    settings = KshotSettings(head_only_lrs=(0.1, 0.01), peruser_lrs=(0.03, 0.3), peruser_steps=(2, 5),
                             adapt_epochs=3, adapt_patience=1)
    k = 3
    bases = _bases(fold, tiny_model_config)
    rec = kshot_run(fold, k, bases, settings, log=lambda *_: None)
    # every cold user's query (the (k+1)-th item) replaced by another item: nothing chosen moves
    n = len(fold.splits.item_map)
    changed = [UserSequence(s.user, s.items[:k] + [1 + (s.items[k] % n)] + s.items[k + 1:], s.ratings)
               for s in fold.splits.cold_users]
    other = dataclasses.replace(fold, splits=dataclasses.replace(fold.splits, cold_users=changed))
    rec2 = kshot_run(other, k, bases, settings, log=lambda *_: None)
    assert _choices(rec) == _choices(rec2)
    assert rec["methods"]["zero-shot"]["ranks"] != rec2["methods"]["zero-shot"]["ranks"]
