"""The pure parts of model control and rollout (no server): version policies, config merging and
validation, config.pbtxt rewriting, index parsing, answer checks. The server-facing behaviour is
in tests/e2e/test_ops_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest

from fsrec_serve.contract import INPUT_ITEM_IDS
from fsrec_serve.errors import ConfigError, RepositoryError
from fsrec_serve.operations.answers import (
    check_answers,
    compare_answers,
    smoke_histories,
)
from fsrec_serve.operations.control import (
    _glog_message,
    merge_config,
    parse_index,
    validate_config,
    with_version_policy,
    write_config_pbtxt,
)

LIVE = {"name": "fsrec", "backend": "python", "max_batch_size": 64,
        "input": [{"name": "item_ids", "data_type": "TYPE_INT64", "dims": ["20"]}],
        "output": [{"name": "top_items", "data_type": "TYPE_INT64", "dims": [50]}],
        "version_policy": {"latest": {"num_versions": 1}},
        "parameters": {"EXECUTION_ENV_PATH": {"string_value": "/venv"}}}


def test_version_policy_and_rename_keep_everything_else():
    cfg = with_version_policy({"config": LIVE}, [3, 2, 3], name="fsrec__candidate")  # gRPC wrapper too
    assert cfg["version_policy"] == {"specific": {"versions": [2, 3]}} and cfg["name"] == "fsrec__candidate"
    assert cfg["parameters"] == LIVE["parameters"] and LIVE["version_policy"] == {"latest": {"num_versions": 1}}
    assert with_version_policy(LIVE, None)["version_policy"] == {"latest": {"num_versions": 1}}
    with pytest.raises(ConfigError, match="positive"):
        with_version_policy(LIVE, [0])
    with pytest.raises(ConfigError):
        with_version_policy(LIVE, [])


def test_merge_config_replaces_top_level_fields_but_never_the_contract():
    out = merge_config(LIVE, {"dynamic_batching": {"max_queue_delay_microseconds": 200}, "max_batch_size": 32})
    assert out["max_batch_size"] == 32 and out["dynamic_batching"]["max_queue_delay_microseconds"] == 200
    assert LIVE["max_batch_size"] == 64
    for field in ("name", "input", "output"):
        with pytest.raises(ConfigError, match=field):
            merge_config(LIVE, {field: "x"})


def test_validate_config_names_the_bad_field():
    validate_config(LIVE)
    with pytest.raises(ConfigError, match="max_bach_size"):
        validate_config({**LIVE, "max_bach_size": 4})
    with pytest.raises(ConfigError, match="max_batch_size"):
        validate_config({**LIVE, "max_batch_size": "many"})


def test_write_config_pbtxt_pins_versions_applies_overrides_keeps_header(tmp_path):
    from exporters.repository import load_model_config, write_default_repository

    write_default_repository(tmp_path / "top")
    root = tmp_path / "top" / "cpu"  # the cpu target's root
    before = (root / "fsrec" / "config.pbtxt").read_text()
    write_config_pbtxt(root / "fsrec", versions=[4, 2], overrides={"max_batch_size": 16})
    text = (root / "fsrec" / "config.pbtxt").read_text()
    assert text.splitlines()[0] == before.splitlines()[0] and text.startswith("#")
    cfg = load_model_config(root / "fsrec")
    assert list(cfg.version_policy.specific.versions) == [2, 4] and cfg.max_batch_size == 16
    assert cfg.input[0].name == INPUT_ITEM_IDS and cfg.backend == "python"
    with pytest.raises(RepositoryError, match="does not exist"):
        write_config_pbtxt(root / "nope", versions=[1])
    (root / "fsrec" / "config.pbtxt").write_text("name: {{{")
    with pytest.raises(RepositoryError, match="not a valid Triton ModelConfig"):
        write_config_pbtxt(root / "fsrec", versions=[1])


def test_parse_index_and_glog_lines():
    rows = parse_index([{"name": "fsrec", "version": "2", "state": "READY"},
                        {"name": "fsrec", "version": "3", "state": "UNAVAILABLE", "reason": "bad onnx"},
                        {"name": "other"}])
    assert [(r.name, r.version, r.state, r.reason) for r in rows] == [
        ("fsrec", 2, "READY", ""), ("fsrec", 3, "UNAVAILABLE", "bad onnx"), ("other", None, "", "")]
    line = ('E1128 18:16:00.938231 20124 model_repository_manager.cc:1460] "Poll failed for model directory '
            "'x': dynamic batching preferred size must be <= max batch size for x\"")
    assert _glog_message(line).startswith("Poll failed for model directory 'x'")


def test_check_and_compare_answers():
    x = np.array([[0, 0, 3, 4], [0, 1, 2, 5]])
    items = np.array([[7, 9, -1], [8, 6, 9]])
    scores = np.array([[2.0, 1.0, -1e4], [3.0, 2.5, 1.0]], dtype=np.float32)
    assert check_answers(x, items, scores, num_items=10) == []
    assert "outside 1..10" in check_answers(x, np.array([[7, 11, -1], [8, 6, 9]]), scores, 10)[0]
    assert "own items [3]" in check_answers(x, np.array([[3, 9, -1], [8, 6, 9]]), scores, 10)[0]
    assert "not sorted" in check_answers(x, items, scores[:, ::-1].copy(), 10)[0]
    assert "shapes" in check_answers(x, items[:1], scores[:1], 10)[0]
    ok, stats = compare_answers(items, scores, items, scores + 1e-6, tol=1e-4, k=3)
    assert ok and stats["max_score_diff"] < 1e-5 and stats["top3_overlap"] == 1.0
    ok, stats = compare_answers(items, scores, items, scores + 0.1, tol=1e-4, k=3)
    assert not ok


def test_smoke_histories_are_valid_left_padded_requests():
    x = smoke_histories(num_items=30, max_seq_len=8, n=20, seed=1)
    assert x.shape == (20, 8) and x.dtype == np.int64 and x.max() <= 30 and (x[:, -1] > 0).all()
    for row in x:  # left-padded: zeros only before the first item
        nz = np.flatnonzero(row)
        assert (row[nz[0]:] > 0).all()

    class Ex:
        def __init__(self, h):
            self.history = h

    x = smoke_histories(30, 4, 3, examples=[Ex([1, 2, 3, 4, 5, 6]), Ex([]), Ex([9])])
    assert x[0].tolist() == [3, 4, 5, 6] and x[1].tolist() == [0, 0, 0, 9] and x.shape == (3, 4)


# -- the accuracy guard's examples: the split recorded with the export ----------------------------
def _recorded_export(tmp_path, seed: int):
    """An export folder (fsrec_meta.json only) whose model was trained on a tiny own log with
    split seed ``seed``, and the data-spec file of that log."""
    from exporters.runtime import ExportMeta

    from fsrec_serve.data import DataSpec, RunRecord, SplitConfig

    rows = ["customer;sku;when"] + [f"c{u};p{(u + k) % 25:03d};{1000 * u + k}" for u in range(40) for k in range(12)]
    (tmp_path / "log.txt").write_text("\n".join(rows) + "\n")
    spec = DataSpec(path=str(tmp_path / "log.txt"), sep=";", user_col="customer", item_col="sku", time_col="when")
    (tmp_path / "log.yaml").write_text(f"path: {tmp_path / 'log.txt'}\nsep: ';'\nuser_col: customer\n"
                                       "item_col: sku\ntime_col: when\n")
    record = RunRecord.for_source(spec, SplitConfig(seed=seed))
    export = tmp_path / "export"
    export.mkdir()
    ExportMeta(max_seq_len=8, max_top_k=10, num_items=25, objective="causal", extra=record.source_dict()).save(export)
    return export, record


def test_guard_examples_come_from_the_split_recorded_with_the_export(tmp_path):
    from fsrec_serve.operations.rollout import guard_examples

    export, record = _recorded_export(tmp_path, seed=3)
    want = [(e.user, e.history, e.target) for e in record.splits().loo_valid()[:20]]
    got = guard_examples(export, 20)
    assert [(e.user, e.history, e.target) for e in got] == want
    again = guard_examples(export, 20, dataset=str(tmp_path / "log.yaml"))  # other data, same split
    assert [(e.user, e.history, e.target) for e in again] == want
    default = record.with_split(seed=0).splits().loo_valid()[:20]  # what a fresh default split gives
    assert [(e.user, e.history, e.target) for e in default] != want


def test_fsrec_rollout_guards_on_the_recorded_split(tmp_path, monkeypatch):
    import contextlib

    from fsrec_serve.cli import main
    from fsrec_serve.commands import rollout as command
    from fsrec_serve.operations import rollout as ops

    export, record = _recorded_export(tmp_path, seed=3)
    seen = {}

    def fake_rollout(export_dir, repository, control, cfg, valid_examples=None):
        seen["examples"] = valid_examples
        return ops.RolloutReport(model="fsrec", status="rolled-out")

    monkeypatch.setattr(ops, "rollout", fake_rollout)
    monkeypatch.setattr(command, "model_control", lambda args: contextlib.nullcontext(None))
    argv = ["rollout", str(export), "--repository", str(tmp_path / "repo"), "--guard-users", "15"]
    assert main([*argv, "--guard-dataset", str(tmp_path / "log.yaml")]) == 0
    want = [(e.user, e.target) for e in record.splits().loo_valid()[:15]]
    assert [(e.user, e.target) for e in seen["examples"]] == want
    assert main(argv) == 0  # the recorded data set is the default
    assert [(e.user, e.target) for e in seen["examples"]] == want
