"""The pruning chain: pruned candidates of a trained model -> ONNX -> guard -> the served graph.

A candidate is named by its steps joined with ``+`` (``fsrec prune --candidates``):

* ``catalogue-<n>``: serve the n items of highest recency-weighted popularity (:func:`prune_catalogue`);
* ``heads-<n>``: keep n attention heads over all blocks (:func:`prune_heads`);
* ``ffn-<n>``: keep n feed-forward neurons per block (:func:`prune_ffn`);

e.g. ``heads-2+ffn-64+catalogue-4000``. Structural steps (heads, ffn) use importances computed
once on the full model, then one recovery fine-tune (:func:`recover`) runs; catalogue pruning
comes last (no fine-tune needed: kept items score exactly as before). Every candidate is exported
with :func:`export_onnx` (validated against its PyTorch model) and guarded like a quantized one by
:func:`exporters.selection.select_served_model` against the FP32 export of the full model: NDCG@10
of the validation item at most ``max_ndcg_drop`` (1 %) under FP32, top-10 overlap, batch
invariance; the fastest that passes is served if it is ``min_speedup`` times faster, else FP32.
Pruning is off by default (no pipeline step runs it): ``bench/pruning.py`` measures whether it pays.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fsrec_serve.errors import ConfigError
from fsrec_serve.model import FsRecModel

from .prune import (
    DEFAULT_HALF_LIFE,
    FullCatalogueScorer,
    PrunedCatalogue,
    prune_catalogue,
    prune_ffn,
    prune_heads,
    recover,
    structure_importance,
)
from .runtime import ExportMeta, export_dir

logger = logging.getLogger(__name__)

STEP_KINDS = ("catalogue", "heads", "ffn")  # what a candidate name's steps may be
_STEP = re.compile(r"^(catalogue|heads|ffn)-([1-9][0-9]*)$")


@dataclass
class PruneOptions:
    """How the pruned candidates are built (the options of ``fsrec prune``)."""

    half_life: float = DEFAULT_HALF_LIFE  # catalogue: recency half-life of the popularity, in interactions
    recover_epochs: int = 5  # heads / ffn: epochs of the recovery fine-tune (0 = none)
    recover_patience: int = 2  # heads / ffn: recovery stops after this many evaluations without gain
    train_config: object = None  # TrainConfig of the recovery (None: TrainConfig() defaults)
    importance_batches: int | None = None  # training batches the importances are summed over (None = an epoch)
    validate_users: int = 256  # validation histories each export is compared with PyTorch on


@dataclass
class PrunedCandidate:
    name: str  # the candidate's name (its steps)
    model: FsRecModel  # the pruned (and recovered) model, in its own item indices
    catalogue: PrunedCatalogue | None  # set when the catalogue was pruned
    export_dir: Path | None = None  # its ONNX export, once exported

    def scorer(self):
        """What the evaluation scores, in the full model's item indices."""
        return FullCatalogueScorer(self.catalogue) if self.catalogue is not None else self.model


@dataclass
class PruneReport:
    """What :func:`prune_and_guard` built, checked and chose."""

    chosen: str  # the served candidate ("reference" = the full model's FP32 export)
    chosen_dir: str  # its export directory
    reason: str  # why
    decision_path: str  # guard_decision.json (in chosen_dir)
    candidates: dict = field(default_factory=dict)  # name -> {"dir", "passed", "reasons", "p50_ms", "guard"}
    built: dict = field(default_factory=dict)  # name -> PrunedCandidate (not serialised)

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "chosen_dir": self.chosen_dir, "reason": self.reason,
                "decision_path": self.decision_path,
                "guard_results": {n: "passed" if c["passed"] else "refused: " + "; ".join(c["reasons"])
                                  for n, c in self.candidates.items() if n != "reference"}}


def parse_candidate(name: str) -> list[tuple[str, int]]:
    """``"heads-2+ffn-64"`` -> [("heads", 2), ("ffn", 64)]; each kind at most once."""
    steps = []
    for part in str(name).split("+"):
        m = _STEP.match(part.strip())
        if m is None:
            raise ConfigError(f"pruning candidate {name!r}: step {part!r} is not one of "
                              "catalogue-<n>, heads-<n>, ffn-<n> (n >= 1), joined with '+'")
        steps.append((m.group(1), int(m.group(2))))
    kinds = [k for k, _ in steps]
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"pruning candidate {name!r} names a step kind twice; give each kind once")
    return steps


def build_pruned(model: FsRecModel, splits, name: str, options: PruneOptions | None = None,
                 importance=None) -> PrunedCandidate:
    """The candidate ``name`` of ``model`` (a NEW model; ``model`` is not changed). ``importance``
    ((heads, ffn) of :func:`structure_importance`) is computed when a structural step needs it."""
    o = options or PruneOptions()
    steps = dict(parse_candidate(name))
    m = model
    if "heads" in steps or "ffn" in steps:
        heads_imp, ffn_imp = importance or structure_importance(model, splits.loo_train(), o.train_config,
                                                                o.importance_batches)
        if "heads" in steps:
            m = prune_heads(m, steps["heads"], heads_imp)
        if "ffn" in steps:
            m = prune_ffn(m, steps["ffn"], ffn_imp)
        if o.recover_epochs > 0:
            m = recover(m, splits, o.train_config, epochs=o.recover_epochs, patience=o.recover_patience)
    cat = None
    if "catalogue" in steps:
        cat = prune_catalogue(m, splits.loo_train(), steps["catalogue"], o.half_life)
        m = cat.model
    return PrunedCandidate(name=name, model=m.eval(), catalogue=cat)


def export_candidate(cand: PrunedCandidate, output_dir: str | Path, reference: str | Path,
                     validate_with: Sequence, source: str = "") -> Path:
    """Export ``cand`` like its reference (same top-K width, same recorded data), validated on
    ``validate_with`` (reference-index histories, translated for a pruned catalogue)."""
    from .export import export_onnx

    meta = ExportMeta.load(export_dir(reference))
    hist = [list(getattr(h, "history", h)) for h in validate_with]
    if cand.catalogue is not None:
        to_p = cand.catalogue.to_pruned()
        hist = [[int(to_p[i]) for i in h if to_p[i]] for h in hist]
    hist = [h for h in hist if h] or [[1]]
    res = export_onnx(cand.model, output_dir, max_top_k=min(meta.max_top_k, int(cand.model.config.num_items)),
                      opset=meta.opset, validate_with=hist, source=source,
                      extra={**meta.extra, "pruning": cand.name, "pruned_from": str(export_dir(reference))},
                      last_position_only=bool(meta.extra.get("last_position_only", True)))
    cand.export_dir = res.output_dir
    return res.output_dir


def prune_and_guard(
    model: FsRecModel,  # the full trained model (its checkpoint is never written)
    splits,  # the run's splits (RunRecord.splits): training log, validation users
    reference: str | Path,  # the full model's FP32 export (fsrec export)
    candidates: Sequence[str],  # candidate names (see the module docstring)
    output_root: str | Path,  # candidate exports go to <output_root>/<name>
    *,
    options: PruneOptions | None = None,  # how candidates are built
    max_ndcg_drop: float = 0.01,  # guard: largest relative NDCG@10 drop vs FP32
    min_top10_overlap: float = 0.9,  # guard: smallest mean top-10 overlap with FP32
    **select_kwargs,  # select_served_model's timing options (batch_size, repeats, rounds, min_speedup)
) -> PruneReport:
    """Build, export, guard and time every candidate against ``reference``; choose the served
    graph like a quantized candidate. Returns the report (guard_decision.json holds the same)."""
    from .selection import select_served_model

    if not candidates:
        raise ConfigError("no pruning candidates: pass e.g. --candidates catalogue-1000 heads-2 ffn-128")
    o = options or PruneOptions()
    ref = export_dir(reference)
    valid = splits.loo_valid()
    importance = None
    if any(k in ("heads", "ffn") for c in candidates for k, _ in parse_candidate(c)):
        importance = structure_importance(model, splits.loo_train(), o.train_config, o.importance_batches)
    built: dict[str, PrunedCandidate] = {}
    for name in candidates:
        cand = build_pruned(model, splits, name, o, importance)
        export_candidate(cand, Path(output_root) / name, ref, valid[: o.validate_users], source=str(ref))
        built[name] = cand
        logger.info("built %s -> %s", name, cand.export_dir)
    decision = select_served_model({n: c.export_dir for n, c in built.items()}, ref, valid,
                                   max_ndcg_drop=max_ndcg_drop, min_top10_overlap=min_top10_overlap,
                                   **select_kwargs)
    return PruneReport(chosen=decision.chosen, chosen_dir=decision.chosen_dir, reason=decision.reason,
                       decision_path=decision.decision_path, candidates=decision.candidates, built=built)


__all__ = ["STEP_KINDS", "PruneOptions", "PruneReport", "PrunedCandidate", "build_pruned", "export_candidate",
           "parse_candidate", "prune_and_guard"]
