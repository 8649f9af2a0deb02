"""Triton repository generator: configs from the ModelConfig protobuf (parsed back), both targets,
versions (adapter variants), the runtime copy with machine-specific values, the golden check of
the committed model_repository/, and the python-backend model's pure batching functions run on a
real ONNX Runtime session."""

from __future__ import annotations

import filecmp
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.export import export_onnx
from exporters.repository import (
    COMMITTED_REPOSITORY,
    DEFAULT_SPEC,
    GPU_SUBDIR,
    PYTHON_MODEL_SOURCE,
    RepositorySpec,
    build_model_repository,
    check_repository,
    load_model_config,
    model_config,
    next_version,
    render_config,
    runtime_repository,
    write_default_repository,
)
from exporters.runtime import feeds, make_session, pad_left
from exporters.triton_python import model as pm
from fsrec_serve.errors import ConfigError, RepositoryError
from fsrec_serve.model import FsRecConfig, FsRecModel
from tritonclient.grpc import model_config_pb2 as mc

NUM_ITEMS, SEQ, K = 40, 10, 15


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32, max_seq_len=SEQ))
    return export_onnx(m.eval(), tmp_path_factory.mktemp("e") / "fp32", max_top_k=K).output_dir


# -- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_generated_config_parses_as_model_config(tmp_path, target):
    spec = RepositorySpec(max_seq_len=SEQ, max_top_k=K, preferred_batch_sizes=[8, 32], max_queue_delay_us=250)
    path = tmp_path / "config.pbtxt"
    path.write_text(render_config(spec, target))
    cfg = load_model_config(path)
    assert cfg == model_config(spec, target)
    assert cfg.name == "fsrec" and cfg.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("item_ids", mc.TYPE_INT64, [SEQ])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("top_items", mc.TYPE_INT64, [K]), ("top_scores", mc.TYPE_FP32, [K])]
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    assert cfg.version_policy.latest.num_versions == 1
    assert all(w.inputs["item_ids"].zero_data and list(w.inputs["item_ids"].dims) == [SEQ]
               for w in cfg.model_warmup)
    kind = cfg.instance_group[0].kind
    if target == "cpu":
        assert cfg.backend == "python" and kind == mc.ModelInstanceGroup.KIND_CPU
        assert "EXECUTION_ENV_PATH" not in cfg.parameters  # machine-specific: never generated
        assert cfg.parameters["intra_op_num_threads"].string_value == str(spec.intra_op_threads)
        assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    else:
        assert cfg.backend == "onnxruntime" and kind == mc.ModelInstanceGroup.KIND_GPU
        (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert trt.parameters["trt_engine_cache_enable"] == "true" and trt.parameters["trt_engine_cache_path"]
        assert sorted(w.batch_size for w in cfg.model_warmup) == [1, 64]


def test_spec_validation():
    with pytest.raises(ConfigError, match="preferred_batch_sizes"):
        RepositorySpec(preferred_batch_sizes=[128])
    with pytest.raises(ConfigError, match="target"):
        model_config(DEFAULT_SPEC, "tpu")
    assert DEFAULT_SPEC.max_seq_len == 200 and DEFAULT_SPEC.max_top_k == 100


def test_default_spec_matches_the_ml100k_model():
    """The committed configs are for the default (ML-100K) model: its max_seq_len."""
    training = pytest.importorskip("fsrec_serve.training")
    assert training.recommended_config("ml-100k", "cloze").model["max_seq_len"] == DEFAULT_SPEC.max_seq_len


# -- building versions -------------------------------------------------------------------------------
def test_build_cpu_repository_versions(tmp_path, export_dir):
    repo = tmp_path / "repo"
    v1 = build_model_repository(repo, export_dir, target="cpu")
    assert v1.version == 1
    for name in ("model.onnx", "model.py", "fsrec_meta.json", "config.json"):
        assert (v1.version_dir / name).exists(), name
    assert filecmp.cmp(v1.version_dir / "model.py", PYTHON_MODEL_SOURCE, shallow=False)
    cfg = load_model_config(v1.model_dir)
    assert list(cfg.input[0].dims) == [SEQ] and list(cfg.output[0].dims) == [K]
    # an adapter variant = the next version of the same model
    v2 = build_model_repository(repo, export_dir, target="cpu")
    assert v2.version == 2 and next_version(v1.model_dir) == 3
    with pytest.raises(RepositoryError, match="already holds a model"):
        build_model_repository(repo, export_dir, version=1)
    assert build_model_repository(repo, export_dir, version=1, overwrite=True).version == 1


def test_build_refuses_a_version_with_other_io(tmp_path, export_dir):
    repo = tmp_path / "repo"
    build_model_repository(repo, export_dir)
    torch.manual_seed(0)
    other = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32, max_seq_len=SEQ + 2))
    other_dir = export_onnx(other.eval(), tmp_path / "other", max_top_k=K).output_dir
    with pytest.raises(RepositoryError, match="share its I/O"):
        build_model_repository(repo, other_dir)


def test_build_gpu_repository(tmp_path, export_dir):
    v = build_model_repository(tmp_path / "repo", export_dir, target="gpu", preferred_batch_sizes=[16])
    assert not (v.version_dir / "model.py").exists() and (v.version_dir / "model.onnx").exists()
    cfg = load_model_config(v.config_path)
    assert cfg.backend == "onnxruntime" and list(cfg.dynamic_batching.preferred_batch_size) == [16]


def test_runtime_repository_adds_machine_specific_values(tmp_path, export_dir):
    repo = tmp_path / "repo"
    build_model_repository(repo, export_dir, target="cpu")
    (repo / GPU_SUBDIR / "fsrec").mkdir(parents=True)  # a nested root without config: skipped
    committed_before = (repo / "fsrec" / "config.pbtxt").read_text()
    rt = runtime_repository(repo, tmp_path / "rt", execution_env_path=sys.prefix)
    cfg = load_model_config(rt / "fsrec")
    assert cfg.parameters["EXECUTION_ENV_PATH"].string_value == str(Path(sys.prefix).resolve())
    assert (rt / "fsrec" / "1" / "model.onnx").is_symlink()
    assert sorted(p.name for p in rt.iterdir()) == ["fsrec"]
    assert (repo / "fsrec" / "config.pbtxt").read_text() == committed_before  # source untouched
    rt2 = runtime_repository(repo, tmp_path / "rt2", copy_files=True)
    assert not (rt2 / "fsrec" / "1" / "model.onnx").is_symlink()
    # the committed layout (configs + python model, no weights) cannot be served: copy it without
    # any ONNX file a local main-job run may have written there (they are git-ignored)
    bare = tmp_path / "committed"
    shutil.copytree(COMMITTED_REPOSITORY, bare, ignore=shutil.ignore_patterns("*.onnx", "*.json"))
    with pytest.raises(RepositoryError, match="no version"):
        runtime_repository(bare, tmp_path / "rt3")


# -- the committed repository (golden) -----------------------------------------------------------------
def test_committed_repository_is_what_the_generator_writes():
    assert check_repository() == [], "run `fsrec repository --write-defaults` and commit the result"
    assert (COMMITTED_REPOSITORY / "fsrec" / "config.pbtxt").exists()
    assert load_model_config(COMMITTED_REPOSITORY / "fsrec").backend == "python"
    assert load_model_config(COMMITTED_REPOSITORY / GPU_SUBDIR / "fsrec").backend == "onnxruntime"


def test_golden_check_detects_drift(tmp_path):
    write_default_repository(tmp_path)
    assert check_repository(tmp_path) == []
    cfg = tmp_path / "fsrec" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 64", "max_batch_size: 32"))
    problems = check_repository(tmp_path)
    assert len(problems) == 1 and "differs" in problems[0]


def test_cli_repository_check(capsys):
    from fsrec_serve.cli import main

    assert main(["repository", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


# -- the python-backend model's pure functions on a real ORT session ---------------------------------------
def test_validate_item_ids():
    ok = np.zeros((2, SEQ), np.int64)
    assert pm.validate_item_ids(ok, SEQ, NUM_ITEMS) is None
    assert "INT64" in pm.validate_item_ids(ok.astype(np.int32), SEQ, NUM_ITEMS)
    assert f"[n, {SEQ}]" in pm.validate_item_ids(np.zeros((2, SEQ + 1), np.int64), SEQ, NUM_ITEMS)
    assert f"[n, {SEQ}]" in pm.validate_item_ids(np.zeros((SEQ,), np.int64), SEQ, NUM_ITEMS)
    bad = ok.copy()
    bad[1, 3] = NUM_ITEMS + 1  # the [MASK] token is not a valid input
    assert f"outside 0..{NUM_ITEMS}" in pm.validate_item_ids(bad, SEQ, NUM_ITEMS)
    bad[1, 3] = -1
    assert "-1" in pm.validate_item_ids(bad, SEQ, NUM_ITEMS)
    assert "missing" in pm.validate_item_ids(None, SEQ, NUM_ITEMS)


def test_stacked_call_equals_per_request_calls(export_dir):
    """What execute() does: validate each request, one ORT call for the valid ones, split back."""
    sess = make_session(export_dir)
    rng = np.random.default_rng(0)
    reqs = [pad_left([rng.integers(1, NUM_ITEMS + 1, size=rng.integers(1, SEQ)).tolist() for _ in range(n)], SEQ)
            for n in (1, 3, 2, 5)]
    reqs.insert(2, np.full((2, SEQ), NUM_ITEMS + 5, np.int64))  # an invalid request in the middle
    stacked, sizes, errors = pm.plan_batch(reqs, SEQ, NUM_ITEMS)
    assert sizes == [1, 3, 0, 2, 5] and stacked.shape == (11, SEQ)
    assert [e is None for e in errors] == [True, True, False, True, True]
    outs = sess.run(list(pm.OUTPUT_NAMES), feeds(sess, stacked))
    parts = pm.split_outputs(outs, sizes)
    assert parts[2] is None
    for r, part in zip(reqs, parts):
        if part is None:
            continue
        alone = sess.run(list(pm.OUTPUT_NAMES), feeds(sess, r))
        np.testing.assert_array_equal(part[0], alone[0])
        np.testing.assert_allclose(part[1], alone[1], atol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        pm.split_outputs(outs, [1, 1])
    assert pm.plan_batch([None], SEQ, NUM_ITEMS)[0] is None


def test_parameters_and_session_options():
    cfg = json.loads(json.dumps({"parameters": {"intra_op_num_threads": {"string_value": "2"},
                                                "allow_spinning": {"string_value": "false"}}}))
    params = pm.read_parameters(cfg)
    assert params == {"intra_op_num_threads": "2", "allow_spinning": "false"}
    so = pm.session_options_from(params)
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
