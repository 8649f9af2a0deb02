"""Graph optimization of an export directory with Optimum's ``ORTOptimizer``.

Reads an *export directory* (``model.onnx`` + ``config.json`` + ``fsrec_meta.json``
[+ ``item_map.json``], written by :func:`exporters.export.export_onnx`) and writes a new one.
The BERT attention fusion of ONNX Runtime assumes right padding; the served histories are
LEFT-padded, so the fusion runs with ``use_raw_attention_mask=True`` (exact with left padding,
checked by the unit tests) or is disabled. ``fp16=True`` converts to float16 for the GPU,
keeping the int64 / float32 inputs and outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fsrec_serve.contract import ONNX_FILE
from fsrec_serve.errors import ConfigError, ExportError

from .runtime import HF_CONFIG_FILE, copy_side_files, derived_dir, export_dir

ATTENTION_FUSIONS = ("raw-mask", "off", "default")


def bert_config_of(src: Path):
    """The BertConfig the ORT transformer optimizer needs (heads, hidden size), from the
    FsRecConfig in ``config.json`` (:meth:`FsRecConfig.to_bert_config`): ORT knows 'bert',
    not our model type."""
    from fsrec_serve.model import FsRecConfig

    path = src / HF_CONFIG_FILE
    if not path.exists():
        raise ExportError(f"{path} is missing: it is written by export_onnx")
    return FsRecConfig.from_json_file(str(path)).to_bert_config()


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

    src = export_dir(onnx_dir)
    if attention_fusion not in ATTENTION_FUSIONS:
        raise ConfigError(f"attention_fusion must be raw-mask, off or default, got {attention_fusion!r}")
    tag = "fp16" if fp16 else "opt"
    out = derived_dir(src, tag, output_dir)
    oc = OptimizationConfig(
        optimization_level=level,
        optimize_for_gpu=for_gpu or fp16,
        fp16=fp16,
        use_raw_attention_mask=attention_fusion == "raw-mask",
        disable_attention_fusion=attention_fusion == "off",
    )
    optimizer = ORTOptimizer([src / ONNX_FILE], config=bert_config_of(src))
    tmp = out / "_optimum"
    try:
        optimizer.optimize(oc, tmp, file_suffix=None)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ORTOptimizer failed on {src / ONNX_FILE}: {e}") from e
    shutil.move(str(tmp / ONNX_FILE), out / ONNX_FILE)
    shutil.rmtree(tmp, ignore_errors=True)
    precision = "fp16" if fp16 else "fp32-opt"
    copy_side_files(src, out, precision, {
        "optimization_level": level, "attention_fusion": attention_fusion, "for_gpu": bool(for_gpu or fp16),
    })
    return out


__all__ = ["ATTENTION_FUSIONS", "bert_config_of", "optimize"]
