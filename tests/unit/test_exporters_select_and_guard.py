"""The export chain as one function (``exporters.select_and_guard``): its report names every
candidate's guard result (built and refused, built and passed, not built), and ``fsrec quantize
--mode select`` and the pipeline's quantize step call it with the same candidates and thresholds."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from exporters import select_and_guard as chain
from exporters.export import export_onnx, torch_topk
from exporters.runtime import ExportMeta
from fsrec_serve.contract import GUARD_FILE
from fsrec_serve.data import DataSpec, Example, RunRecord, SplitConfig
from fsrec_serve.idmap import pad_left
from fsrec_serve.model import FsRecConfig, FsRecModel

NUM_ITEMS, SEQ, K = 60, 12, 20


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_seq_len=SEQ)).eval()
    with torch.no_grad():
        model.item_embeddings.weight.normal_(0, 1.0)
    out = export_onnx(model, tmp_path_factory.mktemp("chain") / "fp32", max_top_k=K).output_dir
    hist = [[1 + (u * 7 + j) % NUM_ITEMS for j in range(2 + u % 9)] for u in range(64)]
    top, _, _ = torch_topk(model, pad_left(hist, SEQ), max_top_k=K)
    return out, [Example(f"u{i}", h, int(t[0])) for i, (h, t) in enumerate(zip(hist, top))]


def test_the_report_names_each_candidates_guard_result(fp32, tmp_path):
    src, valid = fp32
    report = chain.select_and_guard(src, valid, candidates=("int8-dynamic", "opt", "int8-static"),
                                    output_root=tmp_path, batch_size=16, repeats=2, rounds=1, invariance_users=8)
    results = report.guard_results()
    assert set(results) == {"int8-dynamic", "opt", "int8-static"}
    assert results["opt"] == "passed"  # exact fusion: same top-K as FP32
    assert results["int8-dynamic"].startswith("refused:") and "batch-invariant" in results["int8-dynamic"]
    assert results["int8-static"].startswith("not built:") and "calibration" in results["int8-static"]
    assert (tmp_path / "opt").is_dir() and "Not built: int8-static" in report.reason
    assert report.chosen in ("reference", "opt")
    recorded = json.loads((Path(report.chosen_dir) / GUARD_FILE).read_text())
    assert set(recorded["candidates"]) == {"reference", "int8-dynamic", "opt"}
    assert report.to_dict()["guard_results"] == results


def _recording(monkeypatch, calls: list, chosen_dir: Path):
    real = chain.select_and_guard
    params = ("candidates", "max_ndcg_drop", "min_top10_overlap")

    def record(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append({k: tuple(bound.arguments[k]) if k == "candidates" else bound.arguments[k] for k in params})
        return chain.SelectionReport(chosen="reference", chosen_dir=str(chosen_dir), reason="recorded",
                                     decision_path="")

    monkeypatch.setattr(chain, "select_and_guard", record)


def test_the_cli_and_the_pipeline_pass_the_same_candidates(tmp_path, monkeypatch):
    from fsrec_serve import pipeline
    from fsrec_serve.cli import main

    rows = ["u;i;t"] + [f"c{u};p{(u + k) % 20};{100 * u + k}" for u in range(30) for k in range(12)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    spec = DataSpec(path=str(tmp_path / "log.csv"), sep=";", user_col="u", item_col="i", time_col="t")
    record = RunRecord.for_source(spec, SplitConfig(seed=0))
    export = tmp_path / "fp32"
    export.mkdir()
    ExportMeta(max_seq_len=8, max_top_k=10, num_items=20, objective="causal", extra=record.source_dict()).save(export)
    calls: list = []
    _recording(monkeypatch, calls, export)

    assert main(["quantize", str(export), "--mode", "select"]) == 0
    splits = record.splits()
    run = pipeline._Run(pipeline.PipelineConfig(work_dir=tmp_path / "work"), lambda line: None, tmp_path / "work",
                        {}, spec, splits=splits, export_dir=export, valid=splits.loo_valid()[:32])
    pipeline._quantize_step(run)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["candidates"] == chain.DEFAULT_CANDIDATES
    assert run.summary["quantize"]["chosen"] == "reference"
