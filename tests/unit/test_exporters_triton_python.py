"""Property-based tests (hypothesis) of the Triton python-backend model's request handling
(``exporters/triton_python/model.py``, as written): every request gets exactly one answer, in
order; a valid request's answer comes from its own rows only (never a batch-mate's); an invalid
one gets an error that names the problem; nothing raises out of ``execute`` and nothing hangs.

The pure functions (``validate_item_ids``, ``plan_batch``, ``split_outputs``,
``read_parameters``, ``tensors_of``) are tested directly. ``execute`` runs on a real ONNX Runtime
session of a tiny hand-made graph (top_items = the history, top_scores = the history as float, so
each answer shows which rows it came from); ``triton_python_backend_utils`` is Triton's own module
file with minimal stand-ins for the classes only the stub's C++ side provides (the real stub path
is covered by the e2e tests). The tensor names come from the model config: a config (and graph)
with other names is followed, a config that disagrees with its graph is refused.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exporters.triton_python import model as pm

FAST = settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SEQ_LEN, NUM_ITEMS, DIM = 6, 40, 3
BUCKETS = (2, 4, SEQ_LEN)
HIST = pm.Tensor("item_ids", "int64", "INT64")  # the histories input as the generated config declares it
PARAMS = pm.Tensor("user_params", "float32", "FP32")

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
any_array = st.one_of(
    # every dtype a client could send, any shape, any values of that dtype
    hnp.arrays(st.sampled_from([np.int64, np.int32, np.uint64, np.float32, np.float64, np.bool_, np.dtype("U2")]), shapes),
    hnp.arrays(np.dtype("O"), shapes, elements=st.one_of(st.integers(), st.text(max_size=2), st.none())),
    # the right dtype, any length (0 and over max_seq_len included), small ids: valid or out of range by a little
    st.tuples(st.integers(0, 4), st.integers(0, SEQ_LEN + 3)).flatmap(
        lambda s: hnp.arrays(np.int64, s, elements=st.integers(-3, NUM_ITEMS + 3))),
)
valid_array = st.tuples(st.integers(1, 5), st.integers(1, SEQ_LEN)).flatmap(
    lambda s: hnp.arrays(np.int64, s, elements=st.integers(0, NUM_ITEMS)))
bad_ids_array = st.integers(1, 4).flatmap(
    lambda n: hnp.arrays(np.int64, (n, SEQ_LEN), elements=st.one_of(st.integers(-10**12, -1), st.integers(NUM_ITEMS + 1, 10**12))))
request_arrays = st.one_of(valid_array, valid_array, bad_ids_array, any_array, st.none(), st.text(max_size=3),
                           st.lists(st.integers(), max_size=3))


def _is_valid(a) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 2 and a.shape[0] >= 1
            and 1 <= a.shape[1] <= SEQ_LEN and int(a.min()) >= 0 and int(a.max()) <= NUM_ITEMS)


def _params_for(a, kind: int):
    """user_params of a request: 0 absent, 1 valid, 2 wrong shape, 3 NaN, 4 float64."""
    n = a.shape[0] if isinstance(a, np.ndarray) and a.ndim >= 1 else 1
    rng = np.random.default_rng(n)
    good = rng.standard_normal((n, DIM)).astype(np.float32)
    return [None, good, good[:, :-1], np.where(good > 0, np.nan, good).astype(np.float32) if n else good,
            good.astype(np.float64)][kind]


# -- pure functions ------------------------------------------------------------------------------------
@FAST
@given(a=request_arrays)
def test_validate_item_ids_accepts_exactly_the_contract(a):
    msg = pm.validate_item_ids(a, HIST, SEQ_LEN, NUM_ITEMS)
    if _is_valid(a):
        assert msg is None
    else:
        assert isinstance(msg, str) and "item_ids" in msg and len(msg) > 20, msg


def test_lengths_and_buckets_are_named():
    ok = np.ones((1, 3), np.int64)
    assert "length 0" in pm.validate_item_ids(np.ones((1, 0), np.int64), HIST, SEQ_LEN, NUM_ITEMS)
    assert "length 7" in pm.validate_item_ids(np.ones((1, 7), np.int64), HIST, SEQ_LEN, NUM_ITEMS)
    assert "1..6" in pm.validate_item_ids(np.ones((1, 10000), np.int64), HIST, SEQ_LEN, NUM_ITEMS)
    assert pm.validate_item_ids(ok, HIST, SEQ_LEN, NUM_ITEMS, BUCKETS, strict=False) is None
    msg = pm.validate_item_ids(ok, HIST, SEQ_LEN, NUM_ITEMS, BUCKETS, strict=True)
    assert "not one of the model's length buckets [2, 4, 6]" in msg and "pad" in msg
    assert pm.validate_item_ids(np.ones((1, 4), np.int64), HIST, SEQ_LEN, NUM_ITEMS, BUCKETS, strict=True) is None
    # the name and the type in the messages are the config's
    other = pm.Tensor("history", "int32", "INT32")
    assert "input 'history' must be INT32, got int64" in pm.validate_item_ids(ok, other, SEQ_LEN, NUM_ITEMS)
    assert pm.validate_item_ids(ok.astype(np.int32), other, SEQ_LEN, NUM_ITEMS) is None


def test_validate_user_params():
    good = np.zeros((2, DIM), np.float32)
    assert pm.validate_user_params(None, PARAMS, 2, DIM) is None
    assert pm.validate_user_params(good, PARAMS, 2, DIM) is None
    assert "shape [2, 3]" in pm.validate_user_params(good[:1], PARAMS, 2, DIM)
    assert "FP32" in pm.validate_user_params(good.astype(np.float64), PARAMS, 2, DIM)
    bad = good.copy()
    bad[1, 2] = np.nan
    assert "NaN" in pm.validate_user_params(bad, PARAMS, 2, DIM)
    assert "no per-user parameters" in pm.validate_user_params(good, PARAMS, 2, 0)
    assert "not an array" in pm.validate_user_params([[0.0] * DIM] * 2, PARAMS, 2, DIM)


def test_parse_buckets_and_bucket_of():
    assert pm.parse_buckets("", 200) == (200,)
    assert pm.parse_buckets("64, 16,16,300,0,200", 200) == (16, 64, 200)
    b = pm.parse_buckets("8,16", 20)
    assert [pm.bucket_of(n, b) for n in (1, 8, 9, 16, 17, 20)] == [8, 8, 16, 16, 20, 20]


@FAST
@given(lengths=st.lists(st.one_of(st.none(), st.integers(1, SEQ_LEN)), max_size=12))
def test_plan_groups_puts_each_valid_request_in_its_own_bucket_once(lengths):
    groups = pm.plan_groups(lengths, BUCKETS)
    seen = [i for _, members in groups for i in members]
    assert sorted(seen) == [i for i, n in enumerate(lengths) if n is not None]
    assert [w for w, _ in groups] == sorted({w for w, _ in groups})
    for width, members in groups:
        for i in members:
            # the smallest bucket that holds the request: independent of the other requests
            assert width == min(b for b in BUCKETS if b >= lengths[i])


@FAST
@given(sizes=st.lists(st.integers(0, 5), max_size=8), width=st.integers(1, 4), off=st.sampled_from([0, 0, 0, 1, -1]))
def test_split_outputs_inverts_the_stacking(sizes, width, off):
    total = sum(sizes)
    a = np.arange((total + off) * width).reshape(-1, width) if total + off >= 0 else np.zeros((0, width))
    b = a.astype(np.float32) * 2
    if off != 0 and total + off >= 0:
        with pytest.raises(ValueError, match="rows"):
            pm.split_outputs((a, b), sizes)
        return
    if total + off < 0:
        return
    parts = pm.split_outputs((a, b), sizes)
    assert len(parts) == len(sizes)
    start = 0
    for n, p in zip(sizes, parts):
        if n == 0:
            assert p is None
            continue
        assert np.array_equal(p[0], a[start:start + n]) and np.array_equal(p[1], b[start:start + n])
        start += n


@FAST
@given(params=st.dictionaries(st.text(max_size=8), st.one_of(
    st.fixed_dictionaries({"string_value": st.text(max_size=8)}), st.text(max_size=5), st.integers(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
    max_size=5))
def test_read_parameters_always_gives_strings(params):
    out = pm.read_parameters({"parameters": params})
    assert set(out) == set(params) and all(isinstance(v, str) for v in out.values())


@pytest.mark.parametrize("inputs,outputs", [([], ["a", "b"]), (["a", "b", "c"], ["d", "e"]), (["a"], ["b"])])
def test_tensors_of_refuses_a_config_this_model_cannot_read(inputs, outputs):
    cfg = {"input": [{"name": n, "data_type": "TYPE_INT64"} for n in inputs],
           "output": [{"name": n, "data_type": "TYPE_FP32"} for n in outputs]}
    with pytest.raises(ValueError, match=r"declares inputs .* and outputs .*rebuild the repository"):
        pm.tensors_of(cfg, lambda s: np.int64)


# -- execute on a real ONNX Runtime session ------------------------------------------------------------
NAMES = ("item_ids", "user_params", "top_items", "top_scores")  # those of the generated config and the graph


def _sum_graph(path, input_type=None, names=NAMES):
    """histories [N, L] -> items = row sums [N, 1] (padding-invariant: shows whose rows answered),
    per-user parameters [N, H] -> scores = row sums [N, 1]; tensors named ``names``."""
    import onnx
    from onnx import TensorProto, helper

    ids, params, items, scores = names
    itype = input_type or TensorProto.INT64
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("ReduceSum", [ids, "axes"], [items], keepdims=1),
             helper.make_node("ReduceSum", [params, "axes"], [scores], keepdims=1)]
    g = helper.make_graph(nodes, "sums",
                          [helper.make_tensor_value_info(ids, itype, ["n", "L"]),
                           helper.make_tensor_value_info(params, TensorProto.FLOAT, ["n", DIM])],
                          [helper.make_tensor_value_info(items, itype, ["n", 1]),
                           helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["n", 1])],
                          initializer=[axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


class _Tensor:
    def __init__(self, name, arr):
        self.name, self.arr = name, arr

    def as_numpy(self):
        if isinstance(self.arr, Exception):
            raise self.arr
        return self.arr


class _TritonError:
    INVALID_ARG = 3

    def __init__(self, message, code=None):
        self._m, self.code = message, code

    def message(self):
        return self._m


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = {t.name: t.arr for t in output_tensors}, error


class _ModelException(Exception):
    pass


class _Request:
    def __init__(self, arr, params=None, names=NAMES):
        self.inputs = {} if arr is _MISSING else {names[0]: _Tensor(names[0], arr)}
        if params is not None:
            self.inputs[names[1]] = _Tensor(names[1], params)


_MISSING = object()


@pytest.fixture(scope="module")
def fake_pb(triton_utils):
    """Triton's triton_python_backend_utils with stand-ins for the stub's C++ classes."""
    mod = triton_utils()
    mod.Tensor, mod.TritonError, mod.InferenceResponse = _Tensor, _TritonError, _Response
    mod.TritonModelException = _ModelException

    def get_input_tensor_by_name(request, name):
        if getattr(request, "explode", False):
            raise RuntimeError("malformed request")
        return request.inputs.get(name)

    mod.get_input_tensor_by_name = get_input_tensor_by_name
    old = sys.modules.get(mod.__name__)
    sys.modules[mod.__name__] = mod
    yield mod
    if old is None:
        sys.modules.pop(mod.__name__, None)
    else:
        sys.modules[mod.__name__] = old


def _args(repo, version="1", dims=(-1,), buckets="2,4", names=NAMES):
    ids, params, items, scores = names
    cfg = {"input": [{"name": ids, "data_type": "TYPE_INT64", "dims": [str(d) for d in dims]},
                     {"name": params, "data_type": "TYPE_FP32", "dims": [str(DIM)], "optional": True}],
           "output": [{"name": items, "data_type": "TYPE_INT64", "dims": ["1"]},
                      {"name": scores, "data_type": "TYPE_FP32", "dims": ["1"]}],
           "parameters": {"intra_op_num_threads": {"string_value": "1"}, "allow_spinning": {"string_value": "false"},
                          "length_buckets": {"string_value": buckets}}}
    return {"model_config": json.dumps(cfg), "model_repository": str(repo), "model_version": version}


def _version(repo, input_type=None, names=NAMES):
    (repo / "1").mkdir(exist_ok=True)
    _sum_graph(repo / "1" / "model.onnx", input_type, names)
    (repo / "1" / "fsrec_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "max_seq_len": SEQ_LEN}))


@pytest.fixture(scope="module")
def served(fake_pb, tmp_path_factory):
    repo = tmp_path_factory.mktemp("fsrec")
    _version(repo)
    m = pm.TritonPythonModel()
    m.initialize(_args(repo))
    assert m.user_params_dim == DIM and m.buckets == BUCKETS
    return m


@FAST
@given(arrays=st.lists(st.one_of(request_arrays, st.just(_MISSING), st.just(ValueError("cannot read"))), max_size=10),
       kinds=st.lists(st.sampled_from([0, 0, 1, 1, 2, 3, 4]), max_size=10),
       explode=st.lists(st.booleans(), max_size=10))
def test_execute_answers_every_request_from_its_own_rows(served, arrays, kinds, explode):
    requests, params = [], []
    for i, a in enumerate(arrays):
        p = _params_for(a, kinds[i] if i < len(kinds) else 0) if _is_valid(a) else None
        r = _Request(a, p)
        r.explode = i < len(explode) and explode[i] and i % 3 == 0
        requests.append(r)
        params.append(p)
    responses = served.execute(requests)  # must not raise
    assert len(responses) == len(requests)
    for i, (r, a, p, resp) in enumerate(zip(requests, arrays, params, responses)):
        kind = kinds[i] if i < len(kinds) else 0
        ok = not r.explode and a is not _MISSING and _is_valid(a)
        if ok and kind in (0, 1):
            assert resp.error is None
            # its own rows, in its own order, whatever lengths its batch-mates had
            assert np.array_equal(resp.outputs["top_items"], a.sum(axis=1, keepdims=True))
            assert resp.outputs["top_scores"].dtype == np.float32
            want = np.zeros((len(a), 1), np.float32) if p is None else p.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(resp.outputs["top_scores"], want, rtol=1e-6)
        else:
            assert resp.error is not None and not resp.outputs
            name = "user_params" if ok else "item_ids"
            assert name in resp.error.message() and resp.error.code == _TritonError.INVALID_ARG


@settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.lists(st.one_of(valid_array, any_array), min_size=1, max_size=6))
def test_execute_reports_an_onnx_runtime_failure_to_every_valid_request(fake_pb, tmp_path_factory, arrays):
    from onnx import TensorProto

    repo = tmp_path_factory.mktemp("broken")
    _version(repo, input_type=TensorProto.FLOAT)  # ORT refuses int64 input at run time
    m = pm.TritonPythonModel()
    m.initialize(_args(repo))
    responses = m.execute([_Request(a) for a in arrays])
    assert len(responses) == len(arrays)
    for a, resp in zip(arrays, responses):
        assert resp.error is not None
        want = "ONNX Runtime failed on the batch" if _is_valid(a) else "item_ids"
        assert want in resp.error.message()


def test_initialize_refuses_a_missing_graph_a_config_mismatch_and_a_missing_gpu(fake_pb, tmp_path):
    (tmp_path / "1").mkdir()
    with pytest.raises(_ModelException, match="model.onnx is missing"):
        pm.TritonPythonModel().initialize(_args(tmp_path))
    _version(tmp_path)
    with pytest.raises(_ModelException, match=r"dims \[9\].*histories of 1..6"):
        pm.TritonPythonModel().initialize(_args(tmp_path, dims=(9,)))
    args = json.loads(_args(tmp_path)["model_config"])
    args["parameters"]["runtime"] = {"string_value": "torch"}
    args["parameters"]["device"] = {"string_value": "cuda"}
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(_ModelException, match="torch.cuda.is_available"):
            pm.TritonPythonModel().initialize({"model_config": json.dumps(args), "model_repository": str(tmp_path),
                                               "model_version": "1"})


# -- the names and types come from the model config ------------------------------------------------------
RENAMED = ("history", "offsets", "best", "best_scores")


def test_a_config_with_other_names_is_followed(fake_pb, tmp_path):
    """Graph and config exported with other tensor names: requests are read and answered under
    the config's names, with the config's types."""
    _version(tmp_path, names=RENAMED)
    m = pm.TritonPythonModel()
    m.initialize(_args(tmp_path, names=RENAMED))
    a = np.asarray([[3, 4], [5, 6]], np.int64)
    up = np.ones((2, DIM), np.float32)
    ok, default_names, params = m.execute([_Request(a, names=RENAMED), _Request(a),
                                           _Request(a, up, names=RENAMED)])
    assert ok.error is None and set(ok.outputs) == {"best", "best_scores"}
    np.testing.assert_array_equal(ok.outputs["best"], [[7], [11]])
    assert ok.outputs["best"].dtype == np.int64 and ok.outputs["best_scores"].dtype == np.float32
    assert default_names.error is not None and "input 'history' is missing" in default_names.error.message()
    np.testing.assert_allclose(params.outputs["best_scores"], [[DIM], [DIM]])


def test_a_config_that_disagrees_with_its_graph_is_refused_naming_both(fake_pb, tmp_path):
    _version(tmp_path)  # the graph has the generated names
    with pytest.raises(_ModelException) as e:
        pm.TritonPythonModel().initialize(_args(tmp_path, names=RENAMED))
    msg = str(e.value)
    assert "config.pbtxt names ['history', 'offsets', 'best', 'best_scores']" in msg
    assert "'item_ids'" in msg and "'top_items'" in msg and "rebuild the repository" in msg
    cfg = json.loads(_args(tmp_path)["model_config"])
    cfg["output"][1]["data_type"] = "TYPE_NOT_A_TYPE"
    with pytest.raises(_ModelException, match="'top_scores' has data_type 'TYPE_NOT_A_TYPE'"):
        pm.TritonPythonModel().initialize({"model_config": json.dumps(cfg), "model_repository": str(tmp_path),
                                           "model_version": "1"})


def test_the_model_keeps_no_tensor_names_and_its_file_names_match_the_contract():
    """Tensor names and Triton types live in the config (generated from the contract); the copies
    this stub-side file keeps (file names, the padding index) equal the contract's."""
    import ast
    from pathlib import Path

    from exporters.runtime import TORCH_FILE
    from fsrec_serve import contract

    assert (pm.META_FILE, pm.ONNX_FILE, pm.TORCH_FILE, pm.PAD_INDEX) == (
        contract.META_FILE, contract.ONNX_FILE, TORCH_FILE, contract.PAD_INDEX)
    tensor_names = {contract.INPUT_ITEM_IDS, contract.INPUT_USER_PARAMS, *contract.OUTPUT_NAMES}
    source = Path(pm.__file__).read_text()
    literals = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not literals & tensor_names, f"model.py spells tensor names itself: {literals & tensor_names}"
