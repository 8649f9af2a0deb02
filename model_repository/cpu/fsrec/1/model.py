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

Tensor names and data types come from the model configuration Triton hands to ``initialize``
(``args["model_config"]``, the JSON form of the generated ``config.pbtxt``), by position: input 0
holds the histories, input 1 (optional) the per-user parameters, output 0 the items and output 1
their scores. The ONNX graph must carry the same names (a config and a graph of different exports
are refused at load, naming both).

``execute`` receives every request of the dynamic batch. The histories are a ragged input
(``allow_ragged_batch``): each request keeps its own history length L (1..max_seq_len). Each
request is checked on its own (the configured dtype, shape [n, L], ids in 0..num_items; the
optional per-user parameters [n, H] of their dtype, finite; zeros when absent = the zero-shot
answer). The valid requests are grouped by length bucket (config parameter ``length_buckets``);
each group is left-padded to its bucket's FIXED width and run as one call. A request's answer
therefore depends only on its own rows and its own bucket, never on the lengths of its
batch-mates.
With ``strict_buckets`` a length that is not itself a bucket is refused (the contract of the
native gpu target, where the client pads to a bucket). A bad request gets a Triton error
response; the others are answered. Nothing raises out of ``execute``.

The checks, bucketing and splitting are pure functions (no Triton import), unit-tested directly;
the real Triton path is exercised by the end-to-end tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

# file names and the padding index: a copy of fsrec_serve.contract's values (this file runs inside
# the stub without the package); a unit test checks it. Tensor names and types: the model config.
META_FILE = "fsrec_meta.json"
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.pt"
PAD_INDEX = 0
RUNTIMES = ("onnxruntime", "torch")


class Tensor(NamedTuple):
    """One input or output as config.pbtxt declares it."""

    name: str
    dtype: str  # numpy dtype name, e.g. "int64"
    triton: str  # Triton data type, e.g. "INT64"


# -- pure functions (unit-tested) ---------------------------------------------------------------
def _names(entries) -> list:
    return [e.get("name") for e in entries]


def tensors_of(model_config: dict, to_numpy) -> tuple:
    """The model config (JSON form) -> (histories, per-user parameters or None, items, scores) as
    :class:`Tensor` s, by position. ``to_numpy``: ``pb_utils.triton_string_to_numpy``. Raises
    ValueError naming what the config declares when it does not fit this model."""
    inputs, outputs = list(model_config.get("input") or []), list(model_config.get("output") or [])
    if not 1 <= len(inputs) <= 2 or len(outputs) != 2:
        raise ValueError(
            f"config.pbtxt declares inputs {_names(inputs)} and outputs {_names(outputs)}; this model reads "
            "[histories, optional per-user parameters] and answers [items, scores], in that order: "
            "rebuild the repository with `fsrec repository`")

    def tensor(entry: dict) -> Tensor:
        data_type = str(entry.get("data_type", ""))
        try:
            dtype = np.dtype(to_numpy(data_type)).name
        except (KeyError, TypeError):
            raise ValueError(f"config.pbtxt: tensor {entry.get('name')!r} has data_type {data_type!r}, "
                             "which is not a Triton data type") from None
        return Tensor(str(entry["name"]), dtype, data_type.replace("TYPE_", "", 1))

    ins, outs = [tensor(e) for e in inputs], [tensor(e) for e in outputs]
    return ins[0], (ins[1] if len(ins) > 1 else None), outs[0], outs[1]


def fill_left(out, arrays, rows, put=None):
    """Write each request's [rows_i, L_i] array into its rows of ``out`` [sum rows, W],
    right-aligned (``out`` starts as padding, so each row ends up left-padded); None leaves the
    request's rows as they are. numpy or torch alike (``put`` moves a torch tensor to the device).
    The stub has no fsrec_serve, so this model pads here rather than with
    ``fsrec_serve.idmap.pad_left``, and pads whole request arrays rather than lists."""
    width, r = int(out.shape[1]), 0
    for a, k in zip(arrays, rows):
        if a is not None:
            out[r:r + k, width - int(a.shape[1]):] = a if put is None else put(a)
        r += k
    return out


def _dtype(a) -> str:
    return str(a.dtype).replace("torch.", "")


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "ndim") and not isinstance(a, type)


def _array_problem(a, tensor: Tensor) -> str | None:
    """The checks every input starts with: present, an array, the configured dtype."""
    if a is None:
        return f"input '{tensor.name}' is missing"
    if not _is_array(a):
        return f"input '{tensor.name}' is not an array"
    if _dtype(a) != tensor.dtype:
        return f"input '{tensor.name}' must be {tensor.triton}, got {_dtype(a)}"
    return None


def validate_item_ids(arr, tensor: Tensor, max_seq_len: int, num_items: int, buckets=(),
                      strict: bool = False) -> str | None:
    """None when ``arr`` is a valid batch of histories for the input ``tensor``, else a message
    naming the problem.

    Valid: an array (numpy or torch) of the tensor's dtype and shape [n, L] with n >= 1,
    1 <= L <= max_seq_len (L in ``buckets`` when ``strict``) and every id in 0..num_items
    (0 = padding; indices, not raw ids).
    """
    problem = _array_problem(arr, tensor)
    if problem:
        return problem
    name, shape = tensor.name, [int(d) for d in arr.shape]
    if len(shape) != 2 or shape[0] < 1:
        return f"input '{name}' must have shape [n, L] (n >= 1 histories), got {shape}"
    length = shape[1]
    if not 1 <= length <= max_seq_len:
        return (f"input '{name}' has history length {length}; this model reads 1..{max_seq_len} "
                f"items (send the newest {max_seq_len}, at least one)")
    if strict and buckets and length not in buckets:
        return (f"input '{name}' has history length {length}, which is not one of the model's "
                f"length buckets {list(buckets)}: left-pad to the next bucket (the fsrec client does)")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > num_items:
        bad = lo if lo < 0 else hi
        return (f"input '{name}' holds item index {bad} outside 0..{num_items} "
                "(0 = padding; map raw ids with the model's item_map.json)")
    return None


def _all_finite(a) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.isfinite(a).all())
    import torch  # a torch tensor (gpu-python runtime)

    return bool(torch.isfinite(a).all())


def validate_user_params(params, tensor: Tensor, n_rows: int, dim: int) -> str | None:
    """None when ``params`` is absent (zeros are used) or a finite [n_rows, dim] array of the
    input ``tensor``'s dtype."""
    if params is None:
        return None
    name = tensor.name
    if dim <= 0:
        return f"input '{name}' was sent, but this model version has no per-user parameters"
    problem = _array_problem(params, tensor)
    if problem:
        return problem
    shape = [int(d) for d in params.shape]
    if shape != [n_rows, dim]:
        return f"input '{name}' must have shape [{n_rows}, {dim}] (one row of {dim} per history), got {shape}"
    if not _all_finite(params):
        return f"input '{name}' holds NaN or infinite values: send finite per-user parameters"
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

    def __init__(self, version_dir: Path, params: dict, pb, io: tuple, device_id: str = "0"):
        import onnxruntime as ort

        path = version_dir / ONNX_FILE
        if not path.exists():
            raise pb.TritonModelException(
                f"{path} is missing: build the version with `fsrec repository` "
                "(exporters.repository.build_model_repository)")
        self.session = ort.InferenceSession(str(path), sess_options=session_options_from(params),
                                            providers=["CPUExecutionProvider"])
        self.histories, params_in, self.items, self.scores = io
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [t.name for t in (self.histories, params_in) if t is not None and t.name not in shapes]
        missing += [t.name for t in (self.items, self.scores) if t.name not in outputs]
        if missing:
            raise pb.TritonModelException(
                f"config.pbtxt names {missing}, which the graph {path} does not have (its inputs "
                f"{list(shapes)}, outputs {outputs}): the config and the graph come from different exports; "
                "rebuild the repository with `fsrec repository`")
        # the graph's other input takes the per-user parameters (zeros where the config has none)
        others = [n for n in shapes if n != self.histories.name]
        self.params_name = params_in.name if params_in is not None else (others[0] if others else None)
        self.params_dtype = params_in.dtype if params_in is not None else "float32"
        dim = shapes[self.params_name][1] if self.params_name else 0
        self.user_params_dim = int(dim) if isinstance(dim, int) else 0

    @staticmethod
    def read(pb, request, name):
        t = pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def run(self, ids_list, params_list, width: int):
        """Requests' histories [n_i, L_i] (+ per-user parameters [n_i, H] or None) -> outputs of all rows."""
        rows = [int(a.shape[0]) for a in ids_list]
        x = np.full((sum(rows), width), PAD_INDEX, dtype=self.histories.dtype)
        feed = {self.histories.name: fill_left(x, ids_list, rows)}
        if self.user_params_dim:
            up = np.zeros((sum(rows), self.user_params_dim), dtype=self.params_dtype)
            feed[self.params_name] = fill_left(up, params_list, rows)
        return self.session.run([self.items.name, self.scores.name], feed)

    def tensors(self, pb, part):
        return [pb.Tensor(t.name, np.ascontiguousarray(a, dtype=t.dtype))
                for t, a in zip((self.items, self.scores), part)]


class _TorchRuntime:
    """torch in/out through DLPack (no numpy: numpy 2 empties python-backend responses)."""

    name = "torch"

    def __init__(self, version_dir: Path, params: dict, pb, io: tuple, device_id: str = "0"):
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
        histories, params_in, items, scores = io
        self.ids_dtype = getattr(torch, histories.dtype)
        self.params_dtype = getattr(torch, params_in.dtype if params_in is not None else "float32")
        self.outputs = [(t.name, getattr(torch, t.dtype)) for t in (items, scores)]

    def read(self, pb, request, name):
        t = pb.get_input_tensor_by_name(request, name)
        return None if t is None else self.torch.from_dlpack(t.to_dlpack())

    def _to_device(self, a):
        return a.to(self.device, non_blocking=True)

    def run(self, ids_list, params_list, width: int):
        torch = self.torch
        rows = [int(a.shape[0]) for a in ids_list]
        x = torch.full((sum(rows), width), PAD_INDEX, dtype=self.ids_dtype, device=self.device)
        up = torch.zeros((sum(rows), max(1, self.user_params_dim)), dtype=self.params_dtype, device=self.device)
        x, up = fill_left(x, ids_list, rows, self._to_device), fill_left(up, params_list, rows, self._to_device)
        with torch.inference_mode():
            items, scores = self.module(x, up)
        return items, scores

    def tensors(self, pb, part):
        dlpack = self.torch.utils.dlpack.to_dlpack
        return [pb.Tensor.from_dlpack(name, dlpack(a.to(dtype).contiguous()))
                for (name, dtype), a in zip(self.outputs, part)]


# -- the Triton model ----------------------------------------------------------------------------
class TritonPythonModel:
    """Triton python-backend entry point (see the module docstring)."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils  # provided by the stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        params = read_parameters(config)
        try:
            io = tensors_of(config, pb_utils.triton_string_to_numpy)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        self.histories, self.params_input = io[0], io[1]
        runtime = params.get("runtime", "onnxruntime") or "onnxruntime"
        if runtime not in RUNTIMES:
            raise pb_utils.TritonModelException(f"parameter runtime={runtime!r}: choose one of {RUNTIMES}")
        self.runtime = (_OrtRuntime if runtime == "onnxruntime" else _TorchRuntime)(
            version_dir, params, pb_utils, io, str(args.get("model_instance_device_id", "0")))
        meta = json.loads((version_dir / META_FILE).read_text())
        self.num_items = int(meta["num_items"])
        self.seq_len = int(meta["max_seq_len"])
        dims = [int(d) for d in config["input"][0]["dims"]]
        if dims not in ([-1], [self.seq_len]):
            raise pb_utils.TritonModelException(
                f"config.pbtxt declares {self.histories.name} dims {dims} but the graph of version "
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
        """-> (histories list, per-user parameters list, errors list), one entry per request."""
        ids, params, errors = [], [], []
        hist, up = self.histories, self.params_input
        for r in requests:
            a = p = err = None
            try:
                a = self.runtime.read(self._pb, r, hist.name)
                err = validate_item_ids(a, hist, self.seq_len, self.num_items, self.buckets, self.strict)
                if err is None and up is not None:
                    p = self.runtime.read(self._pb, r, up.name)
                    err = validate_user_params(p, up, int(a.shape[0]), self.user_params_dim)
            except Exception as e:  # noqa: BLE001 - a malformed request must not sink the batch
                err = err or f"input '{hist.name}' could not be read: {e}"
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
