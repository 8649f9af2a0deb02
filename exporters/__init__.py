"""Exporters: FsRec -> ONNX (Optimum) -> optimized / quantized under guards -> Triton repository.

Public API (imported lazily, so that ``from exporters import runtime_repository`` does not load
torch or Optimum). The quantize *function* is ``from exporters.quantize import quantize``
(``exporters.quantize`` is its module's name):

- ``export_onnx``, ``validate_export``, ``ExportResult``          (exporters.export)
- ``optimize``                                                    (exporters.optimize)
- ``detect_preset`` (and ``quantize``)                            (exporters.quantize)
- ``check_guard``, ``check_batch_invariance``                     (exporters.guard)
- ``select_served_model``, ``measure_latency``                    (exporters.selection)
- ``select_and_guard``, ``DEFAULT_CANDIDATES``, ``build_candidate``   (exporters.select_and_guard:
  the chain candidates -> guard -> choice that ``fsrec quantize`` and the pipeline call)
- ``prune_catalogue``, ``prune_heads``, ``prune_ffn``, ``structure_importance``, ``recover``
  (exporters.prune: smaller NEW models) and ``prune_and_guard``, ``PruneOptions``
  (exporters.prune_select: pruned candidates -> guard -> choice, what ``fsrec prune`` calls)
- ``build_model_repository``, ``runtime_repository``, ``load_model_config``,
  ``write_default_repository``, ``check_repository``, ``RepositorySpec``  (exporters.repository)
- ``ExportMeta``, ``make_session``, ``run_topk``                   (exporters.runtime)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export": ["export_onnx", "validate_export", "ExportResult", "ValidationReport", "FsRecTopKModule",
               "ExportDriftWarning", "FILLER_ITEM"],
    "optimize": ["optimize"],
    "quantize": ["detect_preset"],
    "guard": ["check_guard", "check_batch_invariance", "GuardReport", "BatchInvarianceReport"],
    "selection": ["select_served_model", "measure_latency", "ServedModelDecision"],
    "select_and_guard": ["select_and_guard", "build_candidate", "DEFAULT_CANDIDATES", "CandidateOptions",
                         "SelectionReport"],
    "prune": ["prune_catalogue", "prune_heads", "prune_ffn", "structure_importance", "recover",
              "recency_popularity", "FullCatalogueScorer", "PrunedCatalogue"],
    "prune_select": ["prune_and_guard", "PruneOptions", "PruneReport", "build_pruned", "parse_candidate"],
    "repository": ["build_model_repository", "runtime_repository", "load_model_config", "model_config",
                   "render_config", "write_default_repository", "check_repository", "RepositorySpec",
                   "RepositoryVersion", "DEFAULT_SPEC", "next_version"],
    "runtime": ["ExportMeta", "make_session", "run_topk", "feeds"],
    "onnx_config": ["FsRecOnnxConfig"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'exporters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
