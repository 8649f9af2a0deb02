"""Quantization of an FP32 export directory -> a new export directory.

- ``int8-dynamic`` and ``int8-static`` with Optimum's ``ORTQuantizer`` and
  ``AutoQuantizationConfig.<preset>`` (static calibrated on real histories through
  ``ORTQuantizer.fit``);
- ``int8-weight-only`` with ONNX Runtime's ``MatMulNBitsQuantizer`` (8-bit weights, per-row
  blocks; activations are never quantized with a batch-wide scale);
- ``fp16`` for GPU with Optimum's ``ORTOptimizer`` (:func:`exporters.optimize.optimize`).

Whether a candidate may be served is decided by :mod:`exporters.guard` and
:mod:`exporters.select`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fsrec_serve.contract import (
    INPUT_ITEM_IDS,
    INPUT_USER_PARAMS,
    ONNX_FILE,
    SCORE_DTYPE,
)
from fsrec_serve.errors import ConfigError, ExportError
from fsrec_serve.idmap import pad_left

from .optimize import optimize
from .runtime import (
    ExportMeta,
    as_histories,
    copy_side_files,
    derived_dir,
    export_dir,
)

QUANT_MODES = ("int8-dynamic", "int8-static", "int8-weight-only", "fp16")
PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64")


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


def _calibration_rows(calibration_histories, max_seq_len: int, limit: int, user_params_dim: int) -> list[dict]:
    hist = as_histories(calibration_histories)[:limit]
    if not hist:
        raise ConfigError(
            "int8-static needs calibration_histories (e.g. training users' histories): "
            "pass some hundreds of real histories"
        )
    x = pad_left(hist, max_seq_len)
    if not user_params_dim:
        return [{INPUT_ITEM_IDS: row} for row in x]
    zeros = np.zeros(user_params_dim, dtype=SCORE_DTYPE)  # calibrate on the zero-shot path
    return [{INPUT_ITEM_IDS: row, INPUT_USER_PARAMS: zeros} for row in x]


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
    ORTQuantizer fails on fused graphs ("Unable to find data type for weight_name"); ONNX Runtime fuses the quantized
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
    src = export_dir(onnx_dir)
    if mode == "fp16":
        return optimize(src, output_dir, level=2, for_gpu=True, fp16=True)
    out = derived_dir(src, mode, output_dir)
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
                      meta.max_seq_len, meta.user_params_dim)
        if mode == "int8-static":
            extra.update(calibration_method=calibration_method,
                         calibration_size=min(calibration_size, len(calibration_histories or [])))
    if nodes_to_exclude:
        extra["nodes_to_exclude"] = list(nodes_to_exclude)
    extra["seconds"] = round(time.perf_counter() - t0, 2)
    copy_side_files(src, out, mode, extra)
    return out


def _ort_quantize(src, out, mode, preset, per_channel, reduce_range, calibration_histories,
                  calibration_method, calibration_size, nodes_to_exclude, operators_to_quantize,
                  max_seq_len, user_params_dim):
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import (
        AutoQuantizationConfig,
        CalibrationConfig,
    )

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
            rows = _calibration_rows(calibration_histories, max_seq_len, calibration_size, user_params_dim)
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


__all__ = ["QUANT_MODES", "PRESETS", "detect_preset", "quantize", "optimize"]
