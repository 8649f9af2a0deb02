"""Ensembles: 2-3 rankers (seeds and/or objectives) fused into one ranked list.

:class:`EnsembleScorer` is the in-process form: it has the evaluation protocol's scorer interface
(``next_item_scores(history_ids [B, L]) -> [B, N]``), so ``evaluate_next_item`` scores it like
any model. Its members are FsRec models (``FsRecModel``) or exported graphs
(:class:`OnnxMember`); they must share the item map. Each member's scores have the user's
history and the padding masked (as the served graph masks them), then the members are fused by
``exporters.triton_python.ensemble_model.fuse`` — the very function the served ensemble calls
(``exporters.ensemble_repository.build_ensemble_repository``):

- ``mean-logprob`` (default): the mean of the members' log-softmax over the catalogue, i.e. the
  log of their geometric-mean next-item distribution. It keeps each member's confidence, has no
  constant to tune and costs one pass over the scores (no sort);
- ``rrf``: reciprocal-rank fusion, sum of 1 / (rrf_k + rank). Rank-only: robust when members'
  scores have very different scales, at the price of a full sort per member and row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fsrec_serve.contract import ITEM_MAP_FILE, MASK_VALUE
from fsrec_serve.errors import ConfigError, ExportError
from fsrec_serve.idmap import IdMap

from .runtime import ExportMeta, export_dir, onnx_path
from .triton_python.ensemble_model import DEFAULT_RRF_K, FUSIONS, MEMBER_SCORES, fuse

MAX_MEMBERS = 3  # members of one ensemble (each one adds a full forward pass per request)


def _label(member, i: int) -> str:
    return str(getattr(member, "source", "") or f"member {i}")


def _max_len(member) -> int:
    cfg = getattr(member, "config", None)
    return int(getattr(cfg, "max_seq_len", 0) or getattr(member, "max_seq_len", 0))


def _num_items(member) -> int:
    cfg = getattr(member, "config", None)
    return int(getattr(cfg, "num_items", 0) or getattr(member, "num_items", 0))


def check_members(members: Sequence, min_members: int = 1) -> None:
    """Refuse members that cannot be fused: too few or too many, or not sharing one item map
    (the same raw id at the same index, as ``item_map.json``). The error names the mismatch."""
    if not min_members <= len(members) <= MAX_MEMBERS:
        raise ConfigError(f"an ensemble has {min_members}..{MAX_MEMBERS} members, got {len(members)}")
    ref, ref_map, ref_n = _label(members[0], 0), getattr(members[0], "item_map", None), _num_items(members[0])
    for i, m in enumerate(members[1:], start=1):
        other, m_map, n = _label(m, i), getattr(m, "item_map", None), _num_items(m)
        if n != ref_n:
            raise ConfigError(f"{other} scores {n} items but {ref} scores {ref_n}: ensemble members must share "
                              "the item map (train them on the same splits)")
        if (m_map is None) != (ref_map is None):
            has, lacks = (ref, other) if m_map is None else (other, ref)
            raise ConfigError(f"{has} has an item map but {lacks} has none: ensemble members must share the item "
                              f"map ({ITEM_MAP_FILE})")
        if m_map is not None and m_map != ref_map:
            a, b = ref_map.raw_ids, m_map.raw_ids
            j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise ConfigError(f"{other} and {ref} have different item maps (index {j + 1}: "
                              f"{b[j] if j < len(b) else None!r} vs {a[j] if j < len(a) else None!r}): ensemble "
                              f"members must share the item map ({ITEM_MAP_FILE})")


def mask_history(scores: torch.Tensor, history_ids: torch.Tensor) -> torch.Tensor:
    """[B, N] scores with the padding and every history item at MASK_VALUE (as the served graph)."""
    n = scores.shape[1]
    idx = torch.where((history_ids > 0) & (history_ids < n), history_ids, torch.zeros_like(history_ids))
    return scores.float().scatter(1, idx.long(), MASK_VALUE)


def member_graph(path: str | Path):
    """An exported graph with its masked next-item scores (the input of its TopK) added as the
    float32 output ``member_scores`` [B, N]."""
    import onnx

    model = onnx.load(str(onnx_path(path)))
    topk = [n for n in model.graph.node if n.op_type == "TopK"]
    if len(topk) != 1:
        raise ExportError(f"{onnx_path(path)} has {len(topk)} TopK nodes, expected 1: re-export the model "
                          "with `fsrec export`")
    cast = onnx.helper.make_node("Cast", [topk[0].input[0]], [MEMBER_SCORES], to=onnx.TensorProto.FLOAT,
                                 name="ensemble_member_scores")
    model.graph.node.append(cast)
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        MEMBER_SCORES, onnx.TensorProto.FLOAT, ["batch_size", "num_scores"]))
    return model


class OnnxMember:
    """An exported graph as an ensemble member: ``next_item_scores`` -> its masked scores [B, N]
    (the graph's scores before its top-K, from ``member_graph``)."""

    def __init__(self, path: str | Path, intra_op_threads: int = 1):
        import onnxruntime as ort

        self.export_dir = export_dir(path)
        meta = ExportMeta.load(self.export_dir)
        self.max_seq_len, self.num_items, self.meta = meta.max_seq_len, meta.num_items, meta
        self.source = str(self.export_dir)
        map_path = self.export_dir / ITEM_MAP_FILE
        self.item_map = IdMap.load(map_path) if map_path.exists() else None
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = int(intra_op_threads), 3
        self.session = ort.InferenceSession(member_graph(self.export_dir).SerializeToString(), sess_options=so,
                                            providers=["CPUExecutionProvider"])

    def next_item_scores(self, history_ids: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(np.asarray(history_ids, dtype=np.int64)[:, -self.max_seq_len:])
        feed = {}
        for i, inp in enumerate(self.session.get_inputs()):
            feed[inp.name] = x if i == 0 else np.zeros((len(x), int(inp.shape[1])), np.float32)
        return torch.from_numpy(self.session.run([MEMBER_SCORES], feed)[0])


class EnsembleScorer:
    """Members fused into one scorer: ``next_item_scores(history_ids [B, L]) -> [B, N]``.

    ``members``: FsRec models or :class:`OnnxMember` s sharing one item map (1..3; refused
    otherwise, naming the mismatch). ``fusion``: one of ``FUSIONS`` (module docstring).
    Histories longer than a member's ``max_seq_len`` are cut to its newest items.
    """

    def __init__(self, members: Sequence, fusion: str = FUSIONS[0], rrf_k: float = DEFAULT_RRF_K):
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
        check_members(list(members))
        self.members, self.fusion, self.rrf_k = list(members), fusion, float(rrf_k)
        self.item_map = getattr(self.members[0], "item_map", None)
        self.num_items = _num_items(self.members[0])
        self.max_seq_len = min(_max_len(m) for m in self.members)

    @classmethod
    def from_exports(cls, dirs: Sequence[str | Path], **kw) -> EnsembleScorer:
        """The ensemble of export directories (their graphs on ONNX Runtime, as served)."""
        return cls([OnnxMember(d) for d in dirs], **kw)

    def member_scores(self, history_ids: torch.Tensor) -> list[np.ndarray]:
        """Each member's masked scores [B, N] for left-padded histories [B, L]."""
        h = torch.as_tensor(history_ids).long().cpu()
        out = []
        with torch.inference_mode():
            for m in self.members:
                if isinstance(m, torch.nn.Module):
                    m.eval()
                L = _max_len(m) or h.shape[1]
                s = m.next_item_scores(h[:, -L:])
                out.append(mask_history(torch.as_tensor(s).cpu(), h).numpy())
        return out

    def next_item_scores(self, history_ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(fuse(self.member_scores(history_ids), self.fusion, self.rrf_k))


__all__ = ["FUSIONS", "MAX_MEMBERS", "EnsembleScorer", "OnnxMember", "check_members", "mask_history", "member_graph"]
