"""Triton python-backend model: the FsRec ONNX graph on ONNX Runtime, on CPU.

This file is copied verbatim into every version of the CPU model repository
(``<repo>/fsrec/<version>/model.py``) by ``exporters.repository.build_model_repository``.
It must run inside Triton's python-backend stub, so it imports only numpy and onnxruntime
(from the environment named by the ``EXECUTION_ENV_PATH`` parameter; numpy must be < 2).

- ``initialize`` loads ``model.onnx`` of its version ONCE into an ONNX Runtime session
  (threads from the config's ``parameters``) and reads ``fsrec_meta.json``;
- ``execute`` receives every request of the dynamic batch, checks each one on its own
  (dtype int64, shape [n, max_seq_len], ids in 0..num_items), stacks the valid ones into ONE
  ONNX Runtime call and splits the outputs back, one response per request, in order. A bad
  request gets a Triton error response; the others are answered. Nothing raises out of
  ``execute``.

The stacking, splitting and validation are pure functions (no Triton import) so that they are
unit-tested directly; the real Triton path is exercised by the end-to-end tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INPUT_NAME = "item_ids"
INPUT_USER_PARAMS = "user_params"
OUTPUT_NAMES = ("top_items", "top_scores")
META_FILE = "fsrec_meta.json"
ONNX_FILE = "model.onnx"


# -- pure functions (unit-tested) ---------------------------------------------------------------
def validate_item_ids(arr, seq_len: int, num_items: int) -> str | None:
    """None when ``arr`` is a valid batch of histories, else a message naming the problem.

    Valid: a numpy int64 array of shape [n, seq_len] with n >= 1 and every id in 0..num_items
    (0 = padding; indices, not raw ids).
    """
    if arr is None:
        return f"input '{INPUT_NAME}' is missing"
    if not isinstance(arr, np.ndarray):
        return f"input '{INPUT_NAME}' is not an array"
    if arr.dtype != np.int64:
        return f"input '{INPUT_NAME}' must be INT64, got {arr.dtype}"
    if arr.ndim != 2 or arr.shape[1] != seq_len or arr.shape[0] < 1:
        return f"input '{INPUT_NAME}' must have shape [n, {seq_len}] (left-padded), got {list(arr.shape)}"
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > num_items:
        bad = lo if lo < 0 else hi
        return (f"input '{INPUT_NAME}' holds item index {bad} outside 0..{num_items} "
                "(0 = padding; map raw ids with the model's item_map.json)")
    return None


def plan_batch(arrays, seq_len: int, num_items: int):
    """Validate each request's array and stack the valid ones.

    Returns ``(stacked, sizes, errors)``: ``stacked`` int64 [sum(valid n), seq_len] or None when
    no request is valid; ``sizes[i]`` rows of request i in ``stacked`` (0 when invalid);
    ``errors[i]`` None or the message for request i.
    """
    errors = [validate_item_ids(a, seq_len, num_items) for a in arrays]
    sizes = [0 if e is not None else int(a.shape[0]) for a, e in zip(arrays, errors)]
    valid = [a for a, e in zip(arrays, errors) if e is None]
    stacked = np.ascontiguousarray(np.concatenate(valid, axis=0)) if valid else None
    return stacked, sizes, errors


def split_outputs(outputs, sizes):
    """Split stacked outputs (a tuple of arrays with the same first dim) back per request.

    Returns one tuple per request, in order; None for requests with size 0 (invalid).
    """
    total = sum(sizes)
    for o in outputs:
        if o.shape[0] != total:
            raise ValueError(f"output has {o.shape[0]} rows, expected {total}")
    result, start = [], 0
    for n in sizes:
        if n == 0:
            result.append(None)
            continue
        result.append(tuple(o[start:start + n] for o in outputs))
        start += n
    return result


def read_parameters(model_config: dict) -> dict:
    """config.pbtxt ``parameters`` (JSON form given to initialize) -> {key: string value}."""
    params = model_config.get("parameters", {}) or {}
    return {k: (v.get("string_value", "") if isinstance(v, dict) else str(v)) for k, v in params.items()}


def session_options_from(params: dict):
    """ONNX Runtime SessionOptions from the config parameters (threads, spinning)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(params.get("intra_op_num_threads", "0") or 0)
    so.inter_op_num_threads = int(params.get("inter_op_num_threads", "1") or 1)
    so.log_severity_level = 3
    if params.get("allow_spinning", "true").lower() in ("0", "false", "no"):
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


# -- the Triton model ----------------------------------------------------------------------------
class TritonPythonModel:
    """Triton python-backend entry point (see the module docstring)."""

    def initialize(self, args):
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils  # provided by the stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        onnx_file = version_dir / ONNX_FILE
        if not onnx_file.exists():
            raise pb_utils.TritonModelException(
                f"{onnx_file} is missing: build the version with `fsrec repository` "
                "(exporters.repository.build_model_repository)"
            )
        meta = json.loads((version_dir / META_FILE).read_text())
        self.num_items = int(meta["num_items"])
        self.seq_len = int(meta["max_seq_len"])
        dims = [int(d) for d in config["input"][0]["dims"]]
        if dims != [self.seq_len]:
            raise pb_utils.TritonModelException(
                f"config.pbtxt declares {INPUT_NAME} dims {dims} but the ONNX graph of version "
                f"{args['model_version']} reads histories of {self.seq_len}: rebuild the repository"
            )
        params = read_parameters(config)
        self.session = ort.InferenceSession(
            str(onnx_file), sess_options=session_options_from(params), providers=["CPUExecutionProvider"]
        )
        self.version = str(args["model_version"])
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.user_params_dim = int(shapes[INPUT_USER_PARAMS][1]) if INPUT_USER_PARAMS in shapes else 0

    def _error(self, message: str):
        pb = self._pb
        try:
            err = pb.TritonError(message, pb.TritonError.INVALID_ARG)
        except (AttributeError, TypeError):  # older stubs: no error codes
            err = pb.TritonError(message)
        return pb.InferenceResponse(output_tensors=[], error=err)

    def execute(self, requests):
        pb = self._pb
        arrays = []
        for r in requests:
            try:
                t = pb.get_input_tensor_by_name(r, INPUT_NAME)
                arrays.append(None if t is None else t.as_numpy())
            except Exception:  # noqa: BLE001 - a malformed request must not sink the batch
                arrays.append(None)
        stacked, sizes, errors = plan_batch(arrays, self.seq_len, self.num_items)
        parts = [None] * len(requests)
        if stacked is not None:
            try:
                feed = {INPUT_NAME: stacked}
                if self.user_params_dim:
                    feed[INPUT_USER_PARAMS] = np.zeros((len(stacked), self.user_params_dim), np.float32)
                outs = self.session.run(list(OUTPUT_NAMES), feed)
                parts = split_outputs(outs, sizes)
            except Exception as e:  # noqa: BLE001 - answer every request with the failure
                errors = [err or f"ONNX Runtime failed on the batch: {e}" for err in errors]
        responses = []
        for err, part in zip(errors, parts):
            if err is not None or part is None:
                responses.append(self._error(err or "request was not processed"))
                continue
            items, scores = part
            responses.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor(OUTPUT_NAMES[0], np.ascontiguousarray(items, dtype=np.int64)),
                pb.Tensor(OUTPUT_NAMES[1], np.ascontiguousarray(scores, dtype=np.float32)),
            ]))
        return responses

    def finalize(self):
        self.session = None

