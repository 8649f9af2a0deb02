"""The front models (``exporters/triton_python/user_model.py``) read their tensor names and types
from the model config Triton hands them: a config with other names is followed (requests read,
answers written under the config's names, in the config's types), a config that does not fit the
role is refused at load naming what it declares.

Real parts: the SQLite store, the user keyer, an ONNX Runtime session of a tiny ranker graph
(items = the row sum of the padded history, so the answer shows what was ranked) and Triton's own
``triton_python_backend_utils.py``; stand-ins only for the classes the stub's C++ side provides.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from exporters.triton_python import user_model as um
from fsrec_serve import contract

NUM_ITEMS, SEQ_LEN, DIM = 40, 6, 3


class _Tensor:
    def __init__(self, name, arr):
        self._name, self.arr = name, np.asarray(arr)

    def name(self):
        return self._name

    def as_numpy(self):
        return self.arr


class _Request:
    def __init__(self, **tensors):
        self._tensors = [_Tensor(k, v) for k, v in tensors.items()]

    def inputs(self):
        return self._tensors


class _Error:
    INVALID_ARG, UNAVAILABLE, INTERNAL = 3, 14, 13

    def __init__(self, message, code=None):
        self._m, self.code = message, code

    def message(self):
        return self._m


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = {t.name(): t.arr for t in output_tensors}, error


class _ModelException(Exception):
    pass


@pytest.fixture
def pb(triton_utils, monkeypatch):
    mod = triton_utils()
    mod.Tensor, mod.InferenceResponse, mod.TritonError = _Tensor, _Response, _Error
    mod.TritonModelException = _ModelException
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def _ranker(repo):
    """<repo>/fsrec/1: a graph with the contract's tensor names, its meta and item map."""
    import onnx
    from onnx import TensorProto, helper

    vdir = repo / contract.DEFAULT_MODEL_NAME / "1"
    vdir.mkdir(parents=True)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    g = helper.make_graph(
        [helper.make_node("ReduceSum", [contract.INPUT_ITEM_IDS, "axes"], [contract.OUTPUT_TOP_ITEMS], keepdims=1),
         helper.make_node("ReduceSum", [contract.INPUT_USER_PARAMS, "axes"], [contract.OUTPUT_TOP_SCORES], keepdims=1)],
        "sums",
        [helper.make_tensor_value_info(contract.INPUT_ITEM_IDS, TensorProto.INT64, ["n", "L"]),
         helper.make_tensor_value_info(contract.INPUT_USER_PARAMS, TensorProto.FLOAT, ["n", DIM])],
        [helper.make_tensor_value_info(contract.OUTPUT_TOP_ITEMS, TensorProto.INT64, ["n", 1]),
         helper.make_tensor_value_info(contract.OUTPUT_TOP_SCORES, TensorProto.FLOAT, ["n", 1])],
        initializer=[axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(vdir / contract.ONNX_FILE))
    meta = {"num_items": NUM_ITEMS, "max_seq_len": SEQ_LEN, "user_params_dim": DIM, "fingerprint": "f"}
    (vdir / contract.META_FILE).write_text(json.dumps(meta))
    (vdir / contract.ITEM_MAP_FILE).write_text(json.dumps({"pad_index": 0, "raw_ids": [f"m{i}" for i in range(1, 41)]}))


def _args(repo, tmp_path, role, inputs, outputs):
    name = contract.USER_MODEL_NAME if role == "recommend" else contract.EVENTS_MODEL_NAME
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / contract.POPULARITY_FILE).write_text(json.dumps({"items": [9], "scores": [0.5]}))
    params = {"role": role, "ranker": contract.DEFAULT_MODEL_NAME, "ranking": "onnxruntime",
              "store": str(tmp_path / "store.sqlite3"), "length_buckets": ""}
    cfg = {"input": [{"name": n, "data_type": t, "dims": ["-1"]} for n, t in inputs],
           "output": [{"name": n, "data_type": t, "dims": ["1"]} for n, t in outputs],
           "parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(cfg), "model_repository": str(repo / name), "model_version": "1"}


RECOMMEND_IN = [("who", "TYPE_STRING"), ("recent", "TYPE_INT64")]
RECOMMEND_OUT = [("best", "TYPE_INT64"), ("best_scores", "TYPE_FP32"), ("how", "TYPE_STRING"),
                 ("served_by", "TYPE_STRING")]
RECORD_IN = [("who", "TYPE_STRING"), ("what", "TYPE_STRING"), ("when", "TYPE_FP64"), ("eid", "TYPE_STRING")]


def test_recommend_follows_the_configs_names(pb, tmp_path):
    repo = tmp_path / "repo"
    _ranker(repo)
    m = um.TritonPythonModel()
    m.initialize(_args(repo, tmp_path, "recommend", RECOMMEND_IN, RECOMMEND_OUT))
    try:
        ranked, unknown, old_names = m.execute([
            _Request(who=np.array([[b"alice"]], object), recent=np.array([[3, 4]], np.int64)),
            _Request(who=np.array([[b"bob"]], object)),
            _Request(user_id=np.array([[b"carol"]], object)),
        ])
    finally:
        m.finalize()
    assert ranked.error is None and set(ranked.outputs) == {"best", "best_scores", "how", "served_by"}
    np.testing.assert_array_equal(ranked.outputs["best"], [[7]])  # the ranker read the padded [.., 3, 4]
    assert ranked.outputs["best"].dtype == np.int64 and ranked.outputs["best_scores"].dtype == np.float32
    assert ranked.outputs["how"].tolist() == [[b"history"]] and ranked.outputs["served_by"].tolist() == [[b"1"]]
    np.testing.assert_array_equal(unknown.outputs["best"], [[9]])  # nothing known: the popularity list
    assert unknown.outputs["how"].tolist() == [[b"popularity"]]
    assert old_names.error is not None and "input 'who' is missing" in old_names.error.message()


def test_record_follows_the_configs_names_and_types(pb, tmp_path):
    repo = tmp_path / "repo"
    _ranker(repo)
    m = um.TritonPythonModel()
    m.initialize(_args(repo, tmp_path, "record", RECORD_IN, [("ok", "TYPE_INT32")]))
    event = {"who": np.array([[b"alice"]], object), "what": np.array([[b"m3"]], object),
             "eid": np.array([[b"event-1"]], object)}
    try:
        first, again, bad = m.execute([_Request(**event), _Request(**event),
                                       _Request(who=event["who"], item_id=event["what"])])
    finally:
        m.finalize()
    assert first.outputs["ok"].tolist() == [[1]] and first.outputs["ok"].dtype == np.int32
    assert again.outputs["ok"].tolist() == [[0]]  # the same event id: stored once
    assert bad.error is not None and "input 'what' must hold one item id per user id" in bad.error.message()


@pytest.mark.parametrize("role,inputs,outputs", [
    ("recommend", RECOMMEND_IN, RECOMMEND_OUT[:3]),
    ("recommend", RECOMMEND_IN[:1], RECOMMEND_OUT),
    ("record", RECORD_IN, RECOMMEND_OUT[:2]),
])
def test_a_config_that_does_not_fit_the_role_is_refused(pb, tmp_path, role, inputs, outputs):
    repo = tmp_path / "repo"
    _ranker(repo)
    with pytest.raises(_ModelException) as e:
        um.TritonPythonModel().initialize(_args(repo, tmp_path, role, inputs, outputs))
    msg = str(e.value)
    assert f"config.pbtxt of role '{role}' declares inputs {[n for n, _ in inputs]}" in msg
    assert f"answers {list(um.ROLE_OUTPUTS[role])}" in msg and "rebuild the repository" in msg


def test_the_generated_configs_fit_their_roles():
    """The committed front-model configs (written from the contract) name the contract's tensors
    in the order each role reads and answers them."""
    from google.protobuf import json_format

    from exporters.repository import target_repository
    from exporters.triton_config import load_model_config

    want = {"recommend": ([contract.INPUT_USER_ID, contract.INPUT_RECENT_ITEMS],
                          [contract.OUTPUT_TOP_ITEMS, contract.OUTPUT_TOP_SCORES, contract.OUTPUT_SOURCE,
                           contract.OUTPUT_RANKER_VERSION]),
            "record": ([contract.INPUT_USER_ID, contract.INPUT_ITEM_ID, contract.INPUT_TIMESTAMP,
                        contract.INPUT_EVENT_ID], [contract.OUTPUT_ACCEPTED])}
    for name in (contract.USER_MODEL_NAME, contract.EVENTS_MODEL_NAME):
        cfg = json_format.MessageToDict(load_model_config(target_repository("cpu") / name), preserving_proto_field_name=True)
        role = cfg["parameters"]["role"]["string_value"]
        inputs, outputs = um.io_of(cfg, role, lambda t: t)
        assert (inputs, list(outputs)) == want[role], name


@pytest.mark.parametrize("value", [b"u1", "u1", b"", b"   ", b"\xff\xfe", b"x" * contract.MAX_USER_ID_BYTES,
                                   b"x" * (contract.MAX_USER_ID_BYTES + 1), "é".encode() * 128,
                                   "é".encode() * 129])
def test_the_stubs_copy_of_the_user_id_rule_agrees_with_the_contract(value):
    """The stub imports nothing of ours, so it keeps its own ``decode_id``: it accepts and refuses
    exactly the user ids the contract's rule does (the client and the store raise that rule)."""
    text, problem = contract.user_id_text(value)
    stub_text, stub_problem = um.decode_id(value, "user id")
    assert (problem is None) == (stub_problem is None)
    assert stub_text == text
