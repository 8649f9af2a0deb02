"""Few-shot protocols (cold users, cold items, forgetting) and the report, on the tiny synthetic log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsrec_serve.adaptation import AdaptConfig
from fsrec_serve.adaptation.items import adapt_cold_items
from fsrec_serve.experiments.coldstart import (POPULARITY, cold_item_events, coldstart_items, coldstart_users,
                                               forgetting, interaction_times)
from fsrec_serve.evaluation import PopularityModel, evaluate_next_item
from fsrec_serve.evaluation.report import kshot_table, write_report
from fsrec_serve.experiments.coldstart import kshot_fold, short_prefix_data, user_folds
from fsrec_serve.training import pretrain


@pytest.fixture(scope="module")
def pretrained(tiny_splits, tiny_model_config):
    """A tiny model pretrained on the warm users of the default tiny split (seconds)."""
    from fsrec_serve.training import TrainConfig

    tiny_config = tiny_model_config

    torch.manual_seed(0)
    nf = tiny_splits.item_features.shape[1]
    cfg = tiny_config(len(tiny_splits.item_map), features=nf)
    tc = TrainConfig(epochs=15, batch_size=16, lr=5e-3, warmup_ratio=0.0, patience=0, progress=False,
                     device="cpu", seed=0)
    return pretrain(tiny_splits, cfg, tc).model


def fast_cfg(**kw):
    base = dict(epochs=4, patience=2)
    base.update(kw)
    return AdaptConfig(**base)


def test_coldstart_users_runs_every_kind_of_method(pretrained, tiny_splits):
    support, query = tiny_splits.support_query(5)
    assert query and all(len(s) == 5 for s in support)
    runs = coldstart_users(pretrained, tiny_splits, 5, [POPULARITY, "zero_shot", "lora", "auto"],
                           fast_cfg(auto_candidates=[{"strategy": "head_only"}]))
    by = {r.strategy: r for r in runs}
    assert set(by) == {POPULARITY, "zero_shot", "lora", "auto"}
    assert all(r.metrics["n"] == len(query) for r in runs)
    # zero-shot and popularity are exactly the evaluator's numbers on the query (support = history)
    ref = evaluate_next_item(pretrained, query, ks=(10,))
    assert by["zero_shot"].metrics["ndcg@10"] == pytest.approx(ref["ndcg@10"], abs=1e-12)
    pop = evaluate_next_item(PopularityModel.fit(tiny_splits.warm, len(tiny_splits.item_map)), query, ks=(10,))
    assert by[POPULARITY].metrics["hr@10"] == pytest.approx(pop["hr@10"], abs=1e-12)
    assert by["lora"].size_kb > 0 and by["zero_shot"].size_kb == 0
    assert by["auto"].info["chosen"]["strategy"] in ("zero_shot", "head_only")
    assert [c["strategy"] for c in by["auto"].info["candidates"]] == ["zero_shot", "head_only"]


def test_per_user_micro_tuning(pretrained, tiny_splits):
    (run,) = coldstart_users(pretrained, tiny_splits, 3, ["lora"], fast_cfg(epochs=2), per_user=True,
                             measure_size=False)
    _, query = tiny_splits.support_query(3)
    assert run.metrics["n"] == len(query) and run.info["per_user"]


def test_cold_item_events_split_adaptation_before_evaluation(tiny_interactions, tiny_splits):
    ts = interaction_times(tiny_interactions)
    adapt_seqs, examples = cold_item_events(tiny_splits, ts, n_adapt=2)
    cold = set(tiny_splits.cold_items.tolist())
    cold_users = {s.user for s in tiny_splits.cold_users}
    assert adapt_seqs and examples
    assert all(s.items[-1] in cold and s.user not in cold_users for s in adapt_seqs)
    assert all(e.target in cold and e.user not in cold_users for e in examples)
    # per item: at most 2 adaptation events, all earlier in time than its evaluation events
    first_eval = {}
    for e in examples:
        full = tiny_splits.full_sequences[e.user]
        assert full.items[: len(e.history)] == e.history and full.items[len(e.history)] == e.target
        t = ts[(e.user, len(e.history))]
        first_eval[e.target] = min(first_eval.get(e.target, t), t)
    per_item: dict = {}
    for s in adapt_seqs:
        per_item.setdefault(s.items[-1], []).append(ts[(s.user, len(s) - 1)])
    for it, times in per_item.items():
        assert len(times) <= 2
        if it in first_eval:
            assert max(times) <= first_eval[it]


def test_cold_item_adaptation_changes_only_the_new_items_rows(pretrained, tiny_splits, tiny_interactions):
    adapt_seqs, _ = cold_item_events(tiny_splits, interaction_times(tiny_interactions), n_adapt=3)
    res = adapt_cold_items(pretrained, adapt_seqs, tiny_splits.cold_items, fast_cfg(lr=5e-2))
    before = dict(pretrained.named_parameters())
    after = dict(res.model.named_parameters())
    cold = torch.as_tensor(tiny_splits.cold_items)
    warm = torch.ones(before["item_embeddings.weight"].shape[0], dtype=torch.bool)
    warm[cold] = False
    assert torch.equal(after["item_embeddings.weight"][warm], before["item_embeddings.weight"][warm])
    assert not torch.equal(after["item_embeddings.weight"][cold], before["item_embeddings.weight"][cold])
    nb = before["output_bias.bias"].shape[0]
    wb = warm[:nb]
    assert torch.equal(after["output_bias.bias"][wb], before["output_bias.bias"][wb])
    for n, p in before.items():
        if n not in ("item_embeddings.weight", "output_bias.bias"):
            assert torch.equal(p, after[n]), n


def test_coldstart_items_protocol_reports_before_and_after(pretrained, tiny_splits, tiny_interactions):
    out = coldstart_items(pretrained, tiny_splits, n_adapt=3, config=fast_cfg(lr=5e-2),
                          timestamps=interaction_times(tiny_interactions))
    assert out["n_eval"] > 0 and out["n_adapt_sequences"] > 0
    # "before" and the warm users' numbers are the base model's, recomputed independently
    _, examples = cold_item_events(tiny_splits, interaction_times(tiny_interactions), n_adapt=3)
    assert out["before"]["ndcg@10"] == pytest.approx(evaluate_next_item(pretrained, examples)["ndcg@10"])
    assert out["warm_before"]["ndcg@10"] == pytest.approx(
        evaluate_next_item(pretrained, tiny_splits.loo_test())["ndcg@10"])
    assert out["after"] != out["before"]  # learning the cold items changed their ranks
    assert out["size_kb"] > 0


def test_forgetting_reports_the_ratio(pretrained, tiny_splits):
    out = forgetting(pretrained, tiny_splits, "lora", fast_cfg(epochs=2), replay_ratio=1.0)
    assert out["forgetting_ratio"] == pytest.approx(out["warm_after"]["ndcg@10"] / out["warm_before"]["ndcg@10"])
    assert out["info"]["n_replay"] > 0 and out["info"]["n_new"] > 0


def _fake_results(tmp_path):
    rows = []
    rng = np.random.default_rng(0)
    for k in (1, 3, 5, 10):
        for m in ("popularity", "zero-shot", "lora", "auto"):
            rows.append({"dataset": "ml-100k", "protocol": f"coldstart-k{k}", "method": m, "metric": "ndcg@10",
                         "mean": float(rng.random()), "std": 0.01, "n": 3})
        rows.append({"dataset": "ml-100k", "protocol": f"coldstart-k{k}", "method": "lora", "metric": "size_kb",
                     "mean": 12.5, "std": 0.0, "n": 3})
    rows.append({"dataset": "ml-100k", "protocol": "metarec", "method": "item-mean", "metric": "ndcg@5",
                 "mean": 0.615, "std": 0.03, "n": 10})
    path = tmp_path / "fewshot.json"
    path.write_text(json.dumps({"benchmark": "fewshot", "command": "python -m bench.fewshot", "date": "d",
                                "machine": "m", "git_commit": "c", "results": rows}))
    return path, rows


def test_report_writes_markdown_and_png(tmp_path):
    path, rows = _fake_results(tmp_path)
    table = kshot_table(rows, "ml-100k")
    assert table.splitlines()[0] == "| method | k=1 | k=3 | k=5 | k=10 |"
    assert table.splitlines()[2].startswith("| popularity |")
    written = write_report([path], tmp_path / "out")
    md = (tmp_path / "out" / "adaptation_report.md").read_text()
    assert "k=5" in md and "Adapter size" in md and "MeLU 0.5331" in md
    png = [p for p in written if p.suffix == ".png"]
    assert png and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_folds_make_every_eligible_user_cold_exactly_once(tiny_interactions):
    from fsrec_serve.data import SplitConfig, make_splits

    sp = make_splits(tiny_interactions, SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))
    folds = user_folds(sp, 3, seed=1, min_len=6)
    cold = [s.user for f in folds for s in f.cold_users]
    eligible = {s.user for s in sp.warm if len(sp.full_sequences[s.user]) >= 6}
    assert sorted(cold) == sorted(eligible)  # each once
    for f in folds:
        assert not {s.user for s in f.cold_users} & {s.user for s in f.warm}  # never pretrained on
        assert len(f.warm) + len(f.cold_users) == len(sp.warm)


def test_short_prefix_data_never_uses_a_cold_users_query(tiny_splits):
    support, query = tiny_splits.support_query(3)
    train, valid = short_prefix_data(tiny_splits, support, 3, seed=0)
    cold = {s.user for s in tiny_splits.cold_users}
    warm = {s.user: s for s in tiny_splits.warm}
    assert valid and all(e.user in warm and e.user not in cold for e in valid)
    assert all(len(e.history) == 3 and e.target == warm[e.user].items[3] for e in valid)
    extra = train[len(support):]
    assert train[: len(support)] == support and extra
    assert all(s.user in warm and s.items == warm[s.user].items[:4] for s in extra)
    assert not {e.user for e in valid} & {s.user for s in extra}  # validation users held out
    queried = {(e.user, e.target) for e in query}
    assert not queried & {(s.user, s.items[-1]) for s in train}


def test_kshot_fold_methods_and_zero_shot_identity(pretrained, tiny_splits):
    from fsrec_serve.adaptation import PerUserConfig

    rec = kshot_fold(pretrained, tiny_splits, 5, ["head_only+warm"], fast_cfg(auto_candidates=[{"strategy": "head_only"}]),
                     PerUserConfig(lrs=(0.1,), steps=(5,)), log=lambda m: None)
    _, query = tiny_splits.support_query(5)
    m = rec["methods"]
    assert set(m) == {"popularity", "zero-shot", "head-only+warm", "per-user", "cohort+per-user", "auto"}
    assert m["zero-shot"]["ranks"] == evaluate_next_item(pretrained, query, ks=(10,), return_ranks=True)["ranks"]
    if m["per-user"]["info"]["n_adapted"] == 0:  # nobody adapted: exactly the zero-shot ranking
        assert m["per-user"]["ranks"] == m["zero-shot"]["ranks"]
    assert all(len(v["ranks"]) == len(query) for v in m.values())
