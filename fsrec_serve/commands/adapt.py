"""``fsrec adapt``: few-shot adaptation of a pretrained model, merging, k-shot evaluation, report."""

from __future__ import annotations

import json

STRATEGY_CHOICES = ["auto", "zero_shot", "head_only", "full", "lora", "adalora", "ia3", "prefix", "prompt"]


def add_parsers(sub) -> None:
    from ..data.args import add_data_arguments

    p = sub.add_parser("adapt", help="few-shot adaptation: adapt, merge, k-shot evaluation, report")
    asub = p.add_subparsers(dest="adapt_command", metavar="ACTION")
    asub.required = True

    r = asub.add_parser("run", help="adapt a pretrained model to a cohort's support sets and save the artifact")
    r.add_argument("--base", required=True, help="pretrained model folder (save_pretrained)")
    r.add_argument("--out", required=True, help="artifact folder to write")
    r.add_argument("--strategy", default="auto", choices=STRATEGY_CHOICES)
    src = r.add_mutually_exclusive_group()  # or --data PATH (your own log; its cold users)
    src.add_argument("--support-file", help="one user a line: 'user_id item_id item_id ...' (raw ids, time order)")
    src.add_argument("--cold-users", metavar="DATASET",
                     help="use the cold users of DATASET as the cohort (first --k items); default: the cold "
                     "users of the data and split recorded with --base")
    r.add_argument("--k", type=int, default=5, help="support size of the cold users")
    r.add_argument("--seed", type=int, default=0,
                   help="adaptation seed (and split seed for a --base that records no split)")
    r.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    r.add_argument("--config", default=None, help="AdaptConfig JSON file")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override an AdaptConfig field (JSON value), e.g. --set lr=0.01 --set lora_r=16")
    r.add_argument("--merged-out", default=None, help="also write the merged model (LoRA-family) here")
    add_data_arguments(r)
    r.set_defaults(func=_run)

    u = asub.add_parser("per-user", help="fit per-user user_params (user-state offsets) for a cohort, one "
                        "vectorized fit, and save them as JSON {users, params, adapted, failed}")
    u.add_argument("--base", required=True, help="pretrained (or merged adapted) model folder")
    u.add_argument("--out", required=True, help="JSON file to write (written atomically)")
    usrc = u.add_mutually_exclusive_group()
    usrc.add_argument("--support-file", help="one user a line: 'user_id item_id item_id ...' (raw ids, time order)")
    usrc.add_argument("--cold-users", metavar="DATASET",
                      help="the cold users of DATASET (first --k); default: those of the split recorded with --base")
    u.add_argument("--k", type=int, default=5, help="support size of the cold users")
    u.add_argument("--seed", type=int, default=0, help="split seed for a --base that records no split")
    u.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    u.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a PerUserConfig field (JSON value), e.g. --set lrs=[0.1] --set l2=0.01")
    u.set_defaults(func=_per_user)

    m = asub.add_parser("merge", help="fold a saved LoRA / AdaLoRA / IA3 artifact into the base weights")
    m.add_argument("--base", required=True, help="pretrained model folder")
    m.add_argument("--artifact", required=True, help="artifact folder (fsrec adapt run --out)")
    m.add_argument("--out", required=True, help="folder for the merged model (save_pretrained)")
    m.set_defaults(func=_merge)

    k = asub.add_parser("kshot", help="cold-start-user k-shot evaluation of strategies on a split")
    k.add_argument("--base", required=True, help="model pretrained WITHOUT the split's cold users")
    k.add_argument("--dataset", default=None,
                   help="ml-100k or beauty (or your own log: --data); default: the data recorded with --base")
    k.add_argument("--ks", nargs="+", type=int, default=[1, 3, 5, 10])
    k.add_argument("--strategies", nargs="+", default=["popularity", "zero_shot", "lora", "auto"],
                   choices=["popularity"] + STRATEGY_CHOICES)
    k.add_argument("--seed", type=int, default=0,
                   help="adaptation seed (and split seed for a --base that records no split)")
    k.add_argument("--data-dir", default=None)
    add_data_arguments(k)
    k.set_defaults(func=_kshot)

    rep = asub.add_parser("report", help="markdown table + PNG plots from bench results JSON files")
    rep.add_argument("results", nargs="+", help="bench/results/fewshot.json, bench/results/metarec.json ...")
    rep.add_argument("--out", default="bench/results", help="folder for adaptation_report.md and PNGs")
    rep.add_argument("--metric", default="ndcg@10")
    rep.set_defaults(func=_report)


def _config(args):
    from ..adaptation import AdaptConfig

    cfg = AdaptConfig.load(args.config) if args.config else AdaptConfig(seed=args.seed)
    over = {}
    for s in args.set:
        if "=" not in s:
            from ..errors import ConfigError

            raise ConfigError(f"--set expects FIELD=VALUE, got {s!r}")
        key, val = s.split("=", 1)
        try:
            over[key] = json.loads(val)
        except json.JSONDecodeError:
            over[key] = val
    return cfg.with_overrides(**over) if over else cfg


def _read_support(path, model):
    from ..data import UserSequence, read_sequences
    from ..errors import ConfigError

    if model.item_map is None:
        raise ConfigError("the base model has no item_map.json; raw ids cannot be mapped")
    log = read_sequences(path)
    out = []
    for user, events in log.sequences().items():
        items = model.item_map.indices([i for i, _, _ in events])
        out.append(UserSequence(user, items, [1.0] * len(items)))
    return out


def _cohort_splits(args, command: str):
    """The splits of the --base model's run (the data and split of its fsrec_run.json), with the
    data of --cold-users / --dataset / --data when given; a base without a record is split with --seed."""
    from ..data import RunRecord, SplitConfig, data_source_from_args
    from ..errors import ConfigError

    record = RunRecord.find(args.base)
    spec = data_source_from_args(args, dataset=getattr(args, "cold_users", None))
    if record is None:
        if spec is None:
            raise ConfigError(f"{command} needs --support-file, --cold-users DATASET or --data PATH: "
                              f"{args.base} records no data set")
        record = RunRecord.for_source(spec, SplitConfig(seed=args.seed))
    elif spec is not None:
        record = record.with_source(spec)
    return record.splits(args.data_dir)


def _keep_record(base, out) -> None:
    """A merged model keeps its base's run record: export and evaluate find the data and split."""
    import dataclasses

    from ..data import RunRecord

    record = RunRecord.find(base)
    if record is not None:
        dataclasses.replace(record, extra={**record.extra, "adapted_from": str(base)}).save(out)


def _run(args) -> int:
    from ..adaptation import adapt
    from ..model import FsRecModel

    model = FsRecModel.from_pretrained(args.base)
    if args.support_file:
        support = _read_support(args.support_file, model)
        query = None
    else:
        support, query = _cohort_splits(args, "fsrec adapt run").support_query(args.k)
    res = adapt(model, support, strategy=args.strategy, config=_config(args))
    path = res.save(args.out)
    out = {"strategy": res.strategy, "artifact": str(path), "size_kb": round(res.artifact.size_kb(), 1),
           "seconds": round(res.info.get("seconds", 0.0), 2), "n_users": res.info.get("n_users")}
    if "chosen" in res.info:
        out["auto_candidates"] = [{k: c.get(k) for k in ("strategy", "lr", "lora_r", "inner_ndcg@10")}
                                  for c in res.info.get("candidates", [])]
    if res.info.get("degraded"):
        out["note"] = res.info["degraded"]
    if query:
        from ..evaluation import evaluate_next_item

        out["query"] = {k: v for k, v in evaluate_next_item(res.model, query, ks=(10,)).items()}
    if args.merged_out:
        merged = res.merged_model()
        merged.save_pretrained(args.merged_out)
        _keep_record(args.base, args.merged_out)
        out["merged"] = args.merged_out
    print(json.dumps(out, indent=2, default=float))
    return 0


def _merge(args) -> int:
    from ..adaptation import load_adapted

    merged = load_adapted(args.base, args.artifact, merged=True)
    merged.save_pretrained(args.out)
    _keep_record(args.base, args.out)
    print(f"merged model written to {args.out}")
    return 0


def _kshot(args) -> int:
    from ..adaptation import AdaptConfig
    from ..experiments.coldstart import coldstart_users
    from ..model import FsRecModel

    splits = _cohort_splits(args, "fsrec adapt kshot")
    model = FsRecModel.from_pretrained(args.base).eval()
    print("| k | method | HR@10 | NDCG@10 | seconds | KB |")
    print("|---|---|---|---|---|---|")
    for k in args.ks:
        for r in coldstart_users(model, splits, k, args.strategies, AdaptConfig(seed=args.seed)):
            name = r.strategy + (f" ({r.info['chosen']['strategy']})" if r.strategy == "auto" else "")
            print(f"| {k} | {name} | {r.metrics['hr@10']:.4f} | {r.metrics['ndcg@10']:.4f} | "
                  f"{r.seconds:.1f} | {r.size_kb:.1f} |", flush=True)
    return 0


def _report(args) -> int:
    from ..evaluation.report import write_report

    for p in write_report(args.results, args.out, metric=args.metric):
        print(p)
    return 0


def _per_user(args) -> int:
    from ..adaptation import PerUserConfig, fit_user_params
    from ..errors import ConfigError
    from ..model import FsRecModel

    model = FsRecModel.from_pretrained(args.base).eval()
    if args.support_file:
        support = _read_support(args.support_file, model)
    else:
        support, _ = _cohort_splits(args, "fsrec adapt per-user").support_query(args.k)
    over = {}
    for item in args.set:
        key, _, val = item.partition("=")
        try:
            over[key] = json.loads(val)
        except json.JSONDecodeError:
            over[key] = val
    try:
        cfg = PerUserConfig(**over)
    except TypeError as e:
        raise ConfigError(f"--set: {e}; PerUserConfig fields: lrs, steps, l2, margin, min_support, "
                          "per_user_check, candidates, users_per_chunk") from e
    res = fit_user_params(model, support, cfg)
    res.save(args.out)
    print(json.dumps({"out": args.out, "n_users": len(res.users), "n_adapted": int(res.adapted.sum()),
                      "failed": res.failed, "lr": res.info.get("lr"), "steps": res.info.get("steps"),
                      "seconds": round(res.info["seconds"], 2)}, indent=2))
    return 0
