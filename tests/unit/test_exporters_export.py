"""ONNX export through Optimum: dynamic shapes, the in-graph history mask, padding invariance,
validation against PyTorch (and its failure on a graph that does not match), PEFT merges."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from exporters.export import (
    FILLER_ITEM,
    ExportDriftWarning,
    FsRecTopKModule,
    export_onnx,
    torch_topk,
    validate_export,
)
from exporters.runtime import ExportMeta, make_session, run_topk
from fsrec_serve.data import IdMap
from fsrec_serve.errors import ConfigError, ExportError, ExportValidationError
from fsrec_serve.idmap import pad_left
from fsrec_serve.model import MASK_VALUE, FsRecConfig, FsRecModel

NUM_ITEMS, SEQ, K = 60, 16, 20


def tiny_model(seed: int = 0, objective: str = "cloze", **kw) -> FsRecModel:
    torch.manual_seed(seed)
    cfg = FsRecConfig(num_items=NUM_ITEMS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_seq_len=SEQ, objective=objective, **kw)
    m = FsRecModel(cfg).eval()
    # spread the output bias so that scores are far from ties
    with torch.no_grad():
        m.output_bias.bias.copy_(torch.linspace(-1, 1, NUM_ITEMS + 1))
    m.item_map = IdMap([f"i{i}" for i in range(1, NUM_ITEMS + 1)])
    return m


def histories(n: int, seed: int = 0, max_len: int = SEQ - 2) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(np.arange(1, NUM_ITEMS + 1), size=int(rng.integers(1, max_len + 1)), replace=False).tolist()
            for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    out = tmp_path_factory.mktemp("export") / "fp32"
    res = export_onnx(model, out, max_top_k=K, validate_with=histories(80), source="unit test")
    return model, res


def test_export_writes_graph_and_side_files(exported):
    model, res = exported
    d = res.output_dir
    for name in ("model.onnx", "config.json", "item_map.json", "fsrec_meta.json"):
        assert (d / name).exists(), name
    meta = ExportMeta.load(d)
    assert (meta.max_seq_len, meta.max_top_k, meta.num_items, meta.objective, meta.precision) == (
        SEQ, K, NUM_ITEMS, "cloze", "fp32")
    assert json.loads((d / "config.json").read_text())["model_type"] == "fsrec"
    assert IdMap.load(d / "item_map.json") == model.item_map
    # I/O as the serving contract says, with Optimum's named dynamic axes
    g = onnx.load(str(res.onnx_path)).graph
    dims = lambda v: [x.dim_param or x.dim_value for x in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i), i.type.tensor_type.elem_type) for i in g.input] == [
        ("item_ids", ["batch_size", "sequence_length"], onnx.TensorProto.INT64),
        ("user_params", ["batch_size", 32], onnx.TensorProto.FLOAT)]
    outs = {o.name: (dims(o), o.type.tensor_type.elem_type) for o in g.output}
    assert outs == {"top_items": (["batch_size", K], onnx.TensorProto.INT64),
                    "top_scores": (["batch_size", K], onnx.TensorProto.FLOAT)}
    v = res.validation
    assert v.passed and v.n_users == 80 and v.max_abs_diff <= 1e-4 and v.top10_overlap == 1.0


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("length", [1, 5, SEQ])
def test_dynamic_batch_and_sequence_match_pytorch(exported, batch, length):
    model, res = exported
    sess = make_session(res.output_dir)
    x = pad_left(histories(batch, seed=batch + length, max_len=length), length)
    items, scores = run_topk(sess, x, batch_size=batch)
    assert items.shape == (batch, K) and items.dtype == np.int64 and scores.dtype == np.float32
    ref_items, ref_scores, _ = torch_topk(model, x, max_top_k=K)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_array_equal(items, ref_items)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_history_padding_and_mask_never_returned(exported):
    _, res = exported
    hist = histories(64, seed=3)
    items, scores = run_topk(make_session(res.output_dir), pad_left(hist, SEQ))
    for h, row, sc in zip(hist, items, scores):
        assert not set(row.tolist()) & set(h[-SEQ:]), "a history item was recommended"
        assert 0 not in row and NUM_ITEMS + 1 not in row
        assert row.min() >= 1 and row.max() <= NUM_ITEMS
        assert sc.min() > MASK_VALUE / 2


def test_padding_length_invariance(exported):
    """Right-aligned positions: the same history gives the same top-K at any padded length."""
    _, res = exported
    sess = make_session(res.output_dir)
    hist = histories(10, seed=5, max_len=6)
    a_items, a_scores = run_topk(sess, pad_left(hist, 8))
    b_items, b_scores = run_topk(sess, pad_left(hist, SEQ))
    np.testing.assert_array_equal(a_items, b_items)
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-5)


def test_filler_when_history_covers_the_catalogue(tmp_path):
    """Fewer recommendable items than K: the rest is -1 with MASK_VALUE, never a masked item."""
    model = tiny_model()
    res = export_onnx(model, tmp_path / "e", max_top_k=NUM_ITEMS)
    hist = [list(range(1, SEQ + 1))]  # SEQ distinct items -> NUM_ITEMS - SEQ recommendable
    items, scores = run_topk(make_session(res.output_dir), pad_left(hist, SEQ))
    real = items[0][items[0] != FILLER_ITEM]
    assert len(real) == NUM_ITEMS - SEQ
    assert not set(real.tolist()) & set(hist[0])
    assert np.all(scores[0][items[0] == FILLER_ITEM] == np.float32(MASK_VALUE))


def test_causal_model_exports_and_validates(tmp_path):
    model = tiny_model(objective="causal")
    res = export_onnx(model, tmp_path / "c", max_top_k=K, validate_with=histories(30))
    assert res.validation.passed and res.meta.objective == "causal"
    sess = make_session(res.output_dir)
    for length in (1, 7, SEQ):  # the causal mask is built for the actual length, not the traced one
        x = pad_left(histories(5, seed=length, max_len=length), length)
        items, scores = run_topk(sess, x)
        ref_items, ref_scores, _ = torch_topk(model, x, max_top_k=K)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
        np.testing.assert_array_equal(items, ref_items)


def test_validation_fails_naming_the_difference(exported):
    _, res = exported
    other = tiny_model(seed=1)  # different weights: the graph does not reproduce it
    with pytest.raises(ExportValidationError, match=r"max \|score diff\|.*exceeds|top-10 agreement"):
        validate_export(res.onnx_path, other, histories(40))


def test_small_drift_warns(exported):
    model, res = exported
    drifted = tiny_model()
    with torch.no_grad():
        drifted.output_bias.bias.add_(5e-4)  # constant shift: same ranking, scores off by 5e-4
    with pytest.warns(ExportDriftWarning, match="atol"):
        rep = validate_export(res.onnx_path, drifted, histories(20), atol=1e-4)
    assert rep.passed and rep.top10_overlap == 1.0 and 4e-4 < rep.max_abs_diff < 6e-4


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="max_top_k"):
        FsRecTopKModule(tiny_model(), max_top_k=NUM_ITEMS + 1)
    with pytest.raises(ExportError, match="merge_and_unload"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x")


def test_merged_lora_adapter_exports_the_same_way(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_model()
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["query", "value"], lora_alpha=8))
    with torch.no_grad():  # a trained-looking adapter: non-zero B so the merge changes weights
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    merged = peft_model.merge_and_unload().eval()
    res = export_onnx(merged, tmp_path / "lora", max_top_k=K, validate_with=histories(30))
    assert res.validation.passed
    # and it differs from the base model's export (the adapter is in the graph)
    base_items, _ = run_topk(make_session(res.output_dir), pad_left(histories(30), SEQ))
    ref_items, _, _ = torch_topk(tiny_model(), pad_left(histories(30), SEQ), max_top_k=K)
    assert not np.array_equal(base_items, ref_items)


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_last_position_shortcut_equals_next_item_scores(objective):
    """The default graph computes the last block for the scored position only: same scores."""
    model = tiny_model(objective=objective, num_item_features=3)
    model.set_item_features(torch.rand(NUM_ITEMS + 1, 3))
    full, short = FsRecTopKModule(model, K), FsRecTopKModule(model, K, last_position_only=True)
    for length in (1, 6, SEQ):
        x = torch.as_tensor(pad_left(histories(9, seed=length, max_len=length), length))
        with torch.no_grad():
            np.testing.assert_allclose(short.masked_scores(x).numpy(), full.masked_scores(x).numpy(), atol=1e-5)


def test_full_graph_export_is_equivalent(exported, tmp_path):
    model, res = exported
    full = export_onnx(model, tmp_path / "full", max_top_k=K, last_position_only=False,
                       validate_with=histories(40))
    assert full.validation.passed and full.meta.extra["last_position_only"] is False
    assert res.meta.extra["last_position_only"] is True
    x = pad_left(histories(20, seed=9), SEQ)
    a = run_topk(make_session(full.output_dir), x)
    b = run_topk(make_session(res.output_dir), x)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_every_length_at_its_own_width_equals_the_padded_model(exported, tmp_path, objective):
    """Real-length serving: a history sent at its own length L (no padding) gets exactly the
    top-k of the same history padded to max_seq_len, for every L in 1..max_seq_len."""
    if objective == "cloze":
        _, res = exported
    else:
        res = export_onnx(tiny_model(objective="causal"), tmp_path / "c", max_top_k=K)
    sess = make_session(res.output_dir)
    rng = np.random.default_rng(11)
    for length in range(1, SEQ + 1):
        h = rng.choice(np.arange(1, NUM_ITEMS + 1), size=length, replace=False).tolist()
        own_items, own_scores = run_topk(sess, np.asarray([h], np.int64))
        pad_items, pad_scores = run_topk(sess, pad_left([h], SEQ))
        np.testing.assert_array_equal(own_items, pad_items, err_msg=f"length {length}")
        np.testing.assert_allclose(own_scores, pad_scores, atol=1e-5)


def test_user_params_parity_with_pytorch_and_zeros_are_zero_shot(exported):
    """ONNX with per-user parameters == PyTorch next_item_scores(history, user_params) within
    1e-4; zeros give the answer of a request without them (= the base model's)."""
    model, res = exported
    sess = make_session(res.output_dir)
    hist = histories(40, seed=21)
    x = pad_left(hist, SEQ)
    up = (0.3 * np.random.default_rng(2).standard_normal((len(hist), 32))).astype(np.float32)
    items, scores = run_topk(sess, x, user_params=up)
    with torch.inference_mode():
        ref = model.next_item_scores(torch.as_tensor(x), torch.as_tensor(up)).numpy()  # [B, N]
    for b in range(len(hist)):
        real = items[b] >= 0
        np.testing.assert_allclose(scores[b][real], ref[b][items[b][real]], atol=1e-4)
        assert not set(items[b].tolist()) & set(hist[b])  # the history stays masked
    ref_items, _, _ = torch_topk(model, x, max_top_k=K, user_params=up)
    np.testing.assert_array_equal(items, ref_items)
    z_items, z_scores = run_topk(sess, x, user_params=np.zeros_like(up))
    n_items, n_scores = run_topk(sess, x)  # feeds() fills zeros: the no-input answer
    base_items, base_scores, _ = torch_topk(model, x, max_top_k=K)  # user_params=None in PyTorch
    np.testing.assert_array_equal(z_items, base_items)
    np.testing.assert_array_equal(z_scores, n_scores)
    np.testing.assert_allclose(z_scores, base_scores, atol=1e-5)
    assert not np.array_equal(items, z_items)  # the parameters do change the answer
