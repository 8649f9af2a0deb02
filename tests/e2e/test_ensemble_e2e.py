"""A real tritonserver serves the ensemble of two tiny exported models (seeds 0 and 1) as ONE
model; the unchanged client's top-k equals the in-process EnsembleScorer's for the same histories,
for both fusion rules."""

from __future__ import annotations

import pytest

MAX_SEQ_LEN, MAX_TOP_K = 20, 50  # the session's tiny model (conftest.py)


@pytest.fixture(scope="module")
def second_export(e2e_splits, tmp_path_factory):
    """A second tiny model: the session's recipe with another seed, exported beside it."""
    import torch

    from exporters import export_onnx
    from fsrec_serve.model import FsRecConfig
    from fsrec_serve.training import TrainConfig, pretrain

    torch.manual_seed(1)
    cfg = FsRecConfig(num_items=len(e2e_splits.item_map), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_seq_len=MAX_SEQ_LEN)  # fmt: skip
    tc = TrainConfig(epochs=1, batch_size=128, progress=False, device="cpu", patience=0,
                     max_train_seconds=4.0, seed=1)  # fmt: skip
    res = pretrain(e2e_splits, cfg, tc, train_sequences=e2e_splits.loo_train()[:300],
                   valid_examples=e2e_splits.loo_valid()[:32])  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_export_seed1")
    export_onnx(res.model, out, max_top_k=MAX_TOP_K, source="tests/e2e tiny model, seed 1")
    return out


def _in_process_topk(scorer, item_map, histories, k):
    from exporters.triton_python.ensemble_model import top_k
    from fsrec_serve.idmap import pad_left

    x = pad_left([item_map.indices(h)[-MAX_SEQ_LEN:] for h in histories], MAX_SEQ_LEN)
    items, _ = top_k(scorer.next_item_scores(x).numpy(), k)
    return [item_map.raws(row.tolist()) for row in items]


def test_the_served_ensemble_ranks_as_the_in_process_scorer(tiny_export, second_export, e2e_splits,
                                                            user_histories, server_factory, tmp_path):
    from exporters.ensemble import EnsembleScorer
    from exporters.ensemble_repository import build_ensemble_repository
    from fsrec_serve.client import RecommenderClient

    repo = tmp_path / "repo"
    for name, fusion in (("ens_logprob", "mean-logprob"), ("ens_rrf", "rrf")):
        build_ensemble_repository(repo, [tiny_export, second_export], fusion=fusion, model_name=name)
    server = server_factory(repo)
    k = 10
    for name, fusion in (("ens_logprob", "mean-logprob"), ("ens_rrf", "rrf")):
        scorer = EnsembleScorer.from_exports([tiny_export, second_export], fusion=fusion)
        want = _in_process_topk(scorer, e2e_splits.item_map, user_histories, k)
        with RecommenderClient.for_server(server, "grpc", model_name=name, timeout_s=30) as c:
            got = [c.recommend(h, k=k).items for h in user_histories]
            batch = [r.items for r in c.recommend_batch(user_histories, k=k)]
        assert got == want, fusion
        assert batch == want, fusion
        assert all(not set(items) & set(h[-MAX_SEQ_LEN:]) for items, h in zip(got, user_histories))  # the newest are sent
    # the members disagree somewhere: the fused list is not simply one member's
    solo = [_in_process_topk(EnsembleScorer.from_exports([d]), e2e_splits.item_map, user_histories, k)
            for d in (tiny_export, second_export)]
    assert solo[0] != solo[1]
