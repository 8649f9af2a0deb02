"""Triton python-backend model: 2-3 FsRec rankers fused into one ranked list, in one call.

Copied verbatim into ``<repo>/<model>/<version>/model.py`` by
``exporters.ensemble.build_ensemble_repository``. The version folder holds one graph per member
(``member_0.onnx``, ``member_1.onnx``, ...: the member's exported graph with its masked
next-item scores [B, N] added as an output), the shared ``item_map.json`` and
``fsrec_meta.json`` (``members``: each member's source and limits).

Same contract as the single ranker (``fsrec_serve.contract``): ``item_ids`` [n, L] int64 in
(ragged, one history per row, 1 <= L <= max_seq_len), ``top_items`` / ``top_scores`` [n, K] out.
Tensor names and data types come from ``args["model_config"]`` by position, as the ranker's
``model.py`` reads them (its pure helpers are reused: request checks, length buckets, padding,
splitting). Each length bucket of the dynamic batch runs every member's ONNX Runtime session on
the same padded array; the members' scores are fused here (:func:`fuse`, rule = config
parameter ``fusion``) and the top K taken (:func:`top_k`). The in-process
``exporters.ensemble.EnsembleScorer`` calls the same two functions, so a served answer and an
in-process one rank alike.

Runs inside the stub with the project's environment (``EXECUTION_ENV_PATH``), like the front
models: it imports numpy, onnxruntime and ``exporters.triton_python.model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# the score of items that must never be recommended, as fsrec_serve.contract.MASK_VALUE (a unit
# test checks the copy); a fused score at or under half of it marks a masked item
MASK_VALUE = -1.0e4
FUSIONS = ("mean-logprob", "rrf")  # the fusion rules; the first is the default
DEFAULT_RRF_K = 60.0  # reciprocal-rank fusion's constant (Cormack et al. 2009)
MEMBER_FILE = "member_{}.onnx"  # member i's graph inside the version folder
MEMBER_SCORES = "member_scores"  # the added output of a member graph: masked scores [B, N]
FILLER_ITEM = -1  # top_items value of an empty slot (fewer than K recommendable items)


# -- pure functions (unit-tested) ---------------------------------------------------------------
def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of [B, N] scores (float64 inside, float32 out)."""
    s = np.asarray(scores, dtype=np.float64)
    m = s.max(axis=1, keepdims=True)
    return (s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))).astype(np.float32)


def reciprocal_ranks(scores: np.ndarray, k: float = DEFAULT_RRF_K) -> np.ndarray:
    """[B, N] scores -> 1 / (k + rank) with rank 1 = the row's best (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, order.shape[1] + 1)[None, :], axis=1)
    return (1.0 / (float(k) + ranks)).astype(np.float32)


def fuse(member_scores, rule: str = FUSIONS[0], rrf_k: float = DEFAULT_RRF_K) -> np.ndarray:
    """Members' masked scores (a list of [B, N]) -> fused scores [B, N] float32.

    ``mean-logprob``: the mean over members of log-softmax over the catalogue (the log of the
    members' geometric-mean next-item distribution, up to a per-row constant). ``rrf``: the sum
    over members of 1 / (rrf_k + rank). An item masked by any member (its score at or under
    MASK_VALUE / 2: padding, the user's own history) stays at MASK_VALUE.
    """
    if rule not in FUSIONS:
        raise ValueError(f"fusion rule {rule!r}: choose one of {FUSIONS}")
    arrays = [np.asarray(s, dtype=np.float32) for s in member_scores]
    if not arrays or any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"member scores must be [B, N] arrays of one shape, got {[a.shape for a in arrays]}")
    masked = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        masked |= a <= MASK_VALUE * 0.5
    if rule == "rrf":
        fused = np.sum([reciprocal_ranks(a, rrf_k) for a in arrays], axis=0)
    else:
        fused = np.mean([log_softmax(a) for a in arrays], axis=0)
    fused = fused.astype(np.float32)
    fused[masked] = MASK_VALUE
    return fused


def top_k(fused: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, N] fused scores -> (items int64 [B, k], scores float32 [B, k]), best first, ties by
    the lower index; masked items become FILLER_ITEM (score MASK_VALUE)."""
    fused = np.asarray(fused, dtype=np.float32)
    k = min(int(k), fused.shape[1])
    part = np.argpartition(-fused, k - 1, axis=1)[:, :k] if k < fused.shape[1] else \
        np.tile(np.arange(fused.shape[1]), (fused.shape[0], 1))
    vals = np.take_along_axis(fused, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)  # by score, then by index
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    scores = np.take_along_axis(vals, order, axis=1)
    filler = scores <= MASK_VALUE * 0.5
    items[filler], scores[filler] = FILLER_ITEM, MASK_VALUE
    return items, scores


# -- the Triton model ----------------------------------------------------------------------------
class TritonPythonModel:
    """Triton python-backend entry point (see the module docstring)."""

    def initialize(self, args):
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils  # provided by the stub

        from exporters.triton_python import model as ranker

        self._pb, self._r = pb_utils, ranker
        config = json.loads(args["model_config"])
        vdir = Path(args["model_repository"]) / str(args["model_version"])
        params = ranker.read_parameters(config)
        try:
            self.histories, _, self.items, self.scores = ranker.tensors_of(config, pb_utils.triton_string_to_numpy)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        self.rule = params.get("fusion", FUSIONS[0]) or FUSIONS[0]
        if self.rule not in FUSIONS:
            raise pb_utils.TritonModelException(f"parameter fusion={self.rule!r}: choose one of {FUSIONS}")
        self.rrf_k = float(params.get("rrf_k", DEFAULT_RRF_K) or DEFAULT_RRF_K)
        meta = json.loads((vdir / ranker.META_FILE).read_text())
        self.num_items, self.seq_len = int(meta["num_items"]), int(meta["max_seq_len"])
        self.k = int(config["output"][0]["dims"][0])
        opts = ranker.session_options_from(params)
        self.sessions = []
        for i in range(len(meta.get("members") or [])):
            path = vdir / MEMBER_FILE.format(i)
            if not path.exists():
                raise pb_utils.TritonModelException(f"{path} is missing: rebuild with `fsrec ensemble`")
            self.sessions.append(ort.InferenceSession(str(path), sess_options=opts,
                                                      providers=["CPUExecutionProvider"]))
        if not self.sessions:
            raise pb_utils.TritonModelException(f"{vdir / ranker.META_FILE} lists no members: rebuild with "
                                                "`fsrec ensemble`")
        self.buckets = ranker.parse_buckets(params.get("length_buckets", ""), self.seq_len)

    def _feed(self, session, x: np.ndarray) -> dict:
        feed = {self.histories.name: x}
        for i in session.get_inputs():  # the per-user parameters: zeros (the zero-shot answer)
            if i.name != self.histories.name:
                feed[i.name] = np.zeros((len(x), int(i.shape[1])), dtype=np.float32)
        return feed

    def run(self, ids_list, width: int):
        """Requests' histories [n_i, L_i] -> (items, scores) of all rows, fused."""
        rows = [int(a.shape[0]) for a in ids_list]
        x = np.full((sum(rows), width), 0, dtype=self.histories.dtype)
        x = self._r.fill_left(x, ids_list, rows)
        member = [s.run([MEMBER_SCORES], self._feed(s, x))[0] for s in self.sessions]
        return top_k(fuse(member, self.rule, self.rrf_k), self.k)

    def _error(self, message: str):
        pb = self._pb
        return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))

    def execute(self, requests):
        pb, r = self._pb, self._r
        ids, errors = [], []
        for req in requests:
            a = err = None
            try:
                t = pb.get_input_tensor_by_name(req, self.histories.name)
                a = None if t is None else t.as_numpy()
                err = r.validate_item_ids(a, self.histories, self.seq_len, self.num_items, self.buckets)
            except Exception as e:  # noqa: BLE001 - a malformed request must not sink the batch
                err = f"input '{self.histories.name}' could not be read: {e}"
            ids.append(a)
            errors.append(err)
        parts = [None] * len(requests)
        lengths = [int(a.shape[1]) if e is None else None for a, e in zip(ids, errors)]
        for width, members in r.plan_groups(lengths, self.buckets):
            try:
                outs = self.run([ids[i] for i in members], width)
                for i, part in zip(members, r.split_outputs(outs, [int(ids[i].shape[0]) for i in members])):
                    parts[i] = part
            except Exception as e:  # noqa: BLE001 - answer every request of the group with the failure
                for i in members:
                    errors[i] = f"ensemble failed on the batch: {e}"
        out = []
        for err, part in zip(errors, parts):
            if err is not None or part is None:
                out.append(self._error(err or "request was not processed"))
                continue
            out.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor(t.name, np.ascontiguousarray(a, dtype=t.dtype))
                for t, a in zip((self.items, self.scores), part)]))
        return out

    def finalize(self):
        self.sessions = []
