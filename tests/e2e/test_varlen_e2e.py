"""Real-length serving and per-user parameters through a real tritonserver (issue 12 item 1,
issue 10 item 3): histories sent at their own length next to long ones in the same dynamic
batches, bad lengths and bad user_params answered with clear errors while the server keeps
serving, a strict-bucket model refusing a length it lacks, and the gpu-python target (torch via
DLPack) served on the CPU.

Raw tritonclient requests on purpose: these tests control the exact tensors the server sees.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

MAX_SEQ_LEN = 20  # conftest.MAX_SEQ_LEN
MAX_TOP_K = 50  # conftest.MAX_TOP_K


@pytest.fixture
def raw(triton_server):
    import tritonclient.grpc as tc

    c = tc.InferenceServerClient(triton_server.url_grpc)
    yield c
    c.close()


def _infer(client, ids: np.ndarray, params: np.ndarray | None = None, model: str = "fsrec",
           ids_dtype: str = "INT64", params_dtype: str = "FP32"):
    import tritonclient.grpc as tc

    inputs = [tc.InferInput("item_ids", list(ids.shape), ids_dtype)]
    inputs[0].set_data_from_numpy(ids)
    if params is not None:
        inputs.append(tc.InferInput("user_params", list(params.shape), params_dtype))
        inputs[1].set_data_from_numpy(params)
    r = client.infer(model, inputs)
    return r.as_numpy("top_items"), r.as_numpy("top_scores")


def _counts(client, model: str = "fsrec") -> tuple[int, int]:
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def _histories(e2e_splits, n: int) -> list[list[int]]:
    return [ex.history[-MAX_SEQ_LEN:] for ex in e2e_splits.loo_test()[:n]]


def test_mixed_lengths_in_dynamic_batches_never_change_an_answer(raw, e2e_splits, ort_session):
    """One thread sends a full-length history over and over while 8 threads send short ones at
    their own lengths: every answer equals the padded model's, batches did form."""
    from exporters import run_topk
    from fsrec_serve.idmap import pad_left

    hist = [h for h in _histories(e2e_splits, 120) if len(h) >= MAX_SEQ_LEN][:1]
    short = [h[-(1 + i % 9):] for i, h in enumerate(_histories(e2e_splits, 40))]
    assert hist and len(hist[0]) == MAX_SEQ_LEN
    work = hist + short
    want = {tuple(h): run_topk(ort_session, pad_left([h], MAX_SEQ_LEN)) for h in work}
    before = _counts(raw)
    errors, mismatches = [], []

    def worker(seq):
        try:
            for h in seq:
                items, scores = _infer(raw, np.asarray([h], np.int64))  # its own length, no padding
                w_items, w_scores = want[tuple(h)]
                if not np.array_equal(items, w_items) or not np.allclose(scores, w_scores, atol=1e-5):
                    mismatches.append(len(h))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(hist * 30,))]
    threads += [threading.Thread(target=worker, args=(short[t::8] * 3,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert not mismatches, f"answers changed for lengths {mismatches[:10]}"
    inferences, executions = (a - b for a, b in zip(_counts(raw), before))
    assert inferences == 30 + 3 * len(short)
    assert executions < inferences, "no dynamic batching happened: the test did not mix lengths"


@pytest.mark.parametrize("length", [0, MAX_SEQ_LEN + 1, 10000])
def test_bad_lengths_get_clear_errors_and_the_server_keeps_answering(raw, triton_server, length):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as ei:
        _infer(raw, np.ones((1, length), np.int64))
    assert f"length {length}" in ei.value.message() and f"1..{MAX_SEQ_LEN}" in ei.value.message()
    items, _ = _infer(raw, np.asarray([[1, 2, 3]], np.int64))
    assert items.shape == (1, MAX_TOP_K) and not {1, 2, 3} & set(items[0].tolist())
    assert triton_server.is_alive()


def test_user_params_per_user_zeros_and_bad_ones(raw, e2e_splits, ort_session, tiny_export):
    from tritonclient.utils import InferenceServerException

    from exporters import ExportMeta, run_topk
    from fsrec_serve.idmap import pad_left

    h = ExportMeta.load(tiny_export).user_params_dim
    assert h > 0
    hist = _histories(e2e_splits, 3)
    x = pad_left(hist, MAX_SEQ_LEN)
    up = (0.5 * np.random.default_rng(0).standard_normal((3, h))).astype(np.float32)
    items, scores = _infer(raw, x, up)
    w_items, w_scores = run_topk(ort_session, x, user_params=up)
    np.testing.assert_array_equal(items, w_items)
    np.testing.assert_allclose(scores, w_scores, atol=1e-5)
    none_items, none_scores = _infer(raw, x)
    zero_items, zero_scores = _infer(raw, x, np.zeros((3, h), np.float32))
    np.testing.assert_array_equal(none_items, zero_items)
    np.testing.assert_array_equal(none_scores, zero_scores)
    assert not np.array_equal(items, none_items)  # the parameters reach the graph
    bad = {
        "NaN": (np.full((3, h), np.nan, np.float32), "FP32"),
        "user_params": (np.zeros((3, h - 1), np.float32), "FP32"),  # Triton checks dims [H]
        "FP64": (np.zeros((3, h), np.float64), "FP64"),
        "batch size does not match": (np.zeros((2, h), np.float32), "FP32"),  # rows != histories (Triton)
    }
    for want, (p, dtype) in bad.items():
        with pytest.raises(InferenceServerException) as ei:
            _infer(raw, x, p, params_dtype=dtype)
        assert want in ei.value.message() or "user_params" in ei.value.message(), ei.value.message()
        assert np.array_equal(_infer(raw, x)[0], none_items)  # still answering, same answer


def test_strict_buckets_refuse_a_length_the_model_lacks(repository_copy, server_factory):
    """The contract of the gpu target (the client pads to a bucket), enforced by the python model
    when the config says strict_buckets."""
    import tritonclient.grpc as tc
    from google.protobuf import text_format
    from tritonclient.utils import InferenceServerException

    from exporters.repository import load_model_config

    repo = repository_copy("strict")
    cfg = load_model_config(repo / "fsrec")
    cfg.parameters["strict_buckets"].string_value = "true"
    cfg.parameters["length_buckets"].string_value = f"4,8,{MAX_SEQ_LEN}"
    del cfg.model_warmup[:]  # the session repository warms length 16, which these buckets refuse
    (repo / "fsrec" / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    server = server_factory(repo)
    c = tc.InferenceServerClient(server.url_grpc)
    try:
        with pytest.raises(InferenceServerException) as ei:
            _infer(c, np.ones((1, 5), np.int64))
        assert "not one of the model's length buckets [4, 8, 20]" in ei.value.message()
        x = np.zeros((1, 8), np.int64)
        x[0, -5:] = [1, 2, 3, 4, 5]
        assert _infer(c, x)[0].shape == (1, MAX_TOP_K)
    finally:
        c.close()


def test_gpu_python_target_serves_the_torchscript_trace_on_cpu(tmp_path, server_factory):
    """The gpu-python target through real Triton with device 'cpu' and KIND_CPU (no GPU here):
    the torch runtime, DLPack in and out, ragged lengths, user_params; same answers as ONNX."""
    import torch
    import tritonclient.grpc as tc

    from exporters import (
        build_model_repository,
        export_onnx,
        make_session,
        run_topk,
    )
    from fsrec_serve.idmap import pad_left
    from fsrec_serve.model import FsRecConfig, FsRecModel

    torch.manual_seed(0)
    m = FsRecModel(FsRecConfig(num_items=80, hidden_size=16, intermediate_size=32, max_seq_len=12)).eval()
    exp = export_onnx(m, tmp_path / "ts", max_top_k=10, torchscript=True).output_dir
    repo = tmp_path / "repo"
    build_model_repository(repo, exp, target="gpu-python", torch_device="cpu", instance_kind="KIND_CPU",
                           instance_count=1, length_buckets=[4, 8])
    server = server_factory(repo)
    c = tc.InferenceServerClient(server.url_grpc)
    sess = make_session(exp)
    try:
        for hist in ([5], [1, 2, 3, 4, 5, 6], list(range(1, 13))):
            items, scores = _infer(c, np.asarray([hist], np.int64))
            w_items, w_scores = run_topk(sess, pad_left([hist], 12))
            np.testing.assert_array_equal(items, w_items)
            np.testing.assert_allclose(scores, w_scores, atol=1e-5)
        up = np.full((1, 16), 0.2, np.float32)
        items, scores = _infer(c, np.asarray([[7, 8, 9]], np.int64), up)
        np.testing.assert_allclose(scores, run_topk(sess, np.asarray([[7, 8, 9]], np.int64), user_params=up)[1],
                                   atol=1e-5)
    finally:
        c.close()
