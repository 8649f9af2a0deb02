"""The README's main job (``fsrec pipeline``) end to end on real ML-100K, shortened: one epoch of
pretraining, LoRA adaptation, Optimum export, the repository, a real tritonserver, queries."""

from __future__ import annotations

import json

from fsrec_serve.cli import main as fsrec_main


def test_pipeline_runs_end_to_end_and_serves_raw_ids(data_dir, tmp_path, capsys):
    work, repo = tmp_path / "run", tmp_path / "repo"
    rc = fsrec_main([
        "pipeline", "--data-dir", str(data_dir), "--work-dir", str(work), "--repository", str(repo),
        "--epochs", "1", "--max-train-seconds", "20", "--strategy", "lora", "--no-quantize",
        "--show-users", "2", "--protocol", "http",
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tritonserver ready" in out and "tritonserver stopped" in out
    summary = json.loads((work / "summary.json").read_text())
    # the export reproduced PyTorch and the served version is the one the pipeline wrote
    assert summary["export"]["max_abs_diff"] < 1e-4 and summary["export"]["top10_overlap"] == 1.0
    assert (repo / "fsrec" / "1" / "model.onnx").exists() and (repo / "fsrec" / "config.pbtxt").exists()
    users = summary["served"]["users"]
    assert len(users) == 2
    for u in users:
        assert len(u["items"]) == 10 and len(set(u["items"])) == 10
        assert not set(u["items"]) & set(u["history"])  # own history masked inside the graph
        assert all(isinstance(i, str) for i in u["items"])  # raw ids out
        assert u["scores"] == sorted(u["scores"], reverse=True)
    # the adapted cohort was evaluated on its query items, never trained on them
    assert summary["adapt"]["strategy"] in ("lora", "zero_shot")
    assert 0.0 <= summary["adapt"]["adapted_ndcg@10"] <= 1.0
