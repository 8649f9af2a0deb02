"""Pruning surgery (``exporters.prune``): a catalogue-pruned model scores its kept items exactly
as the full model does, its id map lists the kept items only and round-trips, a pruned item comes
back when it is popular again; head / FFN pruning removes the hand-computed number of parameters,
ranks units by gradient importance, survives save/load and still exports to ONNX exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters import prune as P
from exporters.export import export_onnx, torch_topk
from exporters.runtime import make_session, run_topk
from fsrec_serve.contract import MASK_VALUE
from fsrec_serve.errors import ConfigError
from fsrec_serve.idmap import pad_left
from fsrec_serve.model import FsRecModel


def _trained_like(tiny_model, **kw) -> FsRecModel:
    m = tiny_model(objective="causal", **kw)
    with torch.no_grad():  # spread scores: no near-ties between items
        m.item_embeddings.weight.normal_(0, 1.0)
        m.output_bias.bias.normal_(0, 0.5)
    return m.eval()


def test_recency_popularity_weights_by_distance_to_the_newest_item():
    pop = P.recency_popularity([[1, 2, 3], [3]], num_items=4, half_life=1.0)
    # seq 1: item 3 newest (1), item 2 one step older (0.5), item 1 (0.25); seq 2: item 3 (1)
    assert pop.tolist() == [0.0, 0.25, 0.5, 2.0, 0.0]
    assert P.recency_popularity([[1, 2, 3], [3]], 4, float("inf")).tolist() == [0, 1, 1, 2, 0]
    with pytest.raises(ConfigError, match="half_life"):
        P.recency_popularity([[1]], 4, 0.0)


def test_catalogue_pruned_scores_of_kept_items_equal_the_full_models(tiny_model, tiny_splits):
    full = _trained_like(tiny_model, features=True)
    pc = P.prune_catalogue(full, tiny_splits.loo_train(), keep=12)
    assert pc.model.config.num_items == 12 and len(pc.kept) == 12
    assert pc.model.item_embeddings.weight.shape[0] == 14 and pc.model.output_bias.bias.shape[0] == 13
    assert full.config.num_items == len(tiny_splits.item_map)  # the full model is untouched
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, full.config.num_items + 1, size=int(rng.integers(1, 15))).tolist() for _ in range(40)]
    kept = set(pc.kept.tolist())
    hist = [[i for i in h if i in kept] or [int(pc.kept[0])] for h in hist]  # pruned items dropped, as documented
    to_p = pc.to_pruned()
    L = full.config.max_seq_len
    with torch.no_grad():
        want = full.next_item_scores(torch.as_tensor(pad_left(hist, L)))  # [B, N_full]
        got = pc.model.next_item_scores(torch.as_tensor(pad_left([[to_p[i] for i in h] for h in hist], L)))
        scorer = P.FullCatalogueScorer(pc).next_item_scores(torch.as_tensor(pad_left(hist, 30)))
    cols = torch.as_tensor(pc.kept)
    torch.testing.assert_close(got[:, 1:], want[:, cols], atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer[:, cols], want[:, cols], atol=1e-5, rtol=0)
    pruned_cols = [i for i in range(1, full.config.num_items + 1) if i not in kept]
    assert (scorer[:, pruned_cols] == MASK_VALUE).all() and (scorer[:, 0] == MASK_VALUE).all()


def test_drop_pruned_repacks_histories_newest_last():
    to_p = torch.as_tensor([0, 1, 0, 2, 0, 3])  # items 2 and 4 pruned
    x = torch.as_tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 2, 4, 2]])
    assert P.drop_pruned(x, to_p, 4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    assert P.drop_pruned(x, to_p, 2).tolist() == [[2, 3], [0, 0]]


def test_pruned_id_map_round_trips_and_a_pruned_item_comes_back(tiny_model, tiny_splits, tmp_path):
    full = _trained_like(tiny_model)
    seqs = tiny_splits.loo_train()
    pc = P.prune_catalogue(full, seqs, keep=10)
    raws = full.item_map.raws(pc.kept.tolist())
    assert pc.model.item_map.raw_ids == raws  # the served map lists the kept items only, in order
    pc.model.save_pretrained(tmp_path / "m")
    back = FsRecModel.from_pretrained(tmp_path / "m")
    assert back.item_map == pc.model.item_map and back.config.num_items == 10
    for j, raw in enumerate(raws, start=1):  # raw -> pruned index -> full index -> the same raw
        assert back.item_map.index(raw) == j and full.item_map.raw(int(pc.kept[j - 1])) == raw
    gone = next(i for i in range(1, full.config.num_items + 1) if i not in set(pc.kept.tolist()))
    assert full.item_map.raw(gone) not in back.item_map
    # the next export prunes from the full model again: once users consume it, it is served
    again = P.prune_catalogue(full, seqs + [[gone] * 50], keep=10)
    assert gone in again.kept.tolist() and full.item_map.raw(gone) in again.model.item_map
    with pytest.raises(ConfigError, match="keep"):
        P.prune_catalogue(full, seqs, keep=0)


def _counted_model(tiny_model) -> FsRecModel:
    # H = 16, 2 heads of 8, FFN 32, 2 blocks
    return _trained_like(tiny_model, num_hidden_layers=2)


def test_head_and_ffn_pruning_remove_the_hand_computed_parameters(tiny_model, tiny_splits, tmp_path):
    full = _counted_model(tiny_model)
    heads, ffn = P.structure_importance(full, tiny_splits.loo_train())
    assert [len(h) for h in heads] == [2, 2] and [len(f) for f in ffn] == [32, 32]
    n0 = P.num_parameters(full)
    h = P.prune_heads(full, 2, heads)  # one head of 8 dims per block goes
    # per block: Q, K, V lose 8 rows of 16 weights + 8 biases; the output projection 8 columns of 16
    assert n0 - P.num_parameters(h) == 2 * (3 * (8 * 16 + 8) + 8 * 16)
    f = P.prune_ffn(h, 8, ffn)  # 24 neurons per block go: 16 weights + 1 bias in, 16 weights out
    assert P.num_parameters(h) - P.num_parameters(f) == 2 * 24 * (16 + 1 + 16)
    assert P.num_parameters(full) == n0 and f.config.intermediate_size == 8
    assert sorted((int(k), len(v)) for k, v in f.config.pruned_heads.items()) == [(0, 1), (1, 1)]
    f.save_pretrained(tmp_path / "m")  # pruned_heads and intermediate_size rebuild the shapes
    back = FsRecModel.from_pretrained(tmp_path / "m").eval()
    x = torch.as_tensor([[0, 3, 4, 5], [1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(back.next_item_scores(x), f.next_item_scores(x))
    # the pruned model exports to ONNX and ONNX Runtime reproduces PyTorch
    hist = [e.history for e in tiny_splits.loo_test()]
    res = export_onnx(f, tmp_path / "onnx", max_top_k=10, validate_with=hist)
    assert res.validation.passed and res.validation.max_abs_diff < 1e-4
    x = pad_left(hist, f.config.max_seq_len)
    onnx_items, onnx_scores = run_topk(make_session(res.output_dir), x)
    torch_items, torch_scores, _ = torch_topk(f, x, max_top_k=10)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)
    assert (onnx_items[:, 0] == torch_items[:, 0]).mean() > 0.95


def test_importance_ranks_a_dead_head_and_dead_neurons_last(tiny_model, tiny_splits):
    full = _counted_model(tiny_model)
    layer = full.encoder.encoder.layer[0]
    with torch.no_grad():
        layer.attention.output.dense.weight[:, 8:] = 0.0  # head 1 of block 0 reaches nothing
        layer.output.dense.weight[:, :5] = 0.0  # FFN neurons 0-4 of block 0 reach nothing
    heads, ffn = P.structure_importance(full, tiny_splits.loo_train())
    assert float(heads[0][1]) == 0.0 and float(heads[0][0]) > 0.0
    assert torch.all(ffn[0][:5] == 0) and torch.all(ffn[0][5:] > 0)
    pruned = P.prune_heads(full, 3, heads)
    assert {int(k): v for k, v in pruned.config.pruned_heads.items()} == {0: [1]}
    with pytest.raises(ConfigError, match="heads-1"):
        P.prune_heads(full, 1, heads)  # one head per block at least
    with pytest.raises(ConfigError, match="ffn-33"):
        P.prune_ffn(full, 33, ffn)


def test_recover_fine_tunes_a_pruned_model_on_the_split(tiny_model, tiny_splits):
    from fsrec_serve.training import TrainConfig

    full = _counted_model(tiny_model)
    heads, _ = P.structure_importance(full, tiny_splits.loo_train())
    pruned = P.prune_heads(full, 2, heads)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    out = P.recover(pruned, tiny_splits, TrainConfig(batch_size=16, device="cpu", progress=False), epochs=2)
    assert out is pruned and not out.training
    changed = [k for k, v in out.state_dict().items() if not torch.equal(v, before[k])]
    assert any("attention.self.query" in k for k in changed)
