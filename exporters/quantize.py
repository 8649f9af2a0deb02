"""Graph optimization, quantization and the accuracy / batch-invariance guard.

Every function reads an *export directory* (``model.onnx`` + ``config.json`` +
``fsrec_meta.json`` [+ ``item_map.json``], written by :func:`exporters.export.export_onnx`) and
writes a new one, so that any candidate can be validated, benchmarked or put in the Triton
repository the same way.

- :func:`optimize`: Optimum's ``ORTOptimizer`` (level 2). The BERT attention fusion assumes right
  padding; the served histories are LEFT-padded, so the fusion runs with
  ``use_raw_attention_mask=True`` (verified exact here) or is disabled.
- :func:`quantize`: ``int8-dynamic`` and ``int8-static`` with Optimum's ``ORTQuantizer`` and
  ``AutoQuantizationConfig.<preset>`` (static calibrated on real histories through
  ``ORTQuantizer.fit``); ``int8-weight-only`` with ONNX Runtime's ``MatMulNBitsQuantizer``
  (8-bit weights, per-row blocks; activations are never quantized with a batch-wide scale);
  ``fp16`` for GPU with Optimum's ``ORTOptimizer`` (``fp16=True``, I/O kept int64/float32).
- :func:`check_guard`: refuses a candidate whose NDCG@10 on validation users drops more than 1 %
  relative to FP32, whose top-10 overlap with FP32 is under 0.9, or whose top-K for a user
  changes with the other users of the batch (:func:`check_batch_invariance`). Dynamic INT8
  computes the activation scale over the whole batch and fails the latter.
- :func:`select_served_model`: the fastest candidate that passes, with the decision recorded
  as ``guard_decision.json`` in the chosen export directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fsrec_serve.errors import ConfigError, ExportError, QuantizationGuardError

from .runtime import (
    CONFIG_FILE,
    ITEM_MAP_FILE,
    ONNX_FILE,
    ExportMeta,
    as_histories,
    make_session,
    ndcg_at_k_from_topk,
    onnx_path,
    pad_left,
    run_topk,
    topk_overlap,
)

logger = logging.getLogger(__name__)

QUANT_MODES = ("int8-dynamic", "int8-static", "int8-weight-only", "fp16")
PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64")
GUARD_FILE = "guard_decision.json"


# -- helpers -----------------------------------------------------------------------------------
def detect_preset() -> str:
    """The AutoQuantizationConfig preset for this CPU: arm64 on ARM, else the best of
    avx512_vnni / avx512 / avx2 from /proc/cpuinfo's flags (avx2 when unknown)."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def _export_dir(path: str | Path) -> Path:
    p = Path(path)
    p = p.parent if p.suffix == ".onnx" else p
    onnx_path(p)  # raises a clear error when missing
    return p


def _copy_side_files(src: Path, dst: Path, precision: str, extra: dict) -> ExportMeta:
    """Copy config.json / item_map.json and write fsrec_meta.json with the new precision."""
    for name in (CONFIG_FILE, ITEM_MAP_FILE):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    meta = ExportMeta.load(src)
    meta.precision = precision
    meta.extra = {**meta.extra, **extra, "derived_from": str(src)}
    meta.save(dst)
    return meta


def _bert_config(src: Path):
    """The BertConfig the ORT transformer optimizer needs (heads, hidden size), read from the
    FsRecConfig in config.json: ORT knows 'bert', not our model type."""
    from transformers import BertConfig

    try:
        d = json.loads((src / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise ExportError(f"{src / CONFIG_FILE} is missing: it is written by export_onnx") from None
    return BertConfig(
        hidden_size=d["hidden_size"], num_attention_heads=d["num_attention_heads"],
        num_hidden_layers=d["num_hidden_layers"], intermediate_size=d.get("intermediate_size", 256),
    )


def _default_out(src: Path, tag: str, output_dir) -> Path:
    out = Path(output_dir) if output_dir is not None else src.parent / f"{src.name}-{tag}"
    if out.resolve() == src.resolve():
        raise ConfigError(f"output_dir must differ from the source export directory {src}")
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- optimization --------------------------------------------------------------------------------
def optimize(
    onnx_dir: str | Path,
    output_dir: str | Path | None = None,
    level: int = 2,
    attention_fusion: str = "raw-mask",
    for_gpu: bool = False,
    fp16: bool = False,
) -> Path:
    """ORTOptimizer graph optimization of an export directory -> a new export directory.

    ``attention_fusion``: ``"raw-mask"`` (fuse attention, feeding it the raw 0/1 mask: exact with
    left padding), ``"off"`` (no attention fusion) or ``"default"`` (ORT's mask-index fusion,
    which assumes right padding and changes the scores of left-padded histories: only for
    demonstrating the trap). ``fp16=True`` (with ``for_gpu``) also converts to float16, keeping
    the int64 input and float32 outputs.
    """
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    src = _export_dir(onnx_dir)
    if attention_fusion not in ("raw-mask", "off", "default"):
        raise ConfigError(f"attention_fusion must be raw-mask, off or default, got {attention_fusion!r}")
    tag = "fp16" if fp16 else "opt"
    out = _default_out(src, tag, output_dir)
    oc = OptimizationConfig(
        optimization_level=level,
        optimize_for_gpu=for_gpu or fp16,
        fp16=fp16,
        use_raw_attention_mask=attention_fusion == "raw-mask",
        disable_attention_fusion=attention_fusion == "off",
    )
    optimizer = ORTOptimizer([src / ONNX_FILE], config=_bert_config(src))
    tmp = out / "_optimum"
    try:
        optimizer.optimize(oc, tmp, file_suffix=None)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ORTOptimizer failed on {src / ONNX_FILE}: {e}") from e
    shutil.move(str(tmp / ONNX_FILE), out / ONNX_FILE)
    shutil.rmtree(tmp, ignore_errors=True)
    precision = "fp16" if fp16 else "fp32-opt"
    _copy_side_files(src, out, precision, {
        "optimization_level": level, "attention_fusion": attention_fusion, "for_gpu": bool(for_gpu or fp16),
    })
    return out


# -- quantization -------------------------------------------------------------------------------
def _calibration_rows(calibration_histories, max_seq_len: int, limit: int) -> list[dict]:
    hist = as_histories(calibration_histories)[:limit]
    if not hist:
        raise ConfigError(
            "int8-static needs calibration_histories (e.g. training users' histories): "
            "pass some hundreds of real histories"
        )
    x = pad_left(hist, max_seq_len)
    return [{"item_ids": row} for row in x]


def quantize(
    onnx_dir: str | Path,
    output_dir: str | Path | None = None,
    mode: str = "int8-static",
    preset: str = "auto",
    per_channel: bool = True,
    reduce_range: bool = False,
    calibration_histories: Sequence | None = None,
    calibration_method: str = "minmax",
    calibration_size: int = 512,
    nodes_to_exclude: Sequence[str] | None = None,
    operators_to_quantize: Sequence[str] | None = None,
    weight_block_size: int = 32,
) -> Path:
    """Quantize an FP32 export directory -> a new export directory (``<src>-<mode>`` by default).

    ``mode``: ``int8-dynamic`` | ``int8-static`` (needs ``calibration_histories``) |
    ``int8-weight-only`` | ``fp16``. ``preset``: ``AutoQuantizationConfig`` preset (avx2, avx512,
    avx512_vnni, arm64; "auto" = detect_preset()). Quantize the un-optimized FP32 graph:
    ORTQuantizer fails on fused graphs (``shared/STACK.md``); ONNX Runtime fuses the quantized
    graph itself when it loads it.
    """
    if mode not in QUANT_MODES:
        raise ConfigError(f"mode must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    if preset == "auto":
        preset = detect_preset()
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if mode == "int8-static" and not calibration_histories:
        raise ConfigError(
            "int8-static needs calibration_histories (e.g. training users' histories): "
            "pass some hundreds of real histories"
        )
    src = _export_dir(onnx_dir)
    if mode == "fp16":
        return optimize(src, output_dir, level=2, for_gpu=True, fp16=True)
    out = _default_out(src, mode, output_dir)
    meta = ExportMeta.load(src)
    extra = {"preset": preset, "per_channel": per_channel, "reduce_range": reduce_range}
    t0 = time.perf_counter()
    if mode == "int8-weight-only":
        _weight_only(src / ONNX_FILE, out / ONNX_FILE, block_size=weight_block_size,
                     nodes_to_exclude=nodes_to_exclude)
        extra = {"bits": 8, "block_size": weight_block_size, "op": "MatMulNBits"}
    else:
        _ort_quantize(src, out, mode, preset, per_channel, reduce_range, calibration_histories,
                      calibration_method, calibration_size, nodes_to_exclude, operators_to_quantize,
                      meta.max_seq_len)
        if mode == "int8-static":
            extra.update(calibration_method=calibration_method,
                         calibration_size=min(calibration_size, len(calibration_histories or [])))
    if nodes_to_exclude:
        extra["nodes_to_exclude"] = list(nodes_to_exclude)
    extra["seconds"] = round(time.perf_counter() - t0, 2)
    _copy_side_files(src, out, mode, extra)
    return out


def _ort_quantize(src, out, mode, preset, per_channel, reduce_range, calibration_histories,
                  calibration_method, calibration_size, nodes_to_exclude, operators_to_quantize,
                  max_seq_len):
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, CalibrationConfig
    from onnxruntime.quantization import CalibrationMethod

    is_static = mode == "int8-static"
    kw = dict(is_static=is_static, per_channel=per_channel,
              nodes_to_exclude=list(nodes_to_exclude or []) or None,
              operators_to_quantize=list(operators_to_quantize or []) or None)
    if preset in ("avx2", "avx512"):
        kw["reduce_range"] = reduce_range
    qconfig = getattr(AutoQuantizationConfig, preset)(**kw)
    quantizer = ORTQuantizer(src / ONNX_FILE)
    ranges = None
    tmp = out / "_optimum"
    tmp.mkdir(exist_ok=True)
    try:
        if is_static:
            rows = _calibration_rows(calibration_histories, max_seq_len, calibration_size)
            methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentiles": CalibrationMethod.Percentile}
            if calibration_method not in methods:
                raise ConfigError(f"calibration_method must be one of {', '.join(methods)}")
            ccfg = CalibrationConfig(
                dataset_name="fsrec-histories", dataset_config_name="item_ids", dataset_split="calibration",
                dataset_num_samples=len(rows), method=methods[calibration_method],
                num_bins=2048 if calibration_method != "minmax" else None,
                num_quantized_bins=128 if calibration_method == "entropy" else None,
                percentile=99.999 if calibration_method == "percentiles" else None,
                moving_average=False if calibration_method == "minmax" else None,
            )
            ranges = quantizer.fit(
                dataset=rows, calibration_config=ccfg, operators_to_quantize=qconfig.operators_to_quantize,
                onnx_augmented_model_name=str(tmp / "augmented_model.onnx"), batch_size=32,
            )
        quantizer.quantize(quantization_config=qconfig, save_dir=tmp, file_suffix=None,
                           calibration_tensors_range=ranges)
    except (ConfigError, ExportError):
        raise
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ORTQuantizer ({mode}, {preset}) failed on {src / ONNX_FILE}: {e}") from e
    shutil.move(str(tmp / ONNX_FILE), out / ONNX_FILE)
    shutil.rmtree(tmp, ignore_errors=True)


def _weight_only(src_onnx: Path, dst_onnx: Path, block_size: int = 32, nodes_to_exclude=None) -> None:
    """8-bit weight-only quantization of every MatMul with a constant weight (MatMulNBits).

    Weights are stored as int8 blocks with a per-block scale; activations stay float (or, at
    accuracy level 4, are quantized per row block inside the kernel): a user's scores never
    depend on the other rows of the batch.
    """
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:  # onnx_ir is needed by ORT's weight-only quantizer
        raise ExportError(f"int8-weight-only needs `pip install onnx-ir` ({e})") from e
    model = onnx.load(str(src_onnx))
    q = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                             accuracy_level=4, nodes_to_exclude=list(nodes_to_exclude or []))
    q.process()
    onnx.save(q.model.model, str(dst_onnx))


# -- guard ----------------------------------------------------------------------------------------
@dataclass
class BatchInvarianceReport:
    """Does a user's top-K change with the other users of the batch?"""

    n_users: int  # users checked (each alone, then inside random batches)
    trials: int  # random batches each user was put in
    batch_size: int  # size of those batches
    changed_users: int  # users whose top-K changed (beyond swaps of near-tied scores)
    max_score_diff: float  # max |score alone - score in a batch| over the returned items
    invariant: bool  # changed_users == 0 and max_score_diff <= score_tol
    score_tol: float  # tolerance used


@dataclass
class GuardReport:
    candidate: str  # export directory checked
    reference: str  # FP32 export directory compared with
    precision: str  # candidate's precision (fsrec_meta.json)
    n_users: int  # validation users
    ndcg_reference: float  # NDCG@10 of the reference on them
    ndcg_candidate: float  # NDCG@10 of the candidate
    ndcg_drop_rel: float  # (ref - cand) / ref; positive = worse
    top10_overlap: float  # mean share of the reference's top-10 the candidate keeps
    batch_invariance: BatchInvarianceReport | None  # None when not checked
    passed: bool  # all criteria met
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when it passed)
    thresholds: dict = field(default_factory=dict)  # max_ndcg_drop, min_top10_overlap, score_tol

    def to_dict(self) -> dict:
        return asdict(self)


def _same_topk(items_a, scores_a, items_b, scores_b, tie_tol: float) -> bool:
    """Equal top-K lists, allowing order swaps / boundary swaps between near-tied scores."""
    if np.array_equal(items_a, items_b):
        return True
    sa = {int(i): float(s) for i, s in zip(items_a, scores_a)}
    sb = {int(i): float(s) for i, s in zip(items_b, scores_b)}
    for i in set(sa) & set(sb):
        if abs(sa[i] - sb[i]) > tie_tol:
            return False
    kth = min(float(scores_a[-1]), float(scores_b[-1]))
    for i in set(sa) ^ set(sb):
        s = sa.get(i, sb.get(i))
        if s > kth + tie_tol:
            return False
    # same items, order differs: the positions that differ must hold near-equal scores
    return bool(np.allclose(np.asarray(scores_a), np.asarray(scores_b), atol=tie_tol, rtol=0))


def check_batch_invariance(
    model_dir: str | Path,
    histories: Sequence,
    n_users: int = 32,
    batch_size: int = 64,
    trials: int = 2,
    score_tol: float = 1e-3,
    tie_tol: float = 1e-5,
    seed: int = 0,
    session=None,
) -> BatchInvarianceReport:
    """Run each of ``n_users`` users alone, then at a random slot of ``trials`` batches of
    ``batch_size`` random other users; the top-K must not change (beyond ties) and no returned
    score may move by more than ``score_tol``."""
    sess = session or make_session(model_dir)
    meta = ExportMeta.load(Path(model_dir) if Path(model_dir).is_dir() else Path(model_dir).parent)
    hist = as_histories(histories)
    if len(hist) < 2:
        raise ConfigError("check_batch_invariance needs at least 2 histories")
    x = pad_left(hist, meta.max_seq_len)
    rng = np.random.default_rng(seed)
    users = rng.choice(len(x), size=min(n_users, len(x)), replace=False)
    changed, max_diff = 0, 0.0
    for u in users:
        alone_items, alone_scores = run_topk(sess, x[u:u + 1], batch_size=1)
        ok = True
        for _ in range(trials):
            mates = rng.choice(len(x), size=batch_size - 1, replace=True)
            slot = int(rng.integers(0, batch_size))
            batch = np.insert(x[mates], slot, x[u], axis=0)
            it, sc = run_topk(sess, batch, batch_size=batch_size)
            bi, bs = it[slot], sc[slot]
            # compare scores of the same items (order-free)
            pos = {int(i): j for j, i in enumerate(bi)}
            common = [(j, pos[int(i)]) for j, i in enumerate(alone_items[0]) if int(i) in pos and i >= 0]
            if common:
                d = max(abs(float(alone_scores[0][a]) - float(bs[b])) for a, b in common)
                max_diff = max(max_diff, d)
            if not _same_topk(alone_items[0], alone_scores[0], bi, bs, tie_tol):
                ok = False
        changed += 0 if ok else 1
    return BatchInvarianceReport(
        n_users=len(users), trials=trials, batch_size=batch_size, changed_users=changed,
        max_score_diff=max_diff, invariant=changed == 0 and max_diff <= score_tol, score_tol=score_tol,
    )


def check_guard(
    candidate_dir: str | Path,
    reference_dir: str | Path,
    valid_examples: Sequence,
    max_ndcg_drop: float = 0.01,
    min_top10_overlap: float = 0.9,
    batch_invariance: bool = True,
    invariance_users: int = 32,
    batch_size: int = 64,
    score_tol: float = 1e-3,
    raise_on_fail: bool = True,
) -> GuardReport:
    """The accuracy and batch-invariance guard of a candidate against the FP32 reference.

    ``valid_examples``: validation ``Example`` objects (``.history``, ``.target``). Fails when
    the relative NDCG@10 drop exceeds ``max_ndcg_drop`` (1 %), when the top-10 overlap with the
    reference is under ``min_top10_overlap`` (0.9), or when the candidate is not batch-invariant.
    Raises :class:`QuantizationGuardError` (saying by how much each criterion was missed) unless
    ``raise_on_fail=False``.
    """
    cand, ref = _export_dir(candidate_dir), _export_dir(reference_dir)
    meta = ExportMeta.load(cand)
    ex = list(valid_examples)
    if not ex or not hasattr(ex[0], "target"):
        raise ConfigError("check_guard needs validation Examples with .history and .target")
    x = pad_left(as_histories(ex), meta.max_seq_len)
    targets = [int(e.target) for e in ex]
    cand_sess, ref_sess = make_session(cand), make_session(ref)
    ci, _ = run_topk(cand_sess, x, batch_size=batch_size)
    ri, _ = run_topk(ref_sess, x, batch_size=batch_size)
    nd_c = float(ndcg_at_k_from_topk(ci, targets, 10).mean())
    nd_r = float(ndcg_at_k_from_topk(ri, targets, 10).mean())
    drop = (nd_r - nd_c) / nd_r if nd_r > 0 else 0.0
    overlap = float(topk_overlap(ri, ci, 10).mean())
    reasons = []
    if drop > max_ndcg_drop:
        reasons.append(
            f"NDCG@10 {nd_c:.4f} vs FP32 {nd_r:.4f}: {100 * drop:.2f}% relative drop exceeds the "
            f"{100 * max_ndcg_drop:.2f}% limit by {100 * (drop - max_ndcg_drop):.2f} points"
        )
    if overlap < min_top10_overlap:
        reasons.append(
            f"top-10 overlap with FP32 {overlap:.3f} is under {min_top10_overlap} by "
            f"{min_top10_overlap - overlap:.3f}"
        )
    inv = None
    if batch_invariance:
        inv = check_batch_invariance(cand, ex, n_users=invariance_users, batch_size=batch_size,
                                     score_tol=score_tol, session=cand_sess)
        if not inv.invariant:
            reasons.append(
                f"not batch-invariant: {inv.changed_users}/{inv.n_users} users' top-K changed with "
                f"their batch-mates, scores moved by up to {inv.max_score_diff:.3g} (tolerance "
                f"{score_tol:g}); a per-batch activation scale (dynamic INT8) does this: use "
                "int8-static or int8-weight-only"
            )
    report = GuardReport(
        candidate=str(cand), reference=str(ref), precision=meta.precision, n_users=len(ex),
        ndcg_reference=nd_r, ndcg_candidate=nd_c, ndcg_drop_rel=drop, top10_overlap=overlap,
        batch_invariance=inv, passed=not reasons, reasons=reasons,
        thresholds={"max_ndcg_drop": max_ndcg_drop, "min_top10_overlap": min_top10_overlap,
                    "score_tol": score_tol},
    )
    if reasons and raise_on_fail:
        raise QuantizationGuardError(f"{cand} ({meta.precision}) refused: " + "; ".join(reasons))
    return report


# -- latency and selection -------------------------------------------------------------------------
def measure_latency(model_dir: str | Path, histories: Sequence, batch_size: int = 64,
                    repeats: int = 30, warmup: int = 3, intra_op_threads: int = 0,
                    session=None) -> dict:
    """In-process ORT latency of one call at ``batch_size``: {"p50_ms", "p95_ms", "mean_ms", "n"}."""
    sess = session or make_session(model_dir, intra_op_threads=intra_op_threads)
    meta = ExportMeta.load(_export_dir(model_dir))
    hist = as_histories(histories)
    x = pad_left((hist * (batch_size // max(1, len(hist)) + 1))[:batch_size], meta.max_seq_len)
    for _ in range(warmup):
        sess.run(None, {"item_ids": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"item_ids": x})
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(np.mean(times)), "n": len(times)}


@dataclass
class ServedModelDecision:
    chosen: str  # name of the chosen candidate
    chosen_dir: str  # its export directory
    reason: str  # one sentence: why this one
    candidates: dict  # name -> {"dir", "p50_ms", "passed", "reasons", "guard"}
    decision_path: str  # where this decision was written (guard_decision.json)


def select_served_model(
    candidates: Mapping[str, str | Path],
    reference_dir: str | Path,
    valid_examples: Sequence,
    batch_size: int = 64,
    repeats: int = 10,
    rounds: int = 3,
    min_speedup: float = 1.05,
    intra_op_threads: int = 0,
    guard_reports: Mapping[str, GuardReport] | None = None,
    **guard_kwargs,
) -> ServedModelDecision:
    """Guard every candidate (name -> export dir) against the FP32 reference, time each at
    ``batch_size`` and pick the fastest that passes, if it is at least ``min_speedup`` times
    faster than the reference; otherwise the reference (FP32) is served: a quantized model that
    is not clearly faster is not worth its accuracy loss.

    Latency: ``rounds`` interleaved rounds (every candidate once per round, ``repeats`` timed
    calls each), the median of the rounds' p50s, so that a busy machine slows all candidates
    alike. ``guard_reports`` (name -> GuardReport, e.g. from an earlier ``check_guard``) skips
    re-checking those candidates. The decision, with every candidate's numbers and refusal
    reasons, is written as ``guard_decision.json`` in the chosen directory."""
    import statistics

    ref = _export_dir(reference_dir)
    ex = list(valid_examples)
    hist = [e.history for e in ex]
    all_c = {"reference": ref, **{k: _export_dir(v) for k, v in candidates.items()}}
    reports = dict(guard_reports or {})
    sessions = {n: make_session(d, intra_op_threads=intra_op_threads) for n, d in all_c.items()}
    times: dict[str, list[float]] = {n: [] for n in all_c}
    for _ in range(max(1, rounds)):
        for n, d in all_c.items():
            times[n].append(measure_latency(d, hist, batch_size=batch_size, repeats=repeats,
                                            session=sessions[n])["p50_ms"])
    rows: dict[str, dict] = {}
    for name, d in all_c.items():
        rep = reports.get(name) or check_guard(d, ref, ex, raise_on_fail=False, batch_size=batch_size,
                                               **guard_kwargs)
        p50 = statistics.median(times[name])
        rows[name] = {"dir": str(d), "precision": rep.precision, "p50_ms": p50, "p50_ms_rounds": times[name],
                      "passed": rep.passed, "reasons": rep.reasons, "guard": rep.to_dict()}
        logger.info("candidate %s: p50 %.2f ms at batch %d, %s", name, p50, batch_size,
                    "passed" if rep.passed else "refused: " + "; ".join(rep.reasons))
    ref_ms = rows["reference"]["p50_ms"]
    passing = {k: v for k, v in rows.items() if v["passed"] and k != "reference"}
    fastest = min(passing, key=lambda k: passing[k]["p50_ms"]) if passing else None
    if fastest is not None and ref_ms / rows[fastest]["p50_ms"] >= min_speedup:
        chosen = fastest
        reason = (f"{fastest} is the fastest candidate that passed the guard: "
                  f"{rows[fastest]['p50_ms']:.2f} ms p50 at batch {batch_size} vs FP32 {ref_ms:.2f} ms "
                  f"({ref_ms / rows[fastest]['p50_ms']:.2f}x)")
    elif fastest is not None:
        chosen = "reference"
        reason = (f"serving FP32: the fastest candidate that passed the guard, {fastest} "
                  f"({rows[fastest]['p50_ms']:.2f} ms), is not {min_speedup:g}x faster than FP32 "
                  f"({ref_ms:.2f} ms) at batch {batch_size}")
    else:
        chosen = "reference"
        reason = "serving FP32: no candidate passed the guard"
    refused = [f"{k}: {'; '.join(v['reasons'])}" for k, v in rows.items() if not v["passed"]]
    if refused:
        reason += ". Refused: " + " | ".join(refused)
    chosen_dir = Path(rows[chosen]["dir"])
    path = chosen_dir / GUARD_FILE
    decision = ServedModelDecision(chosen=chosen, chosen_dir=str(chosen_dir), reason=reason,
                                   candidates=rows, decision_path=str(path))
    path.write_text(json.dumps(asdict(decision), indent=2, default=str) + "\n")
    return decision


__all__ = [
    "QUANT_MODES", "PRESETS", "GUARD_FILE", "detect_preset", "BatchInvarianceReport", "GuardReport",
    "ServedModelDecision", "optimize", "quantize", "check_guard", "check_batch_invariance",
    "measure_latency", "select_served_model",
]
