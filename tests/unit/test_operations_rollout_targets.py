"""``fsrec rollout`` on every target, without a server: generated repositories of the three
targets (``exporters.build_model_repository(..., target=...)``) give the live config; the rollout
must read the target from it (backend onnxruntime = gpu; python + runtime torch = gpu-python;
python + runtime onnxruntime = cpu), build the new version for that target (model.pt for
gpu-python) and send the smoke requests a client of that target sends (zeros ``user_params``
where the input is required, histories left-padded to a length bucket under strict buckets).

The whole rollout runs against a stand-in control whose client is a real ``RecommenderClient``
with its transport replaced (``_infer``): it answers with what each target's server runs (ONNX
Runtime on model.onnx, or the TorchScript model.pt on CPU for gpu-python) and refuses, as Triton
does, a request without a required input. A live gpu / gpu-python server is not run here (no
GPU, no ONNX Runtime backend); the cpu target's real rollout is in tests/e2e/test_ops_e2e.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import json_format

from exporters.export import export_onnx
from exporters.repository import build_model_repository, load_model_config
from exporters.runtime import TORCH_FILE, make_session, run_topk
from fsrec_serve.client import RecommenderClient
from fsrec_serve.errors import InferenceServerError, RolloutError
from fsrec_serve.model import FsRecConfig, FsRecModel
from fsrec_serve.operations.answers import smoke_histories
from fsrec_serve.operations.rollout import RolloutConfig, rollout
from fsrec_serve.operations.targets import served_spec, smoke_requests, smoke_tolerance, target_of

NUM_ITEMS, SEQ, K, HIDDEN = 40, 24, 12, 16
BUCKETS = [4, 8, 16]
TARGETS = ["cpu", "gpu", "gpu-python"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of the same shapes (versions 1 and 2), each with model.onnx and model.pt."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=HIDDEN, intermediate_size=32, max_seq_len=SEQ))
        d = tmp_path_factory.mktemp(f"export{seed}")
        out.append(export_onnx(m.eval(), d, max_top_k=K, torchscript=True).output_dir)
    return out


def _served(tmp_path: Path, export: Path, target: str) -> tuple[Path, dict]:
    """A repository of ``target`` with version 1, and its config as Triton's JSON (int64 as strings)."""
    repo = tmp_path / target
    build_model_repository(repo, export, target=target, version=1, length_buckets=BUCKETS, max_batch_size=8)
    cfg = json_format.MessageToDict(load_model_config(repo / "fsrec"), preserving_proto_field_name=True)
    return repo, cfg


# -- the target, from the live config ------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_target_of_each_generated_config(tmp_path, exports, target):
    _, cfg = _served(tmp_path, exports[0], target)
    assert target_of(cfg) == target
    assert target_of({"config": cfg}) == target  # gRPC's as_json wrapper
    if target == "cpu":  # the python model's default runtime is onnxruntime
        del cfg["parameters"]["runtime"]
        assert target_of(cfg) == "cpu"


def test_target_of_refuses_what_it_cannot_build():
    with pytest.raises(RolloutError, match="runtime='tensorflow'.*fsrec repository --target"):
        target_of({"backend": "python", "parameters": {"runtime": {"string_value": "tensorflow"}}})
    with pytest.raises(RolloutError, match="backend 'pytorch'.*fsrec repository"):
        target_of({"backend": "pytorch"})
    assert target_of({"platform": "onnxruntime_onnx"}) == "gpu"


def test_smoke_tolerance_follows_precision_and_target():
    assert smoke_tolerance("fp32", "cpu") == smoke_tolerance("fp32", "gpu-python") == 1e-4
    assert smoke_tolerance("fp32", "gpu") == smoke_tolerance("fp16", "cpu") == 5e-2  # TensorRT runs FP16
    assert smoke_tolerance("fp16", "gpu", configured=0.3) == 0.3


# -- the smoke requests each target gets -----------------------------------------------------------
def _rows(x: np.ndarray) -> list[list[int]]:
    return [[int(i) for i in r if i > 0] for r in x]


@pytest.mark.parametrize("target", TARGETS)
def test_smoke_requests_are_what_a_client_of_the_target_sends(tmp_path, exports, target):
    _, cfg = _served(tmp_path, exports[0], target)
    spec = served_spec(cfg, NUM_ITEMS)
    assert spec.num_items == NUM_ITEMS and spec.max_batch_size == 8
    x = smoke_histories(NUM_ITEMS, SEQ, n=20, seed=3)
    reqs = smoke_requests(spec, x)
    covered = np.sort(np.concatenate([r.rows for r in reqs]))
    assert covered.tolist() == list(range(len(x)))  # every history once
    for r in reqs:
        assert r.item_ids.dtype == np.int64 and len(r.rows) <= spec.max_batch_size
        assert _rows(r.item_ids) == [_rows(x)[i] for i in r.rows]  # the same histories, left-padded
        longest = max(len(h) for h in _rows(r.item_ids))
        if target == "gpu":  # strict buckets, required user_params
            assert spec.strict_buckets and spec.user_params_required
            assert r.item_ids.shape[1] in BUCKETS + [SEQ] and r.item_ids.shape[1] == spec.request_length(longest)
            assert r.user_params.dtype == np.float32 and r.user_params.shape == (len(r.rows), HIDDEN)
            assert not r.user_params.any()  # zeros = the zero-shot answer
        else:  # ragged input, optional user_params: the longest history's width, nothing extra sent
            assert not spec.strict_buckets and not spec.user_params_required
            assert r.item_ids.shape[1] == longest and r.user_params is None
    if target == "gpu":
        widths = {r.item_ids.shape[1] for r in reqs}
        assert len(widths) > 1  # one request per bucket: each bucket's engine is asked
    else:
        assert len(reqs) == 3  # 20 histories in batches of max_batch_size 8


# -- the whole rollout against a stand-in server ---------------------------------------------------
class _Client(RecommenderClient):
    """A real client whose transport is what the target's server runs (no Triton here)."""

    def __init__(self, server: "_Control"):
        super().__init__("127.0.0.1:1", "grpc", model_name="fsrec", retries=0)
        self.server = server

    def _infer(self, batch, user_params=None):
        version, vdir, cfg = self.server.served[self.model_name]
        self.server.requests.append((self.model_name, batch.shape[1], user_params))
        required = [i["name"] for i in cfg["input"] if not i.get("optional")]
        if "user_params" in required and user_params is None:  # as Triton answers
            raise InferenceServerError(f"[StatusCode.INVALID_ARGUMENT] expected 2 inputs but got 1 inputs for "
                                       f"model '{self.model_name}'. Got input(s) ['item_ids']")
        if target_of(cfg) == "gpu-python":  # the TorchScript trace the python model runs
            module = torch.jit.load(str(vdir / TORCH_FILE), map_location="cpu").eval()
            up = np.zeros((len(batch), HIDDEN), np.float32) if user_params is None else user_params
            with torch.inference_mode():
                items, scores = module(torch.as_tensor(batch), torch.as_tensor(up))
            return items.numpy(), scores.numpy(), str(version)
        items, scores = run_topk(make_session(vdir), batch, user_params=user_params)
        return items, scores, str(version)


class _Control:
    """The ModelControl calls a rollout makes, on an in-memory server."""

    def __init__(self, repo: Path, cfg: dict):
        self.repo, self.cfg, self.model_name = repo, cfg, "fsrec"
        self.served = {"fsrec": (1, repo / "fsrec" / "1", cfg)}
        self.requests: list = []
        self.candidate_files: list[str] = []
        self.client = _Client(self)

    def ready_versions(self, model=None):
        return [self.served[model or self.model_name][0]] if (model or self.model_name) in self.served else []

    def config(self, model=None):
        return copy.deepcopy(self.cfg)

    def load_candidate(self, name, version, vdir, base_config):
        self.candidate_files = sorted(p.name for p in Path(vdir).iterdir())
        self.served[name] = (version, Path(vdir), base_config)

    def unload(self, name=None, **_):
        self.served.pop(name, None)

    def index(self):
        return []

    def load_versions(self, versions, model=None, *, base_config=None, overrides=None):
        v = max(versions)
        self.served[model] = (v, self.repo / model / str(v), base_config or self.cfg)
        return list(versions)


@pytest.mark.parametrize("target", TARGETS)
def test_rollout_builds_and_asks_each_target_what_it_requires(tmp_path, exports, target):
    repo, cfg = _served(tmp_path, exports[0], target)
    control = _Control(repo, cfg)
    report = rollout(exports[1], repo, control, RolloutConfig(smoke_users=12, seed=5))
    assert report.status == "rolled-out" and report.target == target and report.serving_versions == [2]
    assert report.smoke["after_swap"]["answered_by"] == "2"
    has_pt = (repo / "fsrec" / "2" / TORCH_FILE).exists()
    assert has_pt == (target == "gpu-python") == (TORCH_FILE in control.candidate_files)
    assert ("model.py" in control.candidate_files) == (target != "gpu")
    assert {name for name, _, _ in control.requests} == {"fsrec__candidate", "fsrec"}
    for _, width, up in control.requests:
        assert (up is not None) == (target == "gpu")
        if target == "gpu":
            assert width in BUCKETS + [SEQ] and up.shape[1] == HIDDEN
    assert 'specific' in (repo / "fsrec" / "config.pbtxt").read_text()  # persisted: a restart serves 2


def test_rollout_refuses_a_gpu_python_export_without_torchscript(tmp_path, exports):
    repo, cfg = _served(tmp_path, exports[0], "gpu-python")
    bare = tmp_path / "no-pt"
    bare.mkdir()
    for f in exports[1].iterdir():
        if f.name != TORCH_FILE:
            (bare / f.name).write_bytes(f.read_bytes())
    control = _Control(repo, cfg)
    with pytest.raises(RolloutError, match="refused.*step 'build'.*model.pt is missing.*--torchscript") as ei:
        rollout(bare, repo, control)
    assert ei.value.report.target == "gpu-python" and not (repo / "fsrec" / "2").exists()
    assert control.served["fsrec"][0] == 1 and not control.requests  # nothing changed, nothing sent
