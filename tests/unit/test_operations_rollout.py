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

    write_default_repository(tmp_path)
    before = (tmp_path / "fsrec" / "config.pbtxt").read_text()
    write_config_pbtxt(tmp_path / "fsrec", versions=[4, 2], overrides={"max_batch_size": 16})
    text = (tmp_path / "fsrec" / "config.pbtxt").read_text()
    assert text.splitlines()[0] == before.splitlines()[0] and text.startswith("#")
    cfg = load_model_config(tmp_path / "fsrec")
    assert list(cfg.version_policy.specific.versions) == [2, 4] and cfg.max_batch_size == 16
    assert cfg.input[0].name == INPUT_ITEM_IDS and cfg.backend == "python"
    with pytest.raises(RepositoryError, match="does not exist"):
        write_config_pbtxt(tmp_path / "nope", versions=[1])
    (tmp_path / "fsrec" / "config.pbtxt").write_text("name: {{{")
    with pytest.raises(RepositoryError, match="not a valid Triton ModelConfig"):
        write_config_pbtxt(tmp_path / "fsrec", versions=[1])


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
