"""Ensembles: the fusion rules against hand-computed values, item-map refusals, one member = that
member's ranking, the repository builder's refusals, the CLI registration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from exporters.ensemble import EnsembleScorer, check_members, mask_history
from exporters.triton_python import ensemble_model as em
from fsrec_serve.contract import MASK_VALUE
from fsrec_serve.errors import ConfigError
from fsrec_serve.idmap import IdMap

M = MASK_VALUE


def tiny_model(seed: int, num_items: int = 30, raw_prefix: str = "i"):
    from fsrec_serve.model import FsRecConfig, FsRecModel

    torch.manual_seed(seed)
    m = FsRecModel(FsRecConfig(num_items=num_items, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               max_seq_len=8))
    m.item_map = IdMap(f"{raw_prefix}{j}" for j in range(1, num_items + 1))
    return m.eval()


def test_mask_value_is_the_contract_copy():
    assert em.MASK_VALUE == MASK_VALUE


def test_mean_logprob_equals_the_hand_computed_fusion():
    a = np.array([[M, 1.0, 2.0, 3.0]], np.float32)
    b = np.array([[M, 3.0, 1.0, 2.0]], np.float32)
    lse = 3.0 + math.log(1 + math.exp(-1) + math.exp(-2))  # the masked column adds exp(-1e4) = 0
    la, lb = [1 - lse, 2 - lse, 3 - lse], [3 - lse, 1 - lse, 2 - lse]
    want = [(x + y) / 2 for x, y in zip(la, lb)]  # [-1.4076, -1.9076, -0.9076]
    got = em.fuse([a, b], "mean-logprob")
    assert got[0, 0] == M
    np.testing.assert_allclose(got[0, 1:], want, rtol=1e-6)
    items, _ = em.top_k(got, 3)
    assert items.tolist() == [[3, 1, 2]]


def test_rrf_equals_the_hand_computed_fusion():
    a = np.array([[M, 1.0, 2.0, 3.0]], np.float32)  # ranks: 3 -> 1, 2 -> 2, 1 -> 3
    b = np.array([[M, 3.0, 1.0, 2.0]], np.float32)  # ranks: 1 -> 1, 3 -> 2, 2 -> 3
    got = em.fuse([a, b], "rrf", rrf_k=60)
    want = [1 / 63 + 1 / 61, 1 / 62 + 1 / 63, 1 / 61 + 1 / 62]
    np.testing.assert_allclose(got[0, 1:], want, rtol=1e-6)
    assert got[0, 0] == M and em.top_k(got, 3)[0].tolist() == [[3, 1, 2]]


def test_an_item_masked_by_any_member_stays_masked_and_fills_nothing():
    a = np.array([[M, 5.0, M, 1.0]], np.float32)
    b = np.array([[M, 1.0, 9.0, 2.0]], np.float32)
    for rule in em.FUSIONS:
        items, scores = em.top_k(em.fuse([a, b], rule), 4)
        assert items.tolist() == [[1, 3, em.FILLER_ITEM, em.FILLER_ITEM]], rule
        assert scores[0, 2] == M


def test_top_k_breaks_ties_by_the_lower_index():
    items, _ = em.top_k(np.array([[M, 1.0, 2.0, 2.0, 2.0, 0.5]], np.float32), 3)
    assert items.tolist() == [[2, 3, 4]]


def test_fuse_refuses_an_unknown_rule_and_ragged_members():
    with pytest.raises(ValueError, match="fusion rule"):
        em.fuse([np.zeros((1, 3))], "max")
    with pytest.raises(ValueError, match="one shape"):
        em.fuse([np.zeros((1, 3)), np.zeros((1, 4))])


def test_members_with_other_item_maps_are_refused_naming_the_mismatch():
    a, b = tiny_model(0), tiny_model(1)
    b.item_map = IdMap(["i1", "i2", "x3"] + [f"i{j}" for j in range(4, 31)])
    with pytest.raises(ConfigError, match=r"different item maps \(index 3: 'x3' vs 'i3'\)"):
        EnsembleScorer([a, b])
    with pytest.raises(ConfigError, match="scores 20 items but"):
        check_members([a, tiny_model(2, num_items=20)])
    c = tiny_model(3)
    c.item_map = None
    with pytest.raises(ConfigError, match="has an item map but"):
        check_members([a, c])
    with pytest.raises(ConfigError, match="1..3 members"):
        check_members([a, a, a, a])
    with pytest.raises(ConfigError, match="fusion"):
        EnsembleScorer([a], fusion="max")


def _examples(n=40, num_items=30, seed=0):
    from fsrec_serve.data.splits import Example

    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        h = rng.choice(np.arange(1, num_items + 1), size=int(rng.integers(1, 12)), replace=False).tolist()
        out.append(Example(str(u), h[:-1] or h, h[-1] if len(h) > 1 else int(rng.integers(1, num_items + 1))))
    return out


@pytest.mark.parametrize("fusion", ["mean-logprob", "rrf"])
def test_an_ensemble_of_one_member_ranks_as_that_member(fusion):
    from fsrec_serve.evaluation import evaluate_next_item

    m = tiny_model(0)
    ex = _examples()
    solo = evaluate_next_item(m, ex, ks=(10,), return_ranks=True)
    ens = evaluate_next_item(EnsembleScorer([m], fusion=fusion), ex, ks=(10,), return_ranks=True)
    assert ens["ranks"] == solo["ranks"] and ens["ndcg@10"] == solo["ndcg@10"]
    h = torch.tensor([[0, 0, 3, 7, 9]])
    want = torch.topk(mask_history(m.next_item_scores(h).detach(), h), 10).indices
    got = torch.topk(EnsembleScorer([m], fusion=fusion).next_item_scores(h), 10).indices
    assert got.tolist() == want.tolist()


def test_the_ensemble_scorer_fuses_its_members_and_masks_the_history():
    a, b = tiny_model(0), tiny_model(1)
    h = torch.tensor([[0, 0, 3, 7, 9], [1, 2, 4, 5, 6]])
    ens = EnsembleScorer([a, b])
    got = ens.next_item_scores(h).numpy()
    with torch.inference_mode():
        sa, sb = (mask_history(m.next_item_scores(h), h).numpy() for m in (a, b))
    np.testing.assert_allclose(got, em.fuse([sa, sb]), rtol=1e-6)
    assert (got[0, [0, 3, 7, 9]] == M).all() and (got[1, [1, 2, 4, 5, 6]] == M).all()
    assert ens.max_seq_len == 8 and ens.num_items == 30


def _fake_export(d, raw_ids, max_seq_len=8):
    d.mkdir()
    (d / "model.onnx").write_bytes(b"")
    IdMap(raw_ids).save(d / "item_map.json")
    (d / "fsrec_meta.json").write_text(json.dumps({"max_seq_len": max_seq_len, "max_top_k": 5,
                                                   "num_items": len(raw_ids), "objective": "cloze"}))
    return d


def test_the_builder_refuses_one_member_and_mismatched_exports(tmp_path):
    from exporters.ensemble_repository import build_ensemble_repository

    a = _fake_export(tmp_path / "a", ["1", "2", "3"])
    b = _fake_export(tmp_path / "b", ["1", "3", "2"])
    c = _fake_export(tmp_path / "c", ["1", "2", "3"], max_seq_len=16)
    with pytest.raises(ConfigError, match="2..3 export directories"):
        build_ensemble_repository(tmp_path / "repo", [a])
    with pytest.raises(ConfigError, match=r"different item maps \(index 2: '3' vs '2'\)"):
        build_ensemble_repository(tmp_path / "repo", [a, b])
    with pytest.raises(ConfigError, match="different lengths"):
        build_ensemble_repository(tmp_path / "repo", [a, c])
    with pytest.raises(ConfigError, match="fusion"):
        build_ensemble_repository(tmp_path / "repo", [a, a], fusion="max")
    assert not (tmp_path / "repo").exists()


def test_fsrec_ensemble_is_registered():
    from fsrec_serve.cli import build_parser

    args = build_parser().parse_args(["ensemble", "--member", "a", "--member", "b", "--repository", "r"])
    assert args.member == ["a", "b"] and args.fusion == "mean-logprob" and args.func.__name__ == "_ensemble"
