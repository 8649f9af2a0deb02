"""``fsrec export``, ``fsrec quantize`` and ``fsrec repository``: argument mapping only.

The work is done by the top-level ``exporters`` package (export_onnx, quantize / check_guard,
select_and_guard, build_model_repository / check_repository). The held-out users come from the
run record (``fsrec_serve.data.RunRecord``) of the model folder, which the export keeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None,
                   help="data set of the held-out users (default: the one recorded with the model); "
                   "a preset or a data-spec file")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (env FSREC_DATA_DIR)")
    p.add_argument("--split-seed", type=int, default=None, help="override the recorded split seed")


def add_parsers(sub) -> None:
    e = sub.add_parser(
        "export", help="export a trained model to ONNX (Optimum) and validate it against PyTorch",
        description="Writes model.onnx (item_ids -> top_items/top_scores, history masked in the graph), "
        "config.json, item_map.json and fsrec_meta.json, then compares the graph with PyTorch on the "
        "held-out users (max abs score diff, top-10 agreement). A merged adapter is exported the "
        "same way (save the merge_and_unload()-ed model first).",
    )
    e.add_argument("model", help="model folder (save_pretrained / the --output-dir of fsrec train)")
    e.add_argument("--output", required=True, help="export directory to write")
    e.add_argument("--max-top-k", type=int, default=100, help="width of the served top-K")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset")
    e.add_argument("--atol", type=float, default=1e-4, help="score tolerance of the validation")
    e.add_argument("--validate-users", type=int, default=0,
                   help="held-out users compared with PyTorch (0 = all test users)")
    e.add_argument("--no-validate", action="store_true", help="skip validation on real users")
    e.add_argument("--torchscript", action="store_true",
                   help="also write model.pt (TorchScript trace; what the gpu-python target serves)")
    e.add_argument("--full-graph", action="store_true",
                   help="trace next_item_scores as is (default: the last block for the scored position only)")
    _add_data(e)
    e.set_defaults(func=_export)

    q = sub.add_parser(
        "quantize", help="optimize / quantize an export under the accuracy and batch-invariance guard",
        description="--mode int8-static|int8-weight-only|int8-dynamic|fp16|opt writes <export>-<mode> "
        "(or --output) and runs the guard against the FP32 export (NDCG@10 drop <= 1%% relative, "
        "top-10 overlap >= 0.9, batch invariance); --mode select builds the CPU candidates and records "
        "the fastest one that passes in guard_decision.json.",
    )
    q.add_argument("export_dir", help="FP32 export directory (fsrec export --output)")
    q.add_argument("--mode", default="int8-static",
                   choices=["int8-static", "int8-weight-only", "int8-dynamic", "fp16", "opt", "select"])
    q.add_argument("--preset", default="auto", help="avx2, avx512, avx512_vnni, arm64 or auto")
    q.add_argument("--output", default=None, help="output export directory (default <export>-<mode>)")
    q.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales")
    q.add_argument("--calibration-users", type=int, default=512, help="histories for int8-static")
    q.add_argument("--exclude-nodes", nargs="*", default=None, help="node names left in float")
    q.add_argument("--max-ndcg-drop", type=float, default=0.01, help="guard: relative NDCG@10 drop")
    q.add_argument("--min-top10-overlap", type=float, default=0.9, help="guard: top-10 overlap")
    q.add_argument("--no-guard", action="store_true", help="write the candidate without checking it")
    _add_data(q)
    q.set_defaults(func=_quantize)

    r = sub.add_parser(
        "repository", help="build, check or regenerate the Triton model repository",
        description="With EXPORT_DIR: add it as a new version of the model (config.pbtxt generated "
        "from Triton's ModelConfig protobuf). --check: compare the committed model_repository/ (one root "
        "per target: cpu/, gpu/, gpu-python/) with "
        "what the generator writes (golden check). --write-defaults: regenerate it.",
    )
    r.add_argument("export_dir", nargs="?", default=None, help="export directory to add as a version")
    r.add_argument("--repo", default=None,
                   help="repository root (default: the project's model_repository/<target>; with --check / "
                   "--write-defaults: model_repository/ itself)")
    r.add_argument("--target", choices=["cpu", "gpu", "gpu-python"], default="cpu",
                   help="cpu: python backend + ONNX Runtime, any history length; gpu: onnxruntime backend, "
                   "the client pads to length buckets; gpu-python: python backend + torch on CUDA")
    r.add_argument("--length-buckets", type=int, nargs="*", default=None,
                   help="history-length buckets (max_seq_len is always added; default: the measured default)")
    r.add_argument("--model-name", default="fsrec")
    r.add_argument("--version", type=int, default=None, help="version number (default: next)")
    r.add_argument("--max-batch-size", type=int, default=64)
    r.add_argument("--max-queue-delay-us", type=int, default=None)
    r.add_argument("--preferred-batch-sizes", type=int, nargs="*", default=None)
    r.add_argument("--instances", type=int, default=None, help="model instances (default: the measured default)")
    r.add_argument("--intra-op-threads", type=int, default=None,
                   help="cpu: ORT threads per instance (0 = ORT default; default: the measured default)")
    r.add_argument("--no-warmup", action="store_true")
    r.add_argument("--overwrite", action="store_true", help="replace an existing version")
    r.add_argument("--check", action="store_true", help="golden check of the committed repository")
    r.add_argument("--write-defaults", action="store_true", help="regenerate the committed configs")
    r.set_defaults(func=_repository)


# -- helpers ---------------------------------------------------------------------------------------
def _record(args, recorded, where: str):
    """The run record of the held-out users: the recorded one (a model folder's fsrec_run.json,
    an export's fsrec_meta.json), with --dataset / --split-seed applied."""
    from ..data import RunRecord
    from ..errors import ConfigError

    record = recorded
    if args.dataset:
        record = record.with_source(args.dataset) if record is not None else RunRecord.for_source(args.dataset)
    if record is None:
        raise ConfigError(f"{where} does not record its data set: pass --dataset (e.g. ml-100k)")
    if args.split_seed is not None:
        record = record.with_split(seed=args.split_seed)
    return record


def _splits(args, record):
    from ..settings import get_settings

    return record.splits(get_settings(data_dir=args.data_dir).data_dir)


def _export(args) -> int:
    from exporters import export_onnx

    from ..data import RunRecord
    from ..model import FsRecModel

    model_dir = Path(args.model)
    recorded = RunRecord.find(model_dir)
    model = FsRecModel.from_pretrained(model_dir).eval()
    users, extra = None, {}
    if not args.no_validate or args.dataset:
        record = _record(args, recorded, str(model_dir))
        extra = record.source_dict()  # the export keeps the data and split (quantize, rollout guard)
        users = _splits(args, record).loo_test()
        if args.validate_users:
            users = users[: args.validate_users]
    elif recorded is not None:
        extra = recorded.source_dict()
    res = export_onnx(model, args.output, max_top_k=args.max_top_k, opset=args.opset,
                      validate_with=None if args.no_validate else users, atol=args.atol,
                      source=str(model_dir), extra=extra, last_position_only=not args.full_graph,
                      torchscript=args.torchscript)
    print(json.dumps(res.to_dict(), indent=2, default=str))
    return 0


def _quantize(args) -> int:
    from exporters.guard import check_guard
    from exporters.runtime import ExportMeta
    from exporters.select_and_guard import CandidateOptions, build_candidate, select_and_guard

    from ..data import RunRecord

    src = Path(args.export_dir)
    meta = ExportMeta.load(src)
    need_data = not args.no_guard or args.mode in ("int8-static", "select")
    recorded = RunRecord.from_dict(meta.extra) if RunRecord.has_source(meta.extra) else None
    splits = _splits(args, _record(args, recorded, str(src))) if need_data else None
    calib = [s.items for s in splits.loo_train()] if splits is not None else None
    guard_kw = dict(max_ndcg_drop=args.max_ndcg_drop, min_top10_overlap=args.min_top10_overlap)
    options = CandidateOptions(preset=args.preset, per_channel=not args.no_per_channel,
                               calibration_size=args.calibration_users, nodes_to_exclude=args.exclude_nodes)
    if args.mode == "select":
        report = select_and_guard(src, splits.loo_valid(), calibration_histories=calib, options=options,
                                  **guard_kw)
        print(json.dumps({"chosen": report.chosen, "chosen_dir": report.chosen_dir, "reason": report.reason,
                          "decision": report.decision_path, "guard_results": report.guard_results()},
                         indent=2))
        return 0
    if args.mode == "opt":
        out = build_candidate(src, "opt", args.output)
    else:
        from exporters.quantize import quantize

        out = quantize(src, args.output, mode=args.mode, preset=args.preset,
                       per_channel=not args.no_per_channel, calibration_histories=calib,
                       calibration_size=args.calibration_users, nodes_to_exclude=args.exclude_nodes)
    result = {"output": str(out)}
    if not args.no_guard:
        report = check_guard(out, src, splits.loo_valid(), **guard_kw)  # raises when refused
        result["guard"] = report.to_dict()
    print(json.dumps(result, indent=2, default=str))
    return 0


def _repository(args) -> int:
    import dataclasses

    from exporters.repository import (
        COMMITTED_REPOSITORY,
        DEFAULT_SPEC,
        build_model_repository,
        check_repository,
        target_repository,
        write_default_repository,
    )

    from ..errors import ConfigError, RepositoryError

    if args.repo:
        repo = Path(args.repo)
    else:  # the folder of the target roots for the golden copy, else the target's own root
        repo = COMMITTED_REPOSITORY if (args.write_defaults or args.check) else target_repository(args.target)
    if args.write_defaults:
        for p in write_default_repository(repo):
            print(p)
        return 0
    if args.check:
        problems = check_repository(repo)
        if problems:
            raise RepositoryError(
                "the committed repository is out of date: " + "; ".join(problems)
                + ". Regenerate it with `fsrec repository --write-defaults`"
            )
        print(f"{repo}: up to date")
        return 0
    if not args.export_dir:
        raise ConfigError("pass an EXPORT_DIR to add as a version, or --check / --write-defaults")
    spec = dataclasses.replace(
        DEFAULT_SPEC, model_name=args.model_name, max_batch_size=args.max_batch_size,
        warmup=not args.no_warmup,
        **{k: v for k, v in {
            "max_queue_delay_us": args.max_queue_delay_us,
            "preferred_batch_sizes": args.preferred_batch_sizes,
            "instance_count": args.instances,
            "intra_op_threads": args.intra_op_threads,
            "length_buckets": args.length_buckets,
        }.items() if v is not None},
    )
    v = build_model_repository(repo, args.export_dir, spec, target=args.target, version=args.version,
                               overwrite=args.overwrite)
    print(json.dumps({"model_dir": str(v.model_dir), "version": v.version, "target": v.target,
                      "precision": v.meta.precision, "config": str(v.config_path)}, indent=2))
    return 0
