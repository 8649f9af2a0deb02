"""Property-based tests (hypothesis) of the Triton python-backend model's request handling
(``exporters/triton_python/model.py``, as written): every request gets exactly one answer, in
order; a valid request's answer comes from its own rows only (never a batch-mate's); an invalid
one gets an error that names the problem; nothing raises out of ``execute`` and nothing hangs.

The pure functions (``validate_item_ids``, ``plan_batch``, ``split_outputs``,
``read_parameters``) are tested directly. ``execute`` runs on a real ONNX Runtime session of a
tiny hand-made graph (top_items = the history, top_scores = the history as float, so each
answer shows which rows it came from); only ``triton_python_backend_utils``, which exists
inside Triton's stub alone, is replaced by a minimal stand-in (the real stub path is covered by
the e2e tests).
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exporters.triton_python import model as pm

FAST = settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SEQ_LEN, NUM_ITEMS = 6, 40

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
any_array = st.one_of(
    # every dtype a client could send, any shape, any values of that dtype
    hnp.arrays(st.sampled_from([np.int64, np.int32, np.uint64, np.float32, np.float64, np.bool_, np.dtype("U2")]), shapes),
    hnp.arrays(np.dtype("O"), shapes, elements=st.one_of(st.integers(), st.text(max_size=2), st.none())),
    # the right dtype and width, small ids: valid or out of range by a little
    st.integers(0, 4).flatmap(lambda n: hnp.arrays(np.int64, (n, SEQ_LEN), elements=st.integers(-3, NUM_ITEMS + 3))),
)
valid_array = st.integers(1, 5).flatmap(
    lambda n: hnp.arrays(np.int64, (n, SEQ_LEN), elements=st.integers(0, NUM_ITEMS)))
bad_ids_array = st.integers(1, 4).flatmap(
    lambda n: hnp.arrays(np.int64, (n, SEQ_LEN), elements=st.one_of(st.integers(-10**12, -1), st.integers(NUM_ITEMS + 1, 10**12))))
request_arrays = st.one_of(valid_array, valid_array, bad_ids_array, any_array, st.none(), st.text(max_size=3),
                           st.lists(st.integers(), max_size=3))


def _is_valid(a) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 2 and a.shape[0] >= 1
            and a.shape[1] == SEQ_LEN and int(a.min()) >= 0 and int(a.max()) <= NUM_ITEMS)


# -- pure functions ------------------------------------------------------------------------------------
@FAST
@given(a=request_arrays)
def test_validate_item_ids_accepts_exactly_the_contract(a):
    msg = pm.validate_item_ids(a, SEQ_LEN, NUM_ITEMS)
    if _is_valid(a):
        assert msg is None
    else:
        assert isinstance(msg, str) and "item_ids" in msg and len(msg) > 20, msg


@FAST
@given(arrays=st.lists(request_arrays, max_size=8))
def test_plan_batch_stacks_the_valid_requests_in_order(arrays):
    stacked, sizes, errors = pm.plan_batch(arrays, SEQ_LEN, NUM_ITEMS)
    assert len(sizes) == len(errors) == len(arrays)
    valid = [a for a in arrays if _is_valid(a)]
    for a, n, e in zip(arrays, sizes, errors):
        assert (e is None) == _is_valid(a) and n == (a.shape[0] if e is None else 0)
    if not valid:
        assert stacked is None
    else:
        assert stacked.dtype == np.int64 and np.array_equal(stacked, np.concatenate(valid))


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


# -- execute on a real ONNX Runtime session ------------------------------------------------------------
def _identity_graph(path, input_type=None):
    """item_ids [N, L] int64 -> top_items = item_ids, top_scores = float(item_ids)."""
    import onnx
    from onnx import TensorProto, helper

    itype = input_type or TensorProto.INT64
    nodes = [helper.make_node("Identity", ["item_ids"], ["top_items"]),
             helper.make_node("Cast", ["item_ids"], ["top_scores"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "identity",
                          [helper.make_tensor_value_info("item_ids", itype, ["n", SEQ_LEN])],
                          [helper.make_tensor_value_info("top_items", itype, ["n", SEQ_LEN]),
                           helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["n", SEQ_LEN])])
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
    def __init__(self, arr, name="item_ids"):
        self.inputs = {} if arr is _MISSING else {name: _Tensor(name, arr)}


_MISSING = object()


@pytest.fixture(scope="module")
def fake_pb():
    mod = types.ModuleType("triton_python_backend_utils")
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


def _args(repo, version="1", dims=(SEQ_LEN,)):
    cfg = {"input": [{"name": "item_ids", "data_type": "TYPE_INT64", "dims": [str(d) for d in dims]}],
           "parameters": {"intra_op_num_threads": {"string_value": "1"}, "allow_spinning": {"string_value": "false"}}}
    return {"model_config": json.dumps(cfg), "model_repository": str(repo), "model_version": version}


@pytest.fixture(scope="module")
def served(fake_pb, tmp_path_factory):
    repo = tmp_path_factory.mktemp("fsrec")
    (repo / "1").mkdir()
    _identity_graph(repo / "1" / "model.onnx")
    (repo / "1" / "fsrec_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "max_seq_len": SEQ_LEN}))
    m = pm.TritonPythonModel()
    m.initialize(_args(repo))
    return m


@FAST
@given(arrays=st.lists(st.one_of(request_arrays, st.just(_MISSING), st.just(ValueError("cannot read"))), max_size=10),
       explode=st.lists(st.booleans(), max_size=10))
def test_execute_answers_every_request_from_its_own_rows(served, arrays, explode):
    requests = []
    for i, a in enumerate(arrays):
        r = _Request(a)
        r.explode = i < len(explode) and explode[i] and i % 3 == 0
        requests.append(r)
    responses = served.execute(requests)  # must not raise
    assert len(responses) == len(requests)
    for r, a, resp in zip(requests, arrays, responses):
        ok = not r.explode and a is not _MISSING and _is_valid(a)
        if ok:
            assert resp.error is None
            assert np.array_equal(resp.outputs["top_items"], a)  # its own rows, in its own order
            assert resp.outputs["top_scores"].dtype == np.float32
            assert np.array_equal(resp.outputs["top_scores"], a.astype(np.float32))
        else:
            assert resp.error is not None and not resp.outputs
            assert "item_ids" in resp.error.message() and resp.error.code == _TritonError.INVALID_ARG


@settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.lists(st.one_of(valid_array, any_array), min_size=1, max_size=6))
def test_execute_reports_an_onnx_runtime_failure_to_every_valid_request(fake_pb, tmp_path_factory, arrays):
    import onnxruntime as ort
    from onnx import TensorProto

    path = tmp_path_factory.mktemp("broken") / "model.onnx"
    _identity_graph(path, input_type=TensorProto.FLOAT)  # ORT refuses int64 input at run time
    m = pm.TritonPythonModel()
    m._pb, m.seq_len, m.num_items, m.version = fake_pb, SEQ_LEN, NUM_ITEMS, "1"
    m.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    responses = m.execute([_Request(a) for a in arrays])
    assert len(responses) == len(arrays)
    for a, resp in zip(arrays, responses):
        assert resp.error is not None
        want = "ONNX Runtime failed on the batch" if _is_valid(a) else "item_ids"
        assert want in resp.error.message()


def test_initialize_refuses_a_missing_graph_and_a_config_mismatch(fake_pb, tmp_path):
    (tmp_path / "1").mkdir()
    with pytest.raises(_ModelException, match="model.onnx is missing"):
        pm.TritonPythonModel().initialize(_args(tmp_path))
    _identity_graph(tmp_path / "1" / "model.onnx")
    (tmp_path / "1" / "fsrec_meta.json").write_text(json.dumps({"num_items": NUM_ITEMS, "max_seq_len": SEQ_LEN}))
    with pytest.raises(_ModelException, match=r"dims \[9\].*histories of 6"):
        pm.TritonPythonModel().initialize(_args(tmp_path, dims=(9,)))
