"""ONNX export of an FsRecModel through Hugging Face Optimum, validated against PyTorch.

The served graph (:class:`FsRecTopKModule`) does all the work on scores that serving would
otherwise do in Python:

    item_ids [B, L] int64 (left-padded or at its own length, newest last, 0 = padding;
             L = 1..max_seq_len, positions right-aligned)
    user_params [B, H] float32 (per-user offset of the user state; zeros = zero-shot)
      -> next-item scores [B, N] (FsRecModel.next_item_scores, N = num_items + 1)
      -> the user's own history (and padding) set to MASK_VALUE (ScatterElements)
      -> TopK -> top_items [B, K] int64, top_scores [B, K] float32 (best first)

If fewer than K items are left once the history is masked (only possible when
num_items - len(history) < K), the remaining slots hold ``top_items = -1`` with
``top_scores = MASK_VALUE``; clients drop them. Padding (0) and [MASK] are never returned.

Export path: ``FsRecOnnxConfig`` (a ``BertOnnxConfig`` subclass)
-> ``optimum.exporters.onnx.export`` -> ``optimum.exporters.onnx.validate_model_outputs``
(dummy histories, atol) -> :func:`validate_export` on real held-out histories.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fsrec_serve.contract import (
    BATCH_AXIS,
    DEFAULT_MAX_TOP_K,
    ITEM_MAP_FILE,
    MASK_VALUE,
    ONNX_FILE,
    OUTPUT_NAMES,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    PAD_INDEX,
    SEQUENCE_AXIS,
)
from fsrec_serve.errors import ConfigError, ExportError, ExportValidationError
from fsrec_serve.idmap import pad_left
from fsrec_serve.model import FsRecModel, model_fingerprint

from .onnx_config import FsRecOnnxConfig
from .runtime import (
    HF_CONFIG_FILE,
    TORCH_FILE,
    ExportMeta,
    as_histories,
    make_session,
    run_topk,
)

logger = logging.getLogger(__name__)

FILLER_ITEM = -1  # top_items value of an empty slot (fewer than K recommendable items)


class ExportDriftWarning(UserWarning):
    """The export reproduces PyTorch, but with more drift than the tolerance asked for."""


class FsRecTopKModule(nn.Module):
    """The served graph: (history, per-user parameters) -> masked next-item scores -> top-K.

    ``config`` is the wrapped model's FsRecConfig (Optimum reads it); the module holds no
    weights of its own. ``last_position_only`` runs the last transformer block for the scored
    position only (:meth:`FsRecModel.user_state`: same scores, about 40 % fewer FLOPs for a
    2-block model); ``False`` traces the full encoder. Exactness is checked like any export
    (Optimum's check and :func:`validate_export`).
    """

    def __init__(self, model: FsRecModel, max_top_k: int = DEFAULT_MAX_TOP_K, last_position_only: bool = False):
        super().__init__()
        n = int(model.config.num_items)
        if not 1 <= max_top_k <= n:
            raise ConfigError(
                f"max_top_k={max_top_k} must be in 1..num_items ({n}); lower --max-top-k"
            )
        self.model = model
        self.config = model.config
        self.max_top_k = int(max_top_k)
        self.last_position_only = bool(last_position_only)

    def masked_scores(self, item_ids: torch.Tensor, user_params: torch.Tensor | None = None) -> torch.Tensor:
        """item_ids [B, L], user_params [B, H] or None -> scores [B, N] with padding and every
        history item at MASK_VALUE."""
        scores = self.model.next_item_scores(item_ids, user_params, last_position_only=self.last_position_only)
        n_cols = scores.shape[1]
        # ids outside the score table ([MASK] = num_items + 1, or anything invalid) go to the
        # padding column, which is masked anyway; valid ids mask their own column
        valid = (item_ids > PAD_INDEX) & (item_ids < n_cols)
        idx = torch.where(valid, item_ids, torch.full_like(item_ids, PAD_INDEX))  # [B, L]
        return scores.scatter(1, idx, MASK_VALUE)

    def forward(self, item_ids: torch.Tensor, user_params: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scores = self.masked_scores(item_ids, user_params)  # [B, N]
        top_scores, top_items = torch.topk(scores, self.max_top_k, dim=1)  # [B, K] each
        filler = top_scores <= MASK_VALUE * 0.5  # a masked item reached the list
        top_items = torch.where(filler, torch.full_like(top_items, FILLER_ITEM), top_items)
        return {OUTPUT_TOP_ITEMS: top_items, OUTPUT_TOP_SCORES: top_scores}


@dataclass
class ValidationReport:
    """How closely an exported graph reproduces PyTorch on real histories."""

    n_users: int  # histories compared
    max_abs_diff: float  # max |ONNX score - PyTorch score| over the returned items
    top10_overlap: float  # mean share of PyTorch's top-10 that ONNX returns in its top-10
    top10_overlap_tie_aware: float  # same, counting swaps between near-tied scores as agreement
    worst_user: int  # row index of the largest score difference
    batch_size: int  # ONNX batch size used (the last batch may be smaller)
    passed: bool = True  # False when a tolerance was missed (then an error was raised)
    warnings: list[str] = field(default_factory=list)  # drift above atol but under the failure bound


@dataclass
class ExportResult:
    output_dir: Path  # export directory (model.onnx, config.json, item_map.json, fsrec_meta.json)
    onnx_path: Path  # output_dir / model.onnx
    meta: ExportMeta  # what was written to fsrec_meta.json
    validation: ValidationReport | None  # None when no histories were given
    seconds: float  # wall time of export + validation
    size_kb: float  # size of model.onnx

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_dir"], d["onnx_path"] = str(self.output_dir), str(self.onnx_path)
        return d


def export_onnx(
    model: FsRecModel,
    output_dir: str | Path,
    max_top_k: int = DEFAULT_MAX_TOP_K,
    opset: int = 17,
    validate_with: Sequence | None = None,
    atol: float = 1e-4,
    source: str = "",
    fail_factor: float = 10.0,
    min_top10_overlap: float = 0.99,
    extra: dict | None = None,
    last_position_only: bool = True,
    torchscript: bool = False,
) -> ExportResult:
    """Export ``model`` (an FsRecModel, or a PEFT model already ``merge_and_unload()``-ed) to
    ``output_dir/model.onnx`` through Optimum, with ``config.json``, ``item_map.json`` and
    ``fsrec_meta.json`` beside it.

    ``validate_with``: held-out histories (index lists, or ``Example`` objects) to compare the
    graph with PyTorch on (:func:`validate_export`); ``None`` skips that step (Optimum's own
    dummy-input check always runs). Raises :class:`ExportValidationError` when the graph does not
    reproduce PyTorch. ``last_position_only`` (default) computes the last transformer block for
    the scored position only (same scores, fewer FLOPs: :class:`FsRecTopKModule`); ``False``
    traces ``next_item_scores`` as is. ``source`` and ``extra`` (e.g. the data set and split config) are recorded
    in ``fsrec_meta.json``. ``torchscript`` also writes ``model.pt`` (:func:`export_torchscript`,
    what the ``gpu-python`` repository target runs).
    """
    from optimum.exporters.onnx import export as optimum_export
    from optimum.exporters.onnx import validate_model_outputs

    t0 = time.perf_counter()
    if not isinstance(model, FsRecModel):
        raise ExportError(
            f"export_onnx needs an FsRecModel, got {type(model).__name__}; for a PEFT model pass "
            "model.merge_and_unload()"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    cfg = model.config
    # export a CPU copy in eval mode: the caller's model (device, train mode) is left alone
    ref = copy.deepcopy(model).to("cpu").eval()
    wrapper = FsRecTopKModule(ref, max_top_k, last_position_only=last_position_only).eval()
    onnx_config = FsRecOnnxConfig(cfg, max_top_k=max_top_k)
    shapes = {BATCH_AXIS: 3, SEQUENCE_AXIS: int(cfg.max_seq_len)}
    try:
        optimum_export(wrapper, onnx_config, path, opset=opset, input_shapes=shapes)
    except Exception as e:  # noqa: BLE001 - torch/onnx raise many types
        raise ExportError(f"Optimum ONNX export of the FsRec graph failed: {e}") from e
    try:
        validate_model_outputs(
            onnx_config, wrapper, path, list(OUTPUT_NAMES), atol=atol,
            input_shapes=shapes, use_subprocess=False,
        )
    except Exception as e:  # noqa: BLE001 - optimum's ShapeError/AtolError/OutputMatchError
        raise ExportValidationError(
            f"{path}: Optimum's output check on dummy histories failed: {e}"
        ) from e

    # side files: config.json (FsRecConfig; the optimizer reads it), id map, serving metadata
    cfg.to_json_file(out / HF_CONFIG_FILE)
    if getattr(model, "item_map", None) is not None:
        model.item_map.save(out / ITEM_MAP_FILE)
    meta = ExportMeta(
        max_seq_len=int(cfg.max_seq_len), max_top_k=int(max_top_k), num_items=int(cfg.num_items),
        objective=str(cfg.objective), precision="fp32", source=str(source), opset=int(opset),
        mask_value=float(MASK_VALUE), user_params_dim=int(cfg.hidden_size), fingerprint=model_fingerprint(model),
        extra={**dict(extra or {}), "last_position_only": bool(last_position_only)},
    )
    meta.save(out)

    report = None
    if validate_with is not None:
        # the reference is the model's own next_item_scores, not the wrapper's shortcut
        report = validate_export(
            path, FsRecTopKModule(ref, max_top_k), validate_with, atol=atol, fail_factor=fail_factor,
            min_top10_overlap=min_top10_overlap,
        )
        # the per-user path too: small random offsets, same tolerance
        rng = np.random.default_rng(0)
        up = (0.1 * rng.standard_normal((len(as_histories(validate_with)), int(cfg.hidden_size)))).astype(np.float32)
        validate_export(path, FsRecTopKModule(ref, max_top_k), validate_with, atol=atol,
                        fail_factor=fail_factor, min_top10_overlap=min_top10_overlap, user_params=up)
    if torchscript:
        export_torchscript(ref, out, max_top_k=max_top_k, last_position_only=last_position_only)
    result = ExportResult(
        output_dir=out, onnx_path=path, meta=meta, validation=report,
        seconds=time.perf_counter() - t0, size_kb=path.stat().st_size / 1024,
    )
    logger.info("exported %s (%.0f kB) in %.1fs", path, result.size_kb, result.seconds)
    return result


class _TupleOutputs(nn.Module):
    """FsRecTopKModule with (top_items, top_scores) as a tuple: what torch.jit.trace keeps."""

    def __init__(self, inner: FsRecTopKModule):
        super().__init__()
        self.inner = inner

    def forward(self, item_ids: torch.Tensor, user_params: torch.Tensor):
        out = self.inner(item_ids, user_params)
        return out[OUTPUT_TOP_ITEMS], out[OUTPUT_TOP_SCORES]


def export_torchscript(model: FsRecModel, output_dir: str | Path, max_top_k: int = DEFAULT_MAX_TOP_K,
                       last_position_only: bool = True) -> Path:
    """Trace the served graph to ``output_dir/model.pt`` (TorchScript; CPU weights, load it with
    ``map_location``): (item_ids int64 [B, L], user_params float32 [B, H]) -> (top_items [B, K],
    top_scores [B, K]). Batch and length stay dynamic (checked here on other shapes)."""
    ref = copy.deepcopy(model).to("cpu").eval()
    wrapper = _TupleOutputs(FsRecTopKModule(ref, max_top_k, last_position_only=last_position_only)).eval()
    cfg = ref.config
    gen = np.random.default_rng(0)
    x = torch.as_tensor(gen.integers(1, cfg.num_items + 1, size=(3, int(cfg.max_seq_len))))
    up = torch.zeros(3, int(cfg.hidden_size))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes read as Python ints
        traced = torch.jit.trace(wrapper, (x, up), check_trace=False)
        x2 = x[:2, -max(1, int(cfg.max_seq_len) // 2):]
        up2 = 0.1 * torch.ones(2, int(cfg.hidden_size))
        got, want = traced(x2, up2), wrapper(x2, up2)
    if not torch.equal(got[0], want[0]) or not torch.allclose(got[1], want[1], atol=1e-5):
        raise ExportError("the TorchScript trace does not reproduce the model on another batch/length")
    path = Path(output_dir) / TORCH_FILE
    traced.save(str(path))
    return path


def torch_topk(model: FsRecModel | FsRecTopKModule, item_ids: np.ndarray, max_top_k: int = DEFAULT_MAX_TOP_K,
               batch_size: int = 256, user_params: np.ndarray | None = None):
    """PyTorch reference of the served graph: (top_items [B, K], top_scores [B, K],
    masked_scores [B, N]) for int64 item_ids [B, L] and optional float32 user_params [B, H]."""
    wrapper = model if isinstance(model, FsRecTopKModule) else FsRecTopKModule(model, max_top_k)
    wrapper = wrapper.eval()
    items, scores, full = [], [], []
    with torch.inference_mode():
        for s in range(0, len(item_ids), batch_size):
            x = torch.as_tensor(item_ids[s:s + batch_size], dtype=torch.long)
            up = None if user_params is None else torch.as_tensor(user_params[s:s + batch_size], dtype=torch.float32)
            out = wrapper(x, up)
            items.append(out[OUTPUT_TOP_ITEMS].numpy())
            scores.append(out[OUTPUT_TOP_SCORES].numpy())
            full.append(wrapper.masked_scores(x, up).numpy())
    return np.concatenate(items), np.concatenate(scores), np.concatenate(full)


def compare_topk(ref_full: np.ndarray, ref_items: np.ndarray, cand_items: np.ndarray,
                 cand_scores: np.ndarray, k: int = 10, tie_tol: float = 1e-4) -> dict:
    """Robust comparison of a candidate top-K with a reference that has full score rows.

    - ``max_abs_diff``: max |candidate score - reference score of the same item| over the
      candidate's returned items (ties that reorder items do not count as differences);
    - ``top{k}_overlap``: mean share of the reference top-k found in the candidate top-k;
    - ``top{k}_overlap_tie_aware``: a candidate item outside the reference top-k still counts
      when its reference score is within ``tie_tol`` of the reference k-th score.
    """
    real = cand_items >= 0  # filler slots (-1) carry MASK_VALUE on both sides
    safe = np.where(real, cand_items, 0)
    ref_at = np.take_along_axis(ref_full, safe, axis=1)  # [B, K]
    diff = np.where(real, np.abs(ref_at - cand_scores), 0.0)
    per_user = diff.max(axis=1) if diff.size else np.zeros(len(cand_items))
    overlaps, tie_overlaps = [], []
    for b in range(len(cand_items)):
        r = set(ref_items[b, :k].tolist())
        c = cand_items[b, :k].tolist()
        hit = sum(1 for i in c if i in r)
        kth = ref_full[b, ref_items[b, k - 1]] if ref_items[b, k - 1] >= 0 else -np.inf
        tie = sum(1 for i in c if i not in r and i >= 0 and ref_full[b, i] >= kth - tie_tol)
        overlaps.append(hit / k)
        tie_overlaps.append(min(1.0, (hit + tie) / k))
    return {
        "max_abs_diff": float(per_user.max()) if len(per_user) else 0.0,
        "worst_user": int(per_user.argmax()) if len(per_user) else -1,
        f"top{k}_overlap": float(np.mean(overlaps)) if overlaps else 1.0,
        f"top{k}_overlap_tie_aware": float(np.mean(tie_overlaps)) if tie_overlaps else 1.0,
    }


def validate_export(
    onnx_model: str | Path,
    model: FsRecModel | FsRecTopKModule,
    histories: Sequence,
    atol: float = 1e-4,
    fail_factor: float = 10.0,
    min_top10_overlap: float = 0.99,
    batch_size: int = 64,
    user_params: np.ndarray | None = None,
) -> ValidationReport:
    """Compare the exported graph with PyTorch on real histories.

    Passes silently when max |score diff| <= ``atol``; warns (:class:`ExportDriftWarning`) up to
    ``fail_factor * atol``; raises :class:`ExportValidationError` beyond that, or when the
    (tie-aware) top-10 agreement falls under ``min_top10_overlap``. ``user_params`` (float32
    [n, H], one row per history) checks the per-user path; ``None`` feeds zeros.
    """
    sess = make_session(onnx_model)
    max_len = int((model.config if hasattr(model, "config") else model.model.config).max_seq_len)
    k_dim = sess.get_outputs()[0].shape[1]
    k = int(k_dim) if isinstance(k_dim, int) else DEFAULT_MAX_TOP_K
    hist = as_histories(histories)
    if not hist:
        raise ExportValidationError("validate_export got no histories: pass held-out users' histories")
    x = pad_left(hist, max_len)
    items, scores = run_topk(sess, x, batch_size=batch_size, user_params=user_params)
    ref_items, _, ref_full = torch_topk(model, x, max_top_k=k, user_params=user_params)
    cmp = compare_topk(ref_full, ref_items, items, scores, k=min(10, k), tie_tol=max(atol, 1e-6) * 2)
    report = ValidationReport(
        n_users=len(hist), max_abs_diff=cmp["max_abs_diff"], top10_overlap=cmp["top10_overlap"],
        top10_overlap_tie_aware=cmp["top10_overlap_tie_aware"], worst_user=cmp["worst_user"],
        batch_size=batch_size,
    )
    problems = []
    if report.max_abs_diff > fail_factor * atol:
        problems.append(
            f"max |score diff| {report.max_abs_diff:.3g} exceeds {fail_factor:g} x atol "
            f"({fail_factor * atol:.3g}) (worst history: row {report.worst_user})"
        )
    if report.top10_overlap_tie_aware < min_top10_overlap:
        problems.append(
            f"top-10 agreement {report.top10_overlap_tie_aware:.4f} < {min_top10_overlap} "
            f"(raw overlap {report.top10_overlap:.4f})"
        )
    if problems:
        report.passed = False
        raise ExportValidationError(
            f"{onnx_model}: the ONNX graph does not reproduce PyTorch on {report.n_users} held-out "
            "histories: " + "; ".join(problems)
            + ". Check the exported opset/precision, or that the model was in eval mode and merged "
            "(merge_and_unload) before export."
        )
    if report.max_abs_diff > atol:
        msg = (f"{onnx_model}: max |score diff| vs PyTorch {report.max_abs_diff:.3g} > atol {atol:g} "
               f"(under the failure bound {fail_factor * atol:.3g})")
        report.warnings.append(msg)
        warnings.warn(msg, ExportDriftWarning, stacklevel=2)
    logger.info("validation: %d users, max_abs_diff %.2e, top10 overlap %.4f",
                report.n_users, report.max_abs_diff, report.top10_overlap)
    return report


__all__ = [
    "ExportDriftWarning", "ExportResult", "FsRecTopKModule", "ValidationReport", "FILLER_ITEM",
    "compare_topk", "export_onnx", "export_torchscript", "torch_topk", "validate_export",
]
