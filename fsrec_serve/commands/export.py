"""``fsrec export``, ``fsrec quantize`` and ``fsrec repository``: argument mapping only.

The work is done by the top-level ``exporters`` package (export_onnx, optimize / quantize /
check_guard / select_served_model, build_model_repository / check_repository).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None,
                   help="data set of the held-out users (default: the one recorded with the model)")
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
        "from Triton's ModelConfig protobuf). --check: compare the committed model_repository/ with "
        "what the generator writes (golden check). --write-defaults: regenerate it.",
    )
    r.add_argument("export_dir", nargs="?", default=None, help="export directory to add as a version")
    r.add_argument("--repo", default=None, help="repository root (default: the project's model_repository/)")
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
def _splits(args, recorded: dict):
    """The splits the model was trained on (recorded data set / split config), for held-out users."""
    from ..data import SplitConfig, load_dataset, make_splits
    from ..errors import ConfigError
    from ..settings import get_settings

    dataset = args.dataset or recorded.get("dataset")
    if not dataset:
        raise ConfigError("the model does not record its data set: pass --dataset (e.g. ml-100k)")
    cfg = SplitConfig(**recorded["split_config"]) if "split_config" in recorded else SplitConfig()
    if args.split_seed is not None:
        cfg.seed = args.split_seed
    data_dir = get_settings(data_dir=args.data_dir).data_dir
    return dataset, cfg, make_splits(load_dataset(dataset, data_dir), cfg)


def _export(args) -> int:
    import dataclasses

    from exporters import export_onnx

    from ..model import FsRecModel

    model_dir = Path(args.model)
    run = model_dir / "fsrec_run.json"
    recorded = json.loads(run.read_text()) if run.exists() else {}
    model = FsRecModel.from_pretrained(model_dir).eval()
    users, extra = None, {}
    if not args.no_validate or args.dataset:
        dataset, cfg, splits = _splits(args, recorded)
        extra = {"dataset": dataset, "split_config": dataclasses.asdict(cfg)}
        users = splits.loo_test()
        if args.validate_users:
            users = users[: args.validate_users]
    res = export_onnx(model, args.output, max_top_k=args.max_top_k, opset=args.opset,
                      validate_with=None if args.no_validate else users, atol=args.atol,
                      source=str(model_dir), extra=extra, last_position_only=not args.full_graph,
                      torchscript=args.torchscript)
    print(json.dumps(res.to_dict(), indent=2, default=str))
    return 0


def _quantize(args) -> int:
    from exporters.guard import check_guard
    from exporters.optimize import optimize
    from exporters.quantize import quantize
    from exporters.runtime import ExportMeta
    from exporters.selection import select_served_model

    src = Path(args.export_dir)
    meta = ExportMeta.load(src)
    need_data = not args.no_guard or args.mode in ("int8-static", "select")
    splits = _splits(args, meta.extra)[2] if need_data else None
    calib = [s.items for s in splits.loo_train()] if splits is not None else None
    guard_kw = dict(max_ndcg_drop=args.max_ndcg_drop, min_top10_overlap=args.min_top10_overlap)
    if args.mode == "select":
        cands = {
            "int8-static": quantize(src, mode="int8-static", preset=args.preset,
                                    per_channel=not args.no_per_channel, calibration_histories=calib,
                                    calibration_size=args.calibration_users,
                                    nodes_to_exclude=args.exclude_nodes),
            "int8-weight-only": quantize(src, mode="int8-weight-only"),
            "int8-dynamic": quantize(src, mode="int8-dynamic", preset=args.preset),
            "opt": optimize(src),
        }
        decision = select_served_model(cands, src, splits.loo_valid(), **guard_kw)
        print(json.dumps({"chosen": decision.chosen, "chosen_dir": decision.chosen_dir,
                          "reason": decision.reason, "decision": decision.decision_path}, indent=2))
        return 0
    if args.mode == "opt":
        out = optimize(src, args.output)
    else:
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
        write_default_repository,
    )

    from ..errors import ConfigError, RepositoryError

    repo = Path(args.repo) if args.repo else COMMITTED_REPOSITORY
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
