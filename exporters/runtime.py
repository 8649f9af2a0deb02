"""Running an exported FsRec graph with ONNX Runtime in-process (validation, guard, bench).

An *export directory* holds ``model.onnx`` (the graph), ``config.json`` (the FsRecConfig),
``item_map.json`` (raw id <-> index, when the model has one) and ``fsrec_meta.json``
(:class:`ExportMeta`). Every function here takes such a directory or a ``model.onnx`` path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fsrec_serve.errors import ExportError

ONNX_FILE = "model.onnx"
META_FILE = "fsrec_meta.json"
CONFIG_FILE = "config.json"
ITEM_MAP_FILE = "item_map.json"


@dataclass
class ExportMeta:
    """What serving needs to know about an exported graph (``fsrec_meta.json``)."""

    max_seq_len: int  # width of the served ``item_ids`` input (client pads to this length)
    max_top_k: int  # width of ``top_items`` / ``top_scores``
    num_items: int  # real items; valid ids are 0 (padding) .. num_items
    objective: str  # "cloze" or "causal" (how the graph reads the history)
    precision: str = "fp32"  # "fp32", "fp32-opt", "int8-static", "int8-weight-only", "fp16", ...
    source: str = ""  # where the weights came from (checkpoint dir, adapter, ...)
    opset: int = 17  # ONNX opset of the graph
    mask_value: float = -1.0e4  # score given to masked items (history, padding)
    extra: dict = field(default_factory=dict)  # free-form provenance (quantization preset, ...)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / META_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ExportMeta":
        path = Path(directory)
        path = path / META_FILE if path.is_dir() else path.parent / META_FILE
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ExportError(
                f"{path} is missing: export the model with `fsrec export` (export_onnx) first"
            ) from None
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def onnx_path(path: str | Path) -> Path:
    """``dir`` or ``dir/model.onnx`` -> the ``model.onnx`` path (checked to exist)."""
    p = Path(path)
    if p.is_dir():
        p = p / ONNX_FILE
    if not p.exists():
        raise ExportError(f"{p} does not exist: export the model with `fsrec export` first")
    return p


def make_session(path: str | Path, intra_op_threads: int = 0, inter_op_threads: int = 1,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session on ``path`` (0 threads = ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(intra_op_threads)
    so.inter_op_num_threads = int(inter_op_threads)
    so.log_severity_level = 3  # errors only (fp16 graphs on CPU log a fallback warning per node)
    return ort.InferenceSession(str(onnx_path(path)), sess_options=so, providers=list(providers))


def pad_left(histories: Iterable[Sequence[int]], max_len: int) -> np.ndarray:
    """Index histories (newest last) -> int64 [B, max_len], left-padded with 0, newest kept."""
    histories = list(histories)
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for i, h in enumerate(histories):
        h = list(h)[-max_len:]
        if h:
            out[i, max_len - len(h):] = np.asarray(h, dtype=np.int64)
    return out


def as_histories(items) -> list[list[int]]:
    """Accepts index lists or objects with a ``.history`` (data ``Example``) -> index lists."""
    out = []
    for x in items:
        h = getattr(x, "history", x)
        out.append([int(i) for i in h])
    return out


def run_topk(session, item_ids: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """item_ids int64 [B, L] -> (top_items int64 [B, K], top_scores float32 [B, K]), in chunks."""
    items, scores = [], []
    for s in range(0, len(item_ids), max(1, batch_size)):
        it, sc = session.run(["top_items", "top_scores"], {"item_ids": item_ids[s:s + batch_size]})
        items.append(it)
        scores.append(sc.astype(np.float32))
    if not items:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(items), np.concatenate(scores)


def ndcg_at_k_from_topk(top_items: np.ndarray, targets: Sequence[int], k: int = 10) -> np.ndarray:
    """Per-user NDCG@k of one target item given the served top list ([B, K], best first)."""
    t = np.asarray(targets, dtype=np.int64)[:, None]
    hit = top_items[:, :k] == t  # [B, k]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return np.where(rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-row share of ``a``'s top-k items that are also in ``b``'s top-k ([B])."""
    return np.array([len(set(x[:k].tolist()) & set(y[:k].tolist())) / k for x, y in zip(a, b)])
