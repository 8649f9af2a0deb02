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

    fp = model_fingerprint(model)
    work = Path(cfg.work_dir)
    model.save_pretrained(str(work / "models" / fp))
    exp = export_onnx(model, work / "exports" / fp, source=f"fsrec learn re-fine-tune {fp}")
    control = ModelControl(cfg.server_url, "grpc")
    try:
        report = rollout(exp.output_dir, cfg.repository, control, RolloutConfig())
    finally:
        control.close()
    return str(report.version)
