"""Optimization, quantization and the guard: exact left-padding-safe fusion, the accuracy guard
refusing a damaged model (saying by how much), batch invariance (dynamic INT8 fails it, static
and weight-only INT8 pass), and the served-model selection record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exporters.export import export_onnx, torch_topk
from exporters.guard import check_batch_invariance, check_guard
from exporters.optimize import optimize
from exporters.quantize import detect_preset, quantize
from exporters.runtime import ExportMeta, make_session, run_topk
from exporters.selection import select_served_model
from fsrec_serve.contract import GUARD_FILE
from fsrec_serve.data import Example
from fsrec_serve.errors import ConfigError, QuantizationGuardError
from fsrec_serve.idmap import pad_left
from fsrec_serve.model import FsRecConfig, FsRecModel

NUM_ITEMS, SEQ, K = 80, 16, 20


def tiny_model(seed: int = 0) -> FsRecModel:
    torch.manual_seed(seed)
    cfg = FsRecConfig(num_items=NUM_ITEMS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_seq_len=SEQ)
    m = FsRecModel(cfg).eval()
    with torch.no_grad():  # a model with real structure: larger embeddings spread the scores
        m.item_embeddings.weight.normal_(0, 1.0)
        m.output_bias.bias.copy_(torch.linspace(-1, 1, NUM_ITEMS + 1))
    return m


def histories(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(np.arange(1, NUM_ITEMS + 1), size=int(rng.integers(2, SEQ)), replace=False).tolist()
            for _ in range(n)]


def examples_from(model: FsRecModel, hist) -> list[Example]:
    """Validation examples whose target is the FP32 model's own top-1: NDCG@10 of FP32 is 1.0,
    so any damage shows up as a measurable drop."""
    top, _, _ = torch_topk(model, pad_left(hist, SEQ), max_top_k=K)
    return [Example(f"u{i}", h, int(t[0])) for i, (h, t) in enumerate(zip(hist, top))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    model = tiny_model()
    fp32 = export_onnx(model, root / "fp32", max_top_k=K).output_dir
    valid = examples_from(model, histories(120, seed=1))
    return model, root, fp32, valid


def test_optimize_raw_mask_is_exact_with_left_padding(setup):
    model, root, fp32, valid = setup
    opt = optimize(fp32, root / "opt")
    assert ExportMeta.load(opt).precision == "fp32-opt"
    x = pad_left([e.history for e in valid], SEQ)
    a_items, a_scores = run_topk(make_session(opt), x)
    ref_items, ref_scores, _ = torch_topk(model, x, max_top_k=K)
    np.testing.assert_allclose(a_scores, ref_scores, atol=1e-4)
    assert (a_items == ref_items).mean() > 0.99
    rep = check_guard(opt, fp32, valid)  # passes, batch-invariant
    assert rep.passed and rep.batch_invariance.invariant and rep.ndcg_drop_rel <= 1e-6


def test_guard_refuses_damaged_model_and_says_by_how_much(setup, tmp_path):
    model, root, fp32, valid = setup
    damaged = tiny_model()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std().clamp(min=1e-3))
    bad = export_onnx(damaged, tmp_path / "damaged", max_top_k=K).output_dir
    with pytest.raises(QuantizationGuardError) as ei:
        check_guard(bad, fp32, valid)
    msg = str(ei.value)
    assert "refused" in msg
    assert "relative drop exceeds the 1.00% limit by" in msg
    assert "top-10 overlap with FP32" in msg and "is under 0.9 by" in msg
    rep = check_guard(bad, fp32, valid, raise_on_fail=False)
    assert not rep.passed and rep.ndcg_reference == pytest.approx(1.0)
    assert rep.ndcg_drop_rel > 0.01 and rep.top10_overlap < 0.9 and len(rep.reasons) == 2


def test_dynamic_int8_is_not_batch_invariant_static_and_weight_only_are(setup):
    model, root, fp32, valid = setup
    dyn = quantize(fp32, root / "dyn", mode="int8-dynamic", preset="avx2")
    rep = check_batch_invariance(dyn, valid, n_users=24, batch_size=32)
    assert not rep.invariant and rep.changed_users > 0 and rep.max_score_diff > 1e-3
    with pytest.raises(QuantizationGuardError, match="not batch-invariant"):
        check_guard(dyn, fp32, valid, batch_size=32, max_ndcg_drop=1.0, min_top10_overlap=0.0)

    static = quantize(fp32, root / "static", mode="int8-static", preset="avx2",
                      calibration_histories=histories(200, seed=2))
    wo = quantize(fp32, root / "wo", mode="int8-weight-only")
    for d in (static, wo):
        r = check_batch_invariance(d, valid, n_users=24, batch_size=32)
        assert r.invariant and r.changed_users == 0, d
    meta = ExportMeta.load(static)
    assert meta.precision == "int8-static" and meta.extra["preset"] == "avx2"


def test_fp32_is_batch_invariant(setup):
    _, _, fp32, valid = setup
    rep = check_batch_invariance(fp32, valid, n_users=16, batch_size=64)
    assert rep.invariant and rep.max_score_diff <= 1e-5


def test_fp16_keeps_io_types(setup):
    _, root, fp32, valid = setup
    fp16 = quantize(fp32, root / "fp16", mode="fp16")
    sess = make_session(fp16)
    assert [i.type for i in sess.get_inputs()] == ["tensor(int64)", "tensor(float)"]  # item_ids, user_params
    assert [o.type for o in sess.get_outputs()] == ["tensor(int64)", "tensor(float)"]
    assert ExportMeta.load(fp16).precision == "fp16"
    assert (fp16 / "model.onnx").stat().st_size < 0.7 * (fp32 / "model.onnx").stat().st_size
    rep = check_guard(fp16, fp32, valid, batch_invariance=False, raise_on_fail=False)
    assert rep.top10_overlap > 0.9


def test_select_served_model_picks_a_passing_candidate_and_records_why(setup, tmp_path):
    model, root, fp32, valid = setup
    dyn = root / "dyn" if (root / "dyn").exists() else quantize(fp32, root / "dyn", mode="int8-dynamic")
    damaged = tiny_model(seed=3)
    bad = export_onnx(damaged, tmp_path / "bad", max_top_k=K).output_dir
    decision = select_served_model({"int8-dynamic": dyn, "damaged": bad}, fp32, valid, batch_size=32,
                                   repeats=3, rounds=1, invariance_users=8)
    assert decision.chosen == "reference"  # both candidates refused -> FP32 served
    assert "no candidate passed" in decision.reason
    assert not decision.candidates["int8-dynamic"]["passed"]
    assert any("batch-invariant" in r for r in decision.candidates["int8-dynamic"]["reasons"])
    assert not decision.candidates["damaged"]["passed"]
    rec = json.loads((fp32 / GUARD_FILE).read_text())
    assert rec["chosen"] == "reference" and "Refused" in rec["reason"]
    assert set(rec["candidates"]) == {"reference", "int8-dynamic", "damaged"}


def test_bad_arguments(setup):
    _, root, fp32, _ = setup
    with pytest.raises(ConfigError, match="calibration_histories"):
        quantize(fp32, root / "s2", mode="int8-static")
    with pytest.raises(ConfigError, match="mode must be"):
        quantize(fp32, mode="int4")
    with pytest.raises(ConfigError, match="preset must be"):
        quantize(fp32, mode="int8-dynamic", preset="sse")
    with pytest.raises(ConfigError, match="differ"):
        optimize(fp32, fp32)
    assert detect_preset() in ("avx2", "avx512", "avx512_vnni", "arm64")


def test_select_needs_a_real_speedup(setup, tmp_path):
    """A passing candidate that is not min_speedup x faster than FP32 is not served."""
    import shutil

    _, _, fp32, valid = setup
    twin = tmp_path / "twin"
    shutil.copytree(fp32, twin)  # passes the guard, same speed
    rep = check_guard(twin, fp32, valid, invariance_users=4)
    d = select_served_model({"twin": twin}, fp32, valid, batch_size=16, repeats=2, rounds=1,
                            min_speedup=10.0, guard_reports={"twin": rep})
    assert d.chosen == "reference" and "not 10x faster" in d.reason
    d = select_served_model({"twin": twin}, fp32, valid, batch_size=16, repeats=2, rounds=1,
                            min_speedup=0.0, guard_reports={"twin": rep})
    assert d.chosen == "twin" and (twin / GUARD_FILE).exists()
    assert json.loads((twin / GUARD_FILE).read_text())["candidates"]["twin"]["passed"]
