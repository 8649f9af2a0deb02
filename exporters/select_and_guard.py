"""The export chain after ``export_onnx``: build the optimized / quantized candidates of an FP32
export, guard each against it and choose the served graph (``fsrec quantize --mode select`` and
the pipeline's quantize step both call :func:`select_and_guard`).

1. every name of ``candidates`` (default :data:`DEFAULT_CANDIDATES`) is built with
   :func:`build_candidate` (``quantize`` / ``optimize``); a candidate that fails to build is
   reported, not raised: FP32 still serves;
2. :func:`exporters.selection.select_served_model` guards the built ones (accuracy and batch
   invariance, :mod:`exporters.guard`), times them and picks the fastest that passes, if it is
   clearly faster than FP32; the decision is written as ``guard_decision.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from fsrec_serve.errors import ConfigError, FsRecError

from .runtime import export_dir

logger = logging.getLogger(__name__)

# the CPU candidates tried against the FP32 export, in this order (names = `fsrec quantize --mode`)
DEFAULT_CANDIDATES: tuple[str, ...] = ("int8-static", "int8-weight-only", "int8-dynamic", "opt")
CANDIDATE_KINDS = ("int8-static", "int8-weight-only", "int8-dynamic", "fp16", "opt")


@dataclass
class CandidateOptions:
    """How the candidates are built (the options of ``fsrec quantize``)."""

    preset: str = "auto"  # quantization preset: avx2, avx512, avx512_vnni, arm64 or auto (detected)
    per_channel: bool = True  # int8: one weight scale per output channel (False: per tensor)
    calibration_size: int = 512  # int8-static: histories used for calibration (the first ones)
    nodes_to_exclude: list[str] | None = None  # node names left in float


@dataclass
class SelectionReport:
    """What :func:`select_and_guard` built, checked and chose."""

    chosen: str  # the served candidate's name ("reference" = the FP32 export)
    chosen_dir: str  # its export directory
    reason: str  # one sentence: why this one
    decision_path: str  # guard_decision.json (in chosen_dir)
    candidates: dict = field(default_factory=dict)  # name -> {"dir", "passed", "reasons", "p50_ms", "guard"}
    failed: dict = field(default_factory=dict)  # name -> why it could not be built

    def guard_results(self) -> dict[str, str]:
        """name -> "passed", "refused: <reasons>" or "not built: <error>", for every candidate."""
        out = {n: "passed" if c["passed"] else "refused: " + "; ".join(c["reasons"])
               for n, c in self.candidates.items() if n != "reference"}
        out.update({n: f"not built: {e}" for n, e in self.failed.items()})
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "guard_results": self.guard_results()}


def build_candidate(src: str | Path, name: str, output_dir: str | Path | None = None,
                    calibration_histories: Sequence | None = None,
                    options: CandidateOptions | None = None) -> Path:
    """Build one candidate of the FP32 export ``src``: ``opt`` (ORT graph optimization) or a
    quantization mode (``int8-static`` needs ``calibration_histories``). ``output_dir``
    defaults to ``<src>-<name>``."""
    from .optimize import optimize
    from .quantize import quantize

    o = options or CandidateOptions()
    if name not in CANDIDATE_KINDS:
        raise ConfigError(f"unknown candidate {name!r}; known: {', '.join(CANDIDATE_KINDS)}")
    if name == "opt":
        return optimize(src, output_dir)
    kw: dict = {"preset": o.preset} if name != "int8-weight-only" else {}
    if name == "int8-static":
        kw.update(per_channel=o.per_channel, calibration_histories=calibration_histories,
                  calibration_size=o.calibration_size, nodes_to_exclude=o.nodes_to_exclude)
    return quantize(src, output_dir, mode=name, **kw)


def select_and_guard(
    export: str | Path,  # the FP32 export directory (export_onnx output)
    valid_examples: Sequence,  # validation Examples of the guard (held-out users of the run's split)
    *,
    calibration_histories: Sequence | None = None,  # int8-static calibration (training histories)
    candidates: Sequence[str] = DEFAULT_CANDIDATES,  # what is tried against FP32
    output_root: str | Path | None = None,  # candidate dirs <output_root>/<name>; None = <export>-<name>
    options: CandidateOptions | None = None,  # how candidates are built
    max_ndcg_drop: float = 0.01,  # guard: largest relative NDCG@10 drop vs FP32
    min_top10_overlap: float = 0.9,  # guard: smallest mean top-10 overlap with FP32
    **select_kwargs,  # select_served_model's timing options (batch_size, repeats, rounds, min_speedup)
) -> SelectionReport:
    """Build every candidate, guard and time them against ``export`` and choose the served graph
    (see the module docstring). Returns the report; guard_decision.json holds the same."""
    from .selection import select_served_model

    src = export_dir(export)
    built: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for name in candidates:
        out = Path(output_root) / name if output_root is not None else None
        try:
            built[name] = build_candidate(src, name, out, calibration_histories, options)
        except FsRecError as e:  # reported; the other candidates and FP32 still compete
            logger.warning("candidate %s was not built: %s", name, e)
            failed[name] = str(e)
    decision = select_served_model(built, src, valid_examples, max_ndcg_drop=max_ndcg_drop,
                                   min_top10_overlap=min_top10_overlap, **select_kwargs)
    reason = decision.reason
    if failed:
        reason += ". Not built: " + " | ".join(f"{k}: {v}" for k, v in failed.items())
    return SelectionReport(chosen=decision.chosen, chosen_dir=decision.chosen_dir, reason=reason,
                           decision_path=decision.decision_path, candidates=decision.candidates,
                           failed=failed)


__all__ = ["CANDIDATE_KINDS", "DEFAULT_CANDIDATES", "CandidateOptions", "SelectionReport", "build_candidate",
           "select_and_guard"]
