"""Running an exported FsRec graph with ONNX Runtime in-process (validation, guard, bench).

An *export directory* holds ``model.onnx`` (the graph), ``config.json`` (the FsRecConfig),
``item_map.json`` (raw id <-> index, when the model has one) and ``fsrec_meta.json``
(:class:`ExportMeta`). Every function here takes such a directory or a ``model.onnx`` path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fsrec_serve.contract import (
    INPUT_ITEM_IDS,
    INPUT_USER_PARAMS,
    ITEM_IDS_DTYPE,
    ITEM_MAP_FILE,
    MASK_VALUE,
    META_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    SCORE_DTYPE,
)
from fsrec_serve.errors import ConfigError, ExportError

HF_CONFIG_FILE = "config.json"  # the FsRecConfig (Hugging Face) beside model.onnx
TORCH_FILE = "model.pt"  # TorchScript trace of the same graph (the gpu-python target runs it)


@dataclass
class ExportMeta:
    """What serving needs to know about an exported graph (``fsrec_meta.json``)."""

    max_seq_len: int  # longest served history (item_ids is [B, L], L = 1..max_seq_len)
    max_top_k: int  # width of ``top_items`` / ``top_scores``
    num_items: int  # real items; valid ids are 0 (padding) .. num_items
    objective: str  # "cloze" or "causal" (how the graph reads the history)
    precision: str = "fp32"  # "fp32", "fp32-opt", "int8-static", "int8-weight-only", "fp16", ...
    source: str = ""  # where the weights came from (checkpoint dir, adapter, ...)
    opset: int = 17  # ONNX opset of the graph
    mask_value: float = MASK_VALUE  # score given to masked items (history, padding)
    # width H of the graph's optional ``user_params`` input [B, H] (0 = an older graph without it)
    user_params_dim: int = 0
    # hash of the exported weights (fsrec_serve.model.model_fingerprint): per-user parameters are
    # served only by the version whose fingerprint they were fitted on ("" = unknown: none are)
    fingerprint: str = ""
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


def export_dir(path: str | Path) -> Path:
    """``dir`` or ``dir/model.onnx`` -> the export directory (its ``model.onnx`` checked to exist)."""
    p = Path(path)
    p = p.parent if p.suffix == ".onnx" else p
    onnx_path(p)  # raises a clear error when missing
    return p


def derived_dir(src: Path, tag: str, output_dir: str | Path | None) -> Path:
    """The output directory of a derived graph: ``output_dir`` or ``<src>-<tag>`` (created)."""
    out = Path(output_dir) if output_dir is not None else src.parent / f"{src.name}-{tag}"
    if out.resolve() == src.resolve():
        raise ConfigError(f"output_dir must differ from the source export directory {src}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def copy_side_files(src: Path, dst: Path, precision: str, extra: dict) -> ExportMeta:
    """Copy config.json / item_map.json and write fsrec_meta.json with the new precision."""
    for name in (HF_CONFIG_FILE, ITEM_MAP_FILE):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    meta = ExportMeta.load(src)
    meta.precision = precision
    meta.extra = {**meta.extra, **extra, "derived_from": str(src)}
    meta.save(dst)
    return meta


def as_histories(items) -> list[list[int]]:
    """Accepts index lists or objects with a ``.history`` (data ``Example``) -> index lists."""
    out = []
    for x in items:
        h = getattr(x, "history", x)
        out.append([int(i) for i in h])
    return out


@dataclass
class IndexTranslation:
    """Between a reference export and a candidate serving a sub-catalogue (catalogue pruning):
    ``to_candidate`` [reference N + 1] reference index -> candidate index (0 = not served),
    ``to_reference`` [candidate N] candidate index -> reference index."""

    to_candidate: np.ndarray
    to_reference: np.ndarray

    def histories(self, histories) -> list[list[int]]:
        """Reference-index histories -> candidate-index histories, unserved items dropped (what
        a client does with the ids the candidate's item map does not know)."""
        return [[int(j) for j in self.to_candidate[np.asarray(h, dtype=np.int64)] if j] for h in histories]

    def items(self, top_items: np.ndarray) -> np.ndarray:
        """Candidate top_items [B, K] -> reference indices (filler -1 kept)."""
        return np.where(top_items >= 0, self.to_reference[np.clip(top_items, 0, None)], top_items)


def index_translation(candidate_dir: str | Path, reference_dir: str | Path) -> IndexTranslation | None:
    """The translation from a reference export's item indices to a candidate's, or None when
    both serve the same catalogue (same item map, or neither has one)."""
    from fsrec_serve.idmap import IdMap

    cand, ref = Path(candidate_dir) / ITEM_MAP_FILE, Path(reference_dir) / ITEM_MAP_FILE
    if not cand.exists() or not ref.exists():
        if ExportMeta.load(candidate_dir).num_items != ExportMeta.load(reference_dir).num_items:
            raise ExportError(f"{candidate_dir} and {reference_dir} serve catalogues of different sizes but "
                              f"one has no {ITEM_MAP_FILE} to translate ids with: re-export both")
        return None
    cm, rm = IdMap.load(cand), IdMap.load(ref)
    if cm == rm:
        return None
    to_ref = np.zeros(len(cm) + 1, dtype=np.int64)
    to_cand = np.zeros(len(rm) + 2, dtype=np.int64)  # + [MASK]
    for j, raw in enumerate(cm.raw_ids, start=1):
        if raw not in rm:
            raise ExportError(f"{candidate_dir} serves item {raw!r}, unknown to {reference_dir}: a candidate "
                              "may serve a sub-catalogue of its reference only (prune from the same model)")
        to_ref[j] = rm.index(raw)
        to_cand[to_ref[j]] = j
    return IndexTranslation(to_candidate=to_cand, to_reference=to_ref)


def user_params_dim(session) -> int:
    """Width H of the session's ``user_params`` input (0 when the graph has none)."""
    for i in session.get_inputs():
        if i.name == INPUT_USER_PARAMS:
            return int(i.shape[1]) if isinstance(i.shape[1], int) else 0
    return 0


def feeds(session, item_ids: np.ndarray, user_params: np.ndarray | None = None) -> dict:
    """The ONNX Runtime input dict of a graph: ``item_ids`` [B, L] and, when the graph has the
    ``user_params`` input, the given [B, H] offsets or zeros (= the zero-shot answer)."""
    x = np.ascontiguousarray(item_ids, dtype=ITEM_IDS_DTYPE)
    out = {INPUT_ITEM_IDS: x}
    h = user_params_dim(session)
    if h:
        out[INPUT_USER_PARAMS] = (np.zeros((len(x), h), dtype=SCORE_DTYPE) if user_params is None
                                  else np.ascontiguousarray(user_params, dtype=SCORE_DTYPE))
    elif user_params is not None:
        raise ExportError("this graph has no user_params input: re-export the model with `fsrec export`")
    return out


def run_topk(session, item_ids: np.ndarray, batch_size: int = 64,
             user_params: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """item_ids int64 [B, L] (+ optional user_params float32 [B, H]) -> (top_items int64 [B, K],
    top_scores float32 [B, K]), in chunks of ``batch_size``."""
    items, scores = [], []
    for s in range(0, len(item_ids), max(1, batch_size)):
        up = None if user_params is None else user_params[s:s + batch_size]
        it, sc = session.run(list(OUTPUT_NAMES), feeds(session, item_ids[s:s + batch_size], up))
        items.append(it)
        scores.append(sc.astype(np.float32))
    if not items:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(items), np.concatenate(scores)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-row share of ``a``'s top-k items that are also in ``b``'s top-k ([B])."""
    return np.array([len(set(x[:k].tolist()) & set(y[:k].tolist())) / k for x, y in zip(a, b)])


def versions(model_dir: str | Path, with_model: bool = True) -> list[int]:
    """Numeric version folders of a model (only those holding model.onnx when ``with_model``)."""
    d = Path(model_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if p.is_dir() and p.name.isdigit() and (not with_model or (p / ONNX_FILE).exists()):
            out.append(int(p.name))
    return sorted(out)
