"""Publish a re-fine-tuned model: save, export to ONNX (validated), roll out to Triton."""

from __future__ import annotations

from pathlib import Path

from ..model import FsRecModel, model_fingerprint
from .config import LearnerConfig


def publish_model(model: FsRecModel, cfg: LearnerConfig) -> str:
    """Save ``model`` under ``work_dir/models/<fingerprint>``, export it under
    ``work_dir/exports/<fingerprint>`` and roll it out to ``cfg.server_url`` as the next version
    of the ranker in ``cfg.repository`` (``operations.rollout``: candidate load, smoke check,
    swap; RolloutError = nothing changed). Returns the version served."""
    from exporters.export import export_onnx

    from ..operations.control import ModelControl
    from ..operations.rollout import RolloutConfig, rollout

    from exporters.repository import versions
    from exporters.runtime import ExportMeta

    from ..contract import DEFAULT_MODEL_NAME

    fp = model_fingerprint(model)
    work = Path(cfg.work_dir)
    model.save_pretrained(str(work / "models" / fp))
    served = Path(cfg.repository) / DEFAULT_MODEL_NAME
    have = versions(served)
    top_k = ExportMeta.load(served / str(have[-1])).max_top_k if have else None  # the served graph's width
    exp = export_onnx(model, work / "exports" / fp, source=f"fsrec learn re-fine-tune {fp}",
                      **({"max_top_k": top_k} if top_k else {}))
    control = ModelControl(cfg.server_url, "grpc")
    try:
        report = rollout(exp.output_dir, cfg.repository, control, RolloutConfig())
    finally:
        control.close()
    return str(report.version)
