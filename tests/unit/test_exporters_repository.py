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
    target_repository,
    write_default_repository,
)
from exporters.runtime import feeds, make_session
from exporters.triton_python import model as pm
from fsrec_serve.contract import OUTPUT_NAMES
from fsrec_serve.errors import ConfigError, RepositoryError
from fsrec_serve.idmap import pad_left
from fsrec_serve.model import FsRecConfig, FsRecModel
from tritonclient.grpc import model_config_pb2 as mc

NUM_ITEMS, SEQ, K = 40, 10, 15


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32, max_seq_len=SEQ))
    return export_onnx(m.eval(), tmp_path_factory.mktemp("e") / "fp32", max_top_k=K).output_dir


# -- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cpu", "gpu", "gpu-python"])
def test_generated_config_parses_as_model_config(tmp_path, target):
    spec = RepositorySpec(max_seq_len=SEQ, max_top_k=K, user_params_dim=16, preferred_batch_sizes=[8, 32],
                          max_queue_delay_us=250, length_buckets=[4, 8, 99])
    path = tmp_path / "config.pbtxt"
    text = render_config(spec, target)
    path.write_text(text)
    assert text.startswith("# Generated") and "# cpu: 2 instances x 1 ONNX Runtime thread" in text
    cfg = load_model_config(path)
    assert cfg == model_config(spec, target)
    assert cfg.name == "fsrec" and cfg.max_batch_size == 64
    python = target != "gpu"
    # ragged history input on the python targets; user_params optional there, required on gpu
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch, i.optional) for i in cfg.input] == [
        ("item_ids", mc.TYPE_INT64, [-1], python, False), ("user_params", mc.TYPE_FP32, [16], False, python)]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("top_items", mc.TYPE_INT64, [K]), ("top_scores", mc.TYPE_FP32, [K])]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["max_seq_len"] == str(SEQ) and params["length_buckets"] == "4,8,10"
    assert params["strict_buckets"] == ("false" if python else "true")
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    assert cfg.version_policy.latest.num_versions == 1
    assert all(w.inputs["item_ids"].zero_data for w in cfg.model_warmup)
    kind = cfg.instance_group[0].kind
    if target == "cpu":
        assert cfg.backend == "python" and kind == mc.ModelInstanceGroup.KIND_CPU
        assert "EXECUTION_ENV_PATH" not in cfg.parameters  # machine-specific: never generated
        assert params["intra_op_num_threads"] == str(spec.intra_op_threads) and params["runtime"] == "onnxruntime"
        assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert [list(w.inputs["item_ids"].dims) for w in cfg.model_warmup] == [[4], [8], [SEQ]]
    elif target == "gpu-python":
        assert cfg.backend == "python" and kind == mc.ModelInstanceGroup.KIND_GPU
        assert params["runtime"] == "torch" and params["device"] == "cuda"
        assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    else:
        assert cfg.backend == "onnxruntime" and kind == mc.ModelInstanceGroup.KIND_GPU
        (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert trt.parameters["trt_engine_cache_enable"] == "true" and trt.parameters["trt_engine_cache_path"]
        # one warmup per bucket at batch 1 and at the largest batch; user_params required -> warmed too
        assert sorted((w.batch_size, w.inputs["item_ids"].dims[0]) for w in cfg.model_warmup) == [
            (1, 4), (1, 8), (1, 10), (64, 4), (64, 8), (64, 10)]
        assert all(w.inputs["user_params"].zero_data for w in cfg.model_warmup)


def test_dynamic_batching_off_renders_no_batcher():
    cfg = model_config(RepositorySpec(dynamic_batching=False), "cpu")
    assert not cfg.HasField("dynamic_batching")


def test_spec_validation():
    with pytest.raises(ConfigError, match="preferred_batch_sizes"):
        RepositorySpec(preferred_batch_sizes=[128])
    with pytest.raises(ConfigError, match="target"):
        model_config(DEFAULT_SPEC, "tpu")
    assert DEFAULT_SPEC.max_seq_len == 200 and DEFAULT_SPEC.max_top_k == 100


def test_default_spec_matches_the_ml100k_model():
    """The committed configs are for the default (ML-100K) model: the max_seq_len fitted to a log
    of ML-100K's shape (its 90th length percentile is about 243 items)."""
    training = pytest.importorskip("fsrec_serve.training")
    stats = training.DataStats(users=943, items=1682, interactions=97_000, length_median=63,
                               length_q90=243)
    assert training.recommended_config(stats).model["max_seq_len"] == DEFAULT_SPEC.max_seq_len


# -- building versions -------------------------------------------------------------------------------
def test_build_cpu_repository_versions(tmp_path, export_dir):
    repo = tmp_path / "repo"
    v1 = build_model_repository(repo, export_dir, target="cpu")
    assert v1.version == 1
    for name in ("model.onnx", "model.py", "fsrec_meta.json", "config.json"):
        assert (v1.version_dir / name).exists(), name
    assert filecmp.cmp(v1.version_dir / "model.py", PYTHON_MODEL_SOURCE, shallow=False)
    cfg = load_model_config(v1.model_dir)
    assert list(cfg.input[0].dims) == [-1] and cfg.parameters["max_seq_len"].string_value == str(SEQ)
    assert list(cfg.input[1].dims) == [16] and list(cfg.output[0].dims) == [K]  # user_params [H]
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


def test_build_gpu_python_repository_needs_the_torchscript_trace(tmp_path, export_dir):
    with pytest.raises(RepositoryError, match="--torchscript"):
        build_model_repository(tmp_path / "repo", export_dir, target="gpu-python")
    torch.manual_seed(0)
    m = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32, max_seq_len=SEQ))
    ts = export_onnx(m.eval(), tmp_path / "ts", max_top_k=K, torchscript=True).output_dir
    v = build_model_repository(tmp_path / "repo", ts, target="gpu-python")
    assert (v.version_dir / "model.pt").exists() and (v.version_dir / "model.py").exists()
    assert load_model_config(v.config_path).parameters["runtime"].string_value == "torch"


def test_build_gpu_repository(tmp_path, export_dir):
    v = build_model_repository(tmp_path / "repo", export_dir, target="gpu", preferred_batch_sizes=[16])
    assert not (v.version_dir / "model.py").exists() and (v.version_dir / "model.onnx").exists()
    cfg = load_model_config(v.config_path)
    assert cfg.backend == "onnxruntime" and list(cfg.dynamic_batching.preferred_batch_size) == [16]


def test_runtime_repository_adds_machine_specific_values(tmp_path, export_dir):
    repo = tmp_path / "repo"
    build_model_repository(repo, export_dir, target="cpu")
    (repo / "notes" / "fsrec").mkdir(parents=True)  # a folder without config: skipped
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
    shutil.copytree(COMMITTED_REPOSITORY / "cpu", bare, ignore=shutil.ignore_patterns("*.onnx", "*.json"))
    with pytest.raises(RepositoryError, match="no version"):
        runtime_repository(bare, tmp_path / "rt3")


# -- the committed repository (golden) -----------------------------------------------------------------
def test_committed_repository_is_what_the_generator_writes():
    assert check_repository() == [], "run `fsrec repository --write-defaults` and commit the result"
    # three sibling roots, one per target, each a complete repository (ranker + front models)
    assert sorted(p.name for p in COMMITTED_REPOSITORY.iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "cpu", "gpu", "gpu-python"]
    for target in ("cpu", "gpu", "gpu-python"):
        root = target_repository(target)
        assert sorted(p.name for p in root.iterdir() if (p / "config.pbtxt").exists()) == [
            "fsrec", "fsrec_events", "fsrec_user"], target
    assert load_model_config(target_repository("cpu") / "fsrec").backend == "python"
    assert load_model_config(COMMITTED_REPOSITORY / GPU_SUBDIR / "fsrec").backend == "onnxruntime"
    assert load_model_config(target_repository("gpu-python") / "fsrec").backend == "python"
    from fsrec_serve.contract import DEFAULT_REPOSITORY  # what `fsrec serve` and the job default to

    assert target_repository("cpu") == COMMITTED_REPOSITORY.parent / DEFAULT_REPOSITORY


def test_the_folder_of_the_roots_is_not_a_root(tmp_path, export_dir):
    write_default_repository(tmp_path / "top")
    with pytest.raises(RepositoryError, match=r"one repository root per target.*top.cpu"):
        build_model_repository(tmp_path / "top", export_dir)
    with pytest.raises(RepositoryError, match="one repository root per target"):
        runtime_repository(tmp_path / "top", tmp_path / "rt")
    (tmp_path / "top" / "fsrec").mkdir()  # the older layout: the cpu models at the top
    shutil.copyfile(tmp_path / "top" / "cpu" / "fsrec" / "config.pbtxt", tmp_path / "top" / "fsrec" / "config.pbtxt")
    assert any("outside the target roots" in p for p in check_repository(tmp_path / "top"))


def test_golden_check_detects_drift(tmp_path):
    write_default_repository(tmp_path)
    assert check_repository(tmp_path) == []
    cfg = tmp_path / "cpu" / "fsrec" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 64", "max_batch_size: 32"))
    problems = check_repository(tmp_path)
    assert len(problems) == 1 and "differs" in problems[0]


def test_cli_repository_check(capsys):
    from fsrec_serve.cli import main

    assert main(["repository", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


# -- the python-backend model on a real exported graph ---------------------------------------------------
class _T:
    def __init__(self, name, arr):
        self.name, self.arr = name, arr

    def as_numpy(self):
        return self.arr


class _Resp:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = {t.name: t.arr for t in output_tensors}, error


class _Err:
    INVALID_ARG = 3

    def __init__(self, message, code=None):
        self.m = message


class _Req:
    def __init__(self, ids, params=None):
        self.inputs = {"item_ids": _T("item_ids", ids)}
        if params is not None:
            self.inputs["user_params"] = _T("user_params", params)


@pytest.fixture
def served_cpu(tmp_path, export_dir, monkeypatch, triton_utils):
    """The generated cpu version (config.pbtxt + model.py + model.onnx) loaded by model.py's own
    initialize; Triton's triton_python_backend_utils with stand-ins for the stub's C++ classes."""
    from google.protobuf import json_format

    pb = triton_utils()
    pb.Tensor, pb.InferenceResponse, pb.TritonError = _T, _Resp, _Err
    pb.TritonModelException = RuntimeError
    pb.get_input_tensor_by_name = lambda r, name: r.inputs.get(name)
    monkeypatch.setitem(sys.modules, pb.__name__, pb)
    v = build_model_repository(tmp_path / "repo", export_dir, target="cpu", length_buckets=[4])
    cfg = json_format.MessageToDict(load_model_config(v.config_path), preserving_proto_field_name=True)
    m = pm.TritonPythonModel()
    m.initialize({"model_config": json.dumps(cfg), "model_repository": str(v.model_dir), "model_version": "1"})
    return m


def test_mixed_lengths_in_one_batch_never_change_an_answer(served_cpu, export_dir):
    """One long request + many short ones in one execute(): each answer equals the request sent
    alone and the padded model's answer (top-k exactly)."""
    sess = make_session(export_dir)
    rng = np.random.default_rng(0)
    hist = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False).tolist()
            for n in [SEQ] + [1, 2, 3, 5, 2, 1, 4, 7]]
    reqs = [np.asarray([h], np.int64) for h in hist]  # each at its own length
    up = (0.1 * rng.standard_normal((1, 16))).astype(np.float32)
    batch = [_Req(r) for r in reqs] + [_Req(reqs[3], up)]
    together = served_cpu.execute(batch)
    for r, resp in zip(reqs, together):
        alone = served_cpu.execute([_Req(r)])[0]
        padded = sess.run(list(OUTPUT_NAMES), feeds(sess, pad_left([r[0].tolist()], SEQ)))
        assert resp.error is None
        np.testing.assert_array_equal(resp.outputs["top_items"], alone.outputs["top_items"])
        np.testing.assert_array_equal(resp.outputs["top_scores"], alone.outputs["top_scores"])
        np.testing.assert_array_equal(resp.outputs["top_items"], padded[0])
        np.testing.assert_allclose(resp.outputs["top_scores"], padded[1], atol=1e-5)
    # the request with user_params: the graph's per-user path; zeros == no input
    with_up = sess.run(list(OUTPUT_NAMES), feeds(sess, reqs[3], up))
    np.testing.assert_array_equal(together[-1].outputs["top_items"], with_up[0])
    zeros = served_cpu.execute([_Req(reqs[3], np.zeros((1, 16), np.float32))])[0]
    np.testing.assert_array_equal(zeros.outputs["top_scores"], together[3].outputs["top_scores"])


def test_bad_lengths_and_user_params_get_errors_the_rest_answers(served_cpu):
    ok = np.asarray([[1, 2, 3]], np.int64)
    bad = [np.zeros((1, 0), np.int64), np.ones((1, SEQ + 1), np.int64), np.ones((1, 10000), np.int64)]
    params = [np.zeros((1, 15), np.float32), np.full((1, 16), np.nan, np.float32), np.zeros((1, 16), np.float64)]
    out = served_cpu.execute([_Req(b) for b in bad] + [_Req(ok, p) for p in params] + [_Req(ok)])
    msgs = [r.error.m if r.error else None for r in out]
    assert "length 0" in msgs[0] and f"length {SEQ + 1}" in msgs[1] and "length 10000" in msgs[2]
    assert "shape [1, 16]" in msgs[3] and "NaN" in msgs[4] and "FP32" in msgs[5]
    assert msgs[6] is None and out[6].outputs["top_items"].shape == (1, K)


def test_parameters_and_session_options():
    cfg = json.loads(json.dumps({"parameters": {"intra_op_num_threads": {"string_value": "2"},
                                                "allow_spinning": {"string_value": "false"}}}))
    params = pm.read_parameters(cfg)
    assert params == {"intra_op_num_threads": "2", "allow_spinning": "false"}
    so = pm.session_options_from(params)
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1


def test_gpu_python_model_runs_the_trace_through_dlpack_on_cpu(tmp_path, monkeypatch, triton_utils):
    """The gpu-python target's model.py (runtime torch) on device 'cpu': tensors in and out via
    DLPack only, mixed lengths in one execute, the same answers as the ONNX graph."""
    from google.protobuf import json_format

    class _DT:  # a stub tensor that speaks DLPack only (as_numpy is not used by the torch runtime)
        def __init__(self, name, t):
            self.name, self.t = name, t

        def to_dlpack(self):
            return torch.utils.dlpack.to_dlpack(self.t)

        @classmethod
        def from_dlpack(cls, name, capsule):
            return cls(name, torch.from_dlpack(capsule))

    class _R:
        def __init__(self, output_tensors, error=None):
            self.outputs, self.error = {t.name: t.t.numpy() for t in output_tensors}, error

    pb = triton_utils()
    pb.Tensor, pb.InferenceResponse, pb.TritonError, pb.TritonModelException = _DT, _R, _Err, RuntimeError
    pb.get_input_tensor_by_name = lambda r, name: r.get(name)
    monkeypatch.setitem(sys.modules, pb.__name__, pb)
    torch.manual_seed(1)
    m = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=16, intermediate_size=32, max_seq_len=SEQ))
    ts = export_onnx(m.eval(), tmp_path / "ts", max_top_k=K, torchscript=True).output_dir
    v = build_model_repository(tmp_path / "repo", ts, target="gpu-python", torch_device="cpu", length_buckets=[4])
    cfg = json_format.MessageToDict(load_model_config(v.config_path), preserving_proto_field_name=True)
    model = pm.TritonPythonModel()
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(v.model_dir), "model_version": "1"})
    rng = np.random.default_rng(1)
    hist = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False) for n in (SEQ, 1, 3, 6)]
    up = torch.full((1, 16), 0.05)
    reqs = [{"item_ids": _DT("item_ids", torch.as_tensor(h[None]))} for h in hist]
    reqs.append({"item_ids": _DT("item_ids", torch.as_tensor(hist[2][None])), "user_params": _DT("user_params", up)})
    reqs.append({"item_ids": _DT("item_ids", torch.ones(1, SEQ + 1, dtype=torch.int64))})
    out = model.execute(reqs)
    sess = make_session(ts)
    for h, resp in zip(hist, out):
        want = sess.run(list(OUTPUT_NAMES), feeds(sess, pad_left([h.tolist()], SEQ)))
        np.testing.assert_array_equal(resp.outputs["top_items"], want[0])
        np.testing.assert_allclose(resp.outputs["top_scores"], want[1], atol=1e-5)
    want = sess.run(list(OUTPUT_NAMES), feeds(sess, hist[2][None], up.numpy()))
    np.testing.assert_allclose(out[4].outputs["top_scores"], want[1], atol=1e-5)
    assert f"length {SEQ + 1}" in out[5].error.m
