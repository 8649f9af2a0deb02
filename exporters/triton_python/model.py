"""Triton python-backend model: the FsRec graph on ONNX Runtime (cpu) or torch (gpu-python).

This file is copied verbatim into every version of the python-backend model repositories
(``<repo>/fsrec/<version>/model.py``) by ``exporters.repository.build_model_repository``.
It runs inside Triton's python-backend stub, so it imports only numpy and, per runtime,
onnxruntime or torch (from the environment named by the ``EXECUTION_ENV_PATH`` parameter).

Runtimes (config parameter ``runtime``):

- ``onnxruntime`` (the ``cpu`` target): ``model.onnx`` in an ONNX Runtime session, numpy in
  and out (numpy must be < 2 in that environment: numpy 2 empties the responses);
- ``torch`` (the ``gpu-python`` target): ``model.pt`` (a TorchScript trace of the same graph)
  on ``device`` (default ``cuda``), tensors in and out through DLPack, no numpy on the hot path.

``execute`` receives every request of the dynamic batch. ``item_ids`` is a ragged input
(``allow_ragged_batch``): each request keeps its own history length L (1..max_seq_len). Each
request is checked on its own (dtype int64, shape [n, L], ids in 0..num_items; the optional
``user_params`` float32 [n, H], finite; zeros when absent = the zero-shot answer). The valid
requests are grouped by length bucket (config parameter ``length_buckets``); each group is
left-padded to its bucket's FIXED width and run as one call. A request's answer therefore
depends only on its own rows and its own bucket, never on the lengths of its batch-mates.
With ``strict_buckets`` a length that is not itself a bucket is refused (the contract of the
native gpu target, where the client pads to a bucket). A bad request gets a Triton error
response; the others are answered. Nothing raises out of ``execute``.

The checks, bucketing and splitting are pure functions (no Triton import), unit-tested directly;
the real Triton path is exercised by the end-to-end tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# a copy of fsrec_serve.contract's values (this file runs inside the stub); a unit test checks it
INPUT_NAME = "item_ids"
INPUT_USER_PARAMS = "user_params"
OUTPUT_NAMES = ("top_items", "top_scores")
META_FILE = "fsrec_meta.json"
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.pt"
PAD_INDEX = 0
RUNTIMES = ("onnxruntime", "torch")


# -- pure functions (unit-tested) ---------------------------------------------------------------
def _dtype(a) -> str:
    return str(a.dtype).replace("torch.", "")


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "ndim") and not isinstance(a, type)


def _array_problem(a, name: str, dtype: str, triton_dtype: str) -> str | None:
    """The checks every input starts with: present, an array, the right dtype."""
    if a is None:
        return f"input '{name}' is missing"
    if not _is_array(a):
        return f"input '{name}' is not an array"
    if _dtype(a) != dtype:
        return f"input '{name}' must be {triton_dtype}, got {_dtype(a)}"
    return None


def validate_item_ids(arr, max_seq_len: int, num_items: int, buckets=(), strict: bool = False) -> str | None:
    """None when ``arr`` is a valid batch of histories, else a message naming the problem.

    Valid: an int64 array (numpy or torch) of shape [n, L] with n >= 1, 1 <= L <= max_seq_len
    (L in ``buckets`` when ``strict``) and every id in 0..num_items (0 = padding; indices, not
    raw ids).
    """
    problem = _array_problem(arr, INPUT_NAME, "int64", "INT64")
    if problem:
        return problem
    shape = [int(d) for d in arr.shape]
    if len(shape) != 2 or shape[0] < 1:
        return f"input '{INPUT_NAME}' must have shape [n, L] (n >= 1 histories), got {shape}"
    length = shape[1]
    if not 1 <= length <= max_seq_len:
        return (f"input '{INPUT_NAME}' has history length {length}; this model reads 1..{max_seq_len} "
                f"items (send the newest {max_seq_len}, at least one)")
    if strict and buckets and length not in buckets:
        return (f"input '{INPUT_NAME}' has history length {length}, which is not one of the model's "
                f"length buckets {list(buckets)}: left-pad to the next bucket (the fsrec client does)")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > num_items:
        bad = lo if lo < 0 else hi
        return (f"input '{INPUT_NAME}' holds item index {bad} outside 0..{num_items} "
                "(0 = padding; map raw ids with the model's item_map.json)")
    return None


def _all_finite(a) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.isfinite(a).all())
    import torch  # a torch tensor (gpu-python runtime)

    return bool(torch.isfinite(a).all())


def validate_user_params(params, n_rows: int, dim: int) -> str | None:
    """None when ``params`` is absent (zeros are used) or a finite float32 [n_rows, dim] array."""
    if params is None:
        return None
    if dim <= 0:
        return f"input '{INPUT_USER_PARAMS}' was sent, but this model version has no per-user parameters"
    problem = _array_problem(params, INPUT_USER_PARAMS, "float32", "FP32")
    if problem:
        return problem
    shape = [int(d) for d in params.shape]
    if shape != [n_rows, dim]:
        return (f"input '{INPUT_USER_PARAMS}' must have shape [{n_rows}, {dim}] (one row of {dim} per "
                f"history), got {shape}")
    if not _all_finite(params):
        return f"input '{INPUT_USER_PARAMS}' holds NaN or infinite values: send finite per-user parameters"
    return None


def parse_buckets(text: str, max_seq_len: int) -> tuple:
    """``"8,16,32"`` -> (8, 16, 32, max_seq_len): sorted, inside 1..max_seq_len, max_seq_len last."""
    out = set()
    for part in str(text or "").replace(" ", "").split(","):
        if part:
            b = int(part)
            if 1 <= b < max_seq_len:
                out.add(b)
    return tuple(sorted(out)) + (int(max_seq_len),)


def bucket_of(length: int, buckets) -> int:
    """The smallest bucket >= length (buckets sorted, the last one = max_seq_len)."""
    for b in buckets:
        if length <= b:
            return int(b)
    return int(buckets[-1])


def plan_groups(lengths, buckets) -> list:
    """Valid requests' history lengths (None = invalid request) -> [(bucket width, [request
    indices])], in bucket order, each request once."""
    groups: dict = {}
    for i, n in enumerate(lengths):
        if n is not None:
            groups.setdefault(bucket_of(n, buckets), []).append(i)
    return sorted(groups.items())


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


# -- runtimes: pad a group, run it ----------------------------------------------------------------
class _OrtRuntime:
    """numpy in/out, one ONNX Runtime session."""

    name = "ONNX Runtime"

    def __init__(self, version_dir: Path, params: dict, pb, device_id: str = "0"):
        import onnxruntime as ort

        path = version_dir / ONNX_FILE
        if not path.exists():
            raise pb.TritonModelException(
                f"{path} is missing: build the version with `fsrec repository` "
                "(exporters.repository.build_model_repository)")
        self.session = ort.InferenceSession(str(path), sess_options=session_options_from(params),
                                            providers=["CPUExecutionProvider"])
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        dim = shapes.get(INPUT_USER_PARAMS, [0, 0])[1]
        self.user_params_dim = int(dim) if isinstance(dim, int) else 0

    @staticmethod
    def read(pb, request, name):
        t = pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def run(self, ids_list, params_list, width: int):
        """Requests' item_ids [n_i, L_i] (+ user_params [n_i, H] or None) -> outputs of all rows."""
        n = sum(int(a.shape[0]) for a in ids_list)
        x = np.full((n, width), PAD_INDEX, dtype=np.int64)
        feed = {INPUT_NAME: x}
        if self.user_params_dim:
            feed[INPUT_USER_PARAMS] = up = np.zeros((n, self.user_params_dim), dtype=np.float32)
        r = 0
        for a, p in zip(ids_list, params_list):
            k, length = int(a.shape[0]), int(a.shape[1])
            x[r:r + k, width - length:] = a
            if p is not None:
                up[r:r + k] = p
            r += k
        return self.session.run(list(OUTPUT_NAMES), feed)

    def tensors(self, pb, part):
        items, scores = part
        return [pb.Tensor(OUTPUT_NAMES[0], np.ascontiguousarray(items, dtype=np.int64)),
                pb.Tensor(OUTPUT_NAMES[1], np.ascontiguousarray(scores, dtype=np.float32))]


class _TorchRuntime:
    """torch in/out through DLPack (no numpy: numpy 2 empties python-backend responses)."""

    name = "torch"

    def __init__(self, version_dir: Path, params: dict, pb, device_id: str = "0"):
        import torch

        self.torch = torch
        device = params.get("device", "cuda") or "cuda"
        if device == "cuda":
            device = f"cuda:{device_id or 0}"  # the GPU Triton gave this instance (KIND_GPU)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise pb.TritonModelException(
                f"runtime torch on {device!r}, but torch.cuda.is_available() is False in this "
                "environment: serve the gpu-python target on a machine with a CUDA GPU (or set the "
                "'device' parameter to 'cpu' for a functional check)")
        path = version_dir / TORCH_FILE
        if not path.exists():
            raise pb.TritonModelException(
                f"{path} is missing: build the gpu-python version with `fsrec repository --target "
                "gpu-python` (it traces the graph to TorchScript)")
        self.device = torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.user_params_dim = int(json.loads((version_dir / META_FILE).read_text()).get("user_params_dim", 0))

    def read(self, pb, request, name):
        t = pb.get_input_tensor_by_name(request, name)
        return None if t is None else self.torch.from_dlpack(t.to_dlpack())

    def run(self, ids_list, params_list, width: int):
        torch = self.torch
        n = sum(int(a.shape[0]) for a in ids_list)
        x = torch.full((n, width), PAD_INDEX, dtype=torch.int64, device=self.device)
        up = torch.zeros((n, max(1, self.user_params_dim)), dtype=torch.float32, device=self.device)
        r = 0
        for a, p in zip(ids_list, params_list):
            k, length = int(a.shape[0]), int(a.shape[1])
            x[r:r + k, width - length:] = a.to(self.device, non_blocking=True)
            if p is not None:
                up[r:r + k] = p.to(self.device, non_blocking=True)
            r += k
        with torch.inference_mode():
            items, scores = self.module(x, up)
        return items, scores

    def tensors(self, pb, part):
        items, scores = part
        return [pb.Tensor.from_dlpack(OUTPUT_NAMES[0], self.torch.utils.dlpack.to_dlpack(items.contiguous())),
                pb.Tensor.from_dlpack(OUTPUT_NAMES[1], self.torch.utils.dlpack.to_dlpack(scores.contiguous()))]


# -- the Triton model ----------------------------------------------------------------------------
class TritonPythonModel:
    """Triton python-backend entry point (see the module docstring)."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils  # provided by the stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        params = read_parameters(config)
        runtime = params.get("runtime", "onnxruntime") or "onnxruntime"
        if runtime not in RUNTIMES:
            raise pb_utils.TritonModelException(f"parameter runtime={runtime!r}: choose one of {RUNTIMES}")
        self.runtime = (_OrtRuntime if runtime == "onnxruntime" else _TorchRuntime)(
            version_dir, params, pb_utils, str(args.get("model_instance_device_id", "0")))
        meta = json.loads((version_dir / META_FILE).read_text())
        self.num_items = int(meta["num_items"])
        self.seq_len = int(meta["max_seq_len"])
        dims = [int(d) for d in config["input"][0]["dims"]]
        if dims not in ([-1], [self.seq_len]):
            raise pb_utils.TritonModelException(
                f"config.pbtxt declares {INPUT_NAME} dims {dims} but the graph of version "
                f"{args['model_version']} reads histories of 1..{self.seq_len} items: rebuild the repository")
        self.buckets = parse_buckets(params.get("length_buckets", ""), self.seq_len)
        self.strict = params.get("strict_buckets", "false").lower() in ("1", "true", "yes")
        self.user_params_dim = self.runtime.user_params_dim
        self.version = str(args["model_version"])

    def _error(self, message: str):
        pb = self._pb
        try:
            err = pb.TritonError(message, pb.TritonError.INVALID_ARG)
        except (AttributeError, TypeError):  # older stubs: no error codes
            err = pb.TritonError(message)
        return pb.InferenceResponse(output_tensors=[], error=err)

    def _read(self, requests):
        """-> (item_ids list, user_params list, errors list), one entry per request."""
        ids, params, errors = [], [], []
        for r in requests:
            a = p = err = None
            try:
                a = self.runtime.read(self._pb, r, INPUT_NAME)
                err = validate_item_ids(a, self.seq_len, self.num_items, self.buckets, self.strict)
                if err is None:
                    p = self.runtime.read(self._pb, r, INPUT_USER_PARAMS)
                    err = validate_user_params(p, int(a.shape[0]), self.user_params_dim)
            except Exception as e:  # noqa: BLE001 - a malformed request must not sink the batch
                err = err or f"input '{INPUT_NAME}' could not be read: {e}"
            ids.append(a)
            params.append(p)
            errors.append(err)
        return ids, params, errors

    def execute(self, requests):
        pb = self._pb
        ids, params, errors = self._read(requests)
        parts = [None] * len(requests)
        lengths = [int(a.shape[1]) if e is None else None for a, e in zip(ids, errors)]
        for width, members in plan_groups(lengths, self.buckets):
            try:
                outs = self.runtime.run([ids[i] for i in members], [params[i] for i in members], width)
                for i, part in zip(members, split_outputs(outs, [int(ids[i].shape[0]) for i in members])):
                    parts[i] = part
            except Exception as e:  # noqa: BLE001 - answer every request of the group with the failure
                for i in members:
                    errors[i] = f"{self.runtime.name} failed on the batch: {e}"
        responses = []
        for err, part in zip(errors, parts):
            if err is not None or part is None:
                responses.append(self._error(err or "request was not processed"))
                continue
            responses.append(pb.InferenceResponse(output_tensors=self.runtime.tensors(pb, part)))
        return responses

    def finalize(self):
        self.runtime = None
