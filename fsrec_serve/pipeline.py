"""The main job, end to end: data -> pretrain -> adapt -> export -> quantize (guard) ->
Triton repository -> start Triton -> recommendations for real cold-start users -> stop.

Each step is one library call; this module only strings them together and reports.
``fsrec pipeline`` (and ``bash scripts/demo.sh``) runs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .contract import DEFAULT_REPOSITORY
from .data.spec import DataSpec
from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    dataset: str = "ml-100k"  # preset data set name (ml-100k has titles and genres); unused with data
    data_dir: Path | None = None  # folder with the preset data sets; None = FSREC_DATA_DIR
    data: DataSpec | None = None  # your own log (--data ...); None = the preset named by dataset
    use_features: bool = True  # feed item categories (genres / item metadata) to the model
    stop_after: str | None = None  # stop after this step: data, pretrain, adapt, export (None = all)
    verbose: bool = False  # fsrec -v: ONNX Runtime's own log too (the CLI filters the rest)
    work_dir: Path = Path("runs/pipeline")  # checkpoints, adapter, exports, server logs
    repository: Path = Path(DEFAULT_REPOSITORY)  # the cpu target's Triton repository root (configs committed)
    objective: str = "causal"  # "causal" (SASRec-style) or "cloze" (BERT4Rec-style)
    epochs: int = 40  # pretraining epochs at most (early stopping may end sooner)
    max_seq_len: int | None = None  # longest history the model reads (None = recommended)
    hidden_size: int | None = None  # model width (None = recommended)
    batch_size: int | None = None  # pretraining sequences per step (None = recommended)
    max_train_seconds: float | None = 240.0  # pretraining time budget (None = no limit)
    seed: int = 0  # split / training / adaptation seed
    k: int = 5  # support size of the cold-start cohort that is adapted
    strategy: str = "auto"  # adaptation strategy (auto = chosen on an inner validation split)
    quantize: bool = True  # try optimized / INT8 graphs under the accuracy + batch guard
    version: int = 1  # repository version to write (overwritten: the demo is idempotent)
    show_users: int = 3  # cold users whose recommendations are printed
    top_k: int = 10  # recommendations per user
    protocol: str = "grpc"  # client protocol for the printed queries ("grpc" or "http")
    http_port: int = 0  # 0 = a free port
    grpc_port: int = 0
    metrics_port: int = 0
    device: str = "cpu"  # training device ("cpu", "cuda", "auto")
    summary: dict = field(default_factory=dict)  # filled by run_pipeline


def _step(name: str, echo: Callable[[str], None]):
    class _Timer:
        def __enter__(self):
            echo(f"\n== {name}")
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                echo(f"   ({time.perf_counter() - self.t0:.1f}s)")

    return _Timer()


STEPS = ("data", "pretrain", "adapt", "export", "quantize", "repository", "serve")

@contextlib.contextmanager
def _quiet(verbose: bool):
    """Without -v: ONNX Runtime's C++ log (written to stderr directly, not through Python
    logging) shows errors only. Python warnings and library logs are filtered once for every
    command by ``cli.configure_output`` (library ones hidden, this project's own shown)."""
    if not verbose:
        try:
            import onnxruntime as ort

            ort.set_default_logger_severity(3)
        except Exception:  # noqa: BLE001, S110 (onnxruntime absent: nothing to quiet)
            pass
    yield


def _data_line(st: dict) -> str:
    removed = []
    for key, label in (("rows_below_threshold", "below the implicit threshold"),
                       ("duplicate_rows_removed", "duplicates"), ("short_users_dropped", "short users")):
        if st.get(key):
            removed.append(f"{st[key]} {label}")
    if st.get("k_core", {}).get("rows_removed"):
        removed.append(f"{st['k_core']['rows_removed']} rows by the k-core")
    return (f"   read {st.get('rows_read')} rows from {st.get('file')} ({st.get('format')}); "
            + (f"removed {', '.join(removed)}" if removed else "nothing removed by cleaning"))


def run_pipeline(cfg: PipelineConfig, echo: Callable[[str], None] = print) -> dict:
    """Run the whole path and return a summary dict (also written to work_dir/summary.json)."""
    if cfg.stop_after is not None and cfg.stop_after not in STEPS:
        raise ConfigError(f"stop_after {cfg.stop_after!r} is not one of {', '.join(STEPS)}")
    with _quiet(cfg.verbose):
        return _run(cfg, echo)


@dataclass
class _Run:
    """What the steps hand on to each other."""

    cfg: PipelineConfig
    echo: Callable[[str], None]
    work: Path  # cfg.work_dir
    summary: dict  # written to work/summary.json
    spec: DataSpec  # the log (cfg.data or the preset's spec)
    data: object = None  # Interactions (data step)
    splits: object = None  # Splits (data step)
    model: object = None  # the pretrained FsRecModel (pretrain step)
    served: object = None  # the adapted, merged model that is exported (adapt step)
    strategy: str = ""  # the adaptation strategy used (adapt step)
    export_dir: Path | None = None  # the FP32 export (export step)
    valid: list = field(default_factory=list)  # guard examples: warm users' validation items
    served_dir: Path | None = None  # the export the repository serves (quantize step)


def _run(cfg: PipelineConfig, echo: Callable[[str], None]) -> dict:
    from .data import preset_spec

    summary: dict = {"config": {k: str(v) for k, v in asdict(cfg).items() if k != "summary"}}
    spec = cfg.data if cfg.data is not None else preset_spec(cfg.dataset, cfg.data_dir)
    run = _Run(cfg, echo, Path(cfg.work_dir), summary, spec)
    steps = {"data": _data_step, "pretrain": _pretrain_step, "adapt": _adapt_step, "export": _export_step,
             "quantize": _quantize_step, "repository": _repository_step, "serve": _serve_step}
    for name in STEPS:
        steps[name](run)
        if cfg.stop_after == name:
            break
    return _finish(cfg, run.work, summary, echo)


def _data_step(run: _Run) -> None:
    from .data import SplitConfig, load_interactions, make_splits

    with _step(f"1/7 data: {run.spec.display_name}", run.echo):
        data = load_interactions(run.spec)  # bad input fails here, before anything is written
        splits = make_splits(data, SplitConfig(seed=run.cfg.seed))
        s = splits.summary()
        run.echo(_data_line(data.stats))
        run.echo(f"   {len(data)} interactions; {s['warm_users']} warm users, {s['cold_users']} cold users "
                 f"held out, {s['cold_items']} cold items held out, {s['items']} items"
                 + (f"; titles for {len(data.item_names)} items" if data.item_names else ""))
        run.summary["data"] = {**s, "cleaning": data.stats, "item_map": splits.item_map.raw_ids}
    run.data, run.splits = data, splits
    run.valid = splits.loo_valid()[:256]
    run.work.mkdir(parents=True, exist_ok=True)


def _pretrain_step(run: _Run) -> None:
    from .evaluation import PopularityModel, evaluate_next_item
    from .training import pretrain
    from .training.pretrain import default_model_config, default_train_config, pretrain_candidate_mask

    cfg, splits = run.cfg, run.splits
    with _step(f"2/7 pretrain ({cfg.objective}, at most {cfg.epochs} epochs)", run.echo):
        over = {k: v for k, v in (("max_seq_len", cfg.max_seq_len), ("hidden_size", cfg.hidden_size))
                if v is not None}
        if not cfg.use_features:
            over["num_item_features"] = 0
        mcfg = default_model_config(splits, cfg.objective, **over)
        tcfg = default_train_config(
            splits, cfg.objective, epochs=cfg.epochs, seed=cfg.seed, device=cfg.device,
            output_dir=str(run.work / "pretrained"), max_train_seconds=cfg.max_train_seconds,
            **({"batch_size": cfg.batch_size} if cfg.batch_size else {}),
        )
        res = pretrain(splits, mcfg, tcfg)
        model = run.model = res.model.eval()
        # the protocol of validation and `fsrec evaluate`: held-out cold items are not candidates
        cmask = pretrain_candidate_mask(splits, mcfg.num_items)
        test = evaluate_next_item(model, splits.loo_test(), ks=(10,), candidate_mask=cmask)
        pop = evaluate_next_item(PopularityModel.fit(splits.loo_train(), len(splits.item_map)),
                                 splits.loo_test(), ks=(10,), candidate_mask=cmask)
        run.echo(f"   best epoch {res.best_epoch}, {res.seconds:.0f}s; warm-user test NDCG@10 "
                 f"{test['ndcg@10']:.4f} (popularity {pop['ndcg@10']:.4f}), HR@10 {test['hr@10']:.4f}")
        run.summary["pretrain"] = {"best_epoch": res.best_epoch, "seconds": res.seconds,
                                   "first_epoch_loss": res.history[0]["loss"] if res.history else None,
                                   "test": {k: v for k, v in test.items() if "@" in k},
                                   "popularity": {k: v for k, v in pop.items() if "@" in k}}


def _adapt_step(run: _Run) -> None:
    from .adaptation import AdaptConfig, adapt
    from .evaluation import evaluate_next_item

    cfg, splits = run.cfg, run.splits
    with _step(f"3/7 adapt to {len(splits.cold_users)} cold users from k={cfg.k} ({cfg.strategy})", run.echo):
        support, query = splits.support_query(cfg.k)
        zero = evaluate_next_item(run.model, query, ks=(10,))
        ad = adapt(run.model, support, strategy=cfg.strategy, config=AdaptConfig(seed=cfg.seed, device=cfg.device))
        adapted = evaluate_next_item(ad.model, query, ks=(10,))
        ad.save(run.work / "adapter")
        run.echo(f"   strategy used: {ad.strategy}; cold-user query NDCG@10 zero-shot {zero['ndcg@10']:.4f} "
                 f"-> adapted {adapted['ndcg@10']:.4f}")
        run.summary["adapt"] = {"strategy": ad.strategy, "zero_shot_ndcg@10": zero["ndcg@10"],
                                "adapted_ndcg@10": adapted["ndcg@10"], "seconds": ad.info.get("seconds")}
        run.served = ad.merged_model().eval()
        run.served.item_map = splits.item_map
        run.strategy = ad.strategy


def _export_step(run: _Run) -> None:
    from exporters.export import export_onnx

    from .data import RunRecord

    cfg = run.cfg
    with _step("4/7 export to ONNX with Optimum (validated against PyTorch)", run.echo):
        exp = export_onnx(run.served, run.work / "onnx" / "fp32", validate_with=[e.history for e in run.valid],
                          source=f"{run.spec.display_name} {cfg.objective} + {run.strategy} (k={cfg.k})",
                          extra=RunRecord.for_splits(run.splits).source_dict())
        v = exp.validation
        run.echo(f"   {exp.onnx_path} ({exp.size_kb:.0f} kB); max |score diff| {v.max_abs_diff:.2e}, "
                 f"top-10 agreement {v.top10_overlap:.4f}")
        run.summary["export"] = {"size_kb": exp.size_kb, "max_abs_diff": v.max_abs_diff,
                                 "top10_overlap": v.top10_overlap}
    run.export_dir = run.served_dir = Path(exp.output_dir)


def _quantize_step(run: _Run) -> None:
    """The exporters' chain (candidates -> guard -> choice) with its default candidates."""
    if not run.cfg.quantize:
        run.echo("\n== 5/7 quantization skipped (--no-quantize)")
        return
    with _step("5/7 optimize + quantize under the accuracy and batch-invariance guard", run.echo):
        from exporters.select_and_guard import select_and_guard

        report = select_and_guard(run.export_dir, run.valid, output_root=run.work / "onnx",
                                  calibration_histories=[s.items for s in run.splits.loo_train()[:512]])
        run.served_dir = Path(report.chosen_dir)
        run.echo(f"   serving {report.chosen}: {report.reason}")
        run.summary["quantize"] = {"chosen": report.chosen, "reason": report.reason,
                                   "guard_results": report.guard_results()}


def _repository_step(run: _Run) -> None:
    from exporters.repository import build_model_repository
    from exporters.user_repository import build_user_models, popularity_of

    cfg = run.cfg
    with _step(f"6/7 Triton model repository: {cfg.repository}", run.echo):
        rv = build_model_repository(cfg.repository, run.served_dir, target="cpu", version=cfg.version,
                                    overwrite=True)
        build_user_models(cfg.repository, popularity_of([q.items for q in run.splits.loo_train()], rv.meta.max_top_k))
        run.served.save_pretrained(run.work / "served")  # what the learner fits per-user parameters on
        run.echo(f"   wrote {rv.version_dir} and {rv.config_path}; fsrec_user + fsrec_events in front of it")


def _serve_step(run: _Run) -> None:
    from .client import RecommenderClient
    from .serving import serve

    cfg, work, echo = run.cfg, run.work, run.echo
    with _step("7/7 serve on Triton and query it", echo):
        store = work / "store.sqlite3"
        for suffix in ("", "-wal", "-shm"):  # the demo starts from an empty store
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        with serve(cfg.repository, http_port=cfg.http_port, grpc_port=cfg.grpc_port,
                   metrics_port=cfg.metrics_port, log_file=work / "tritonserver.log", store=str(store)) as server:
            echo(f"   tritonserver ready: gRPC {server.url_grpc}, HTTP {server.url_http} "
                 f"(log {server.log_path})")
            names = run.data.item_names
            with RecommenderClient.for_server(server, cfg.protocol) as client:
                shown = [_show_user(cfg, run.splits, names, client, seq, echo)
                         for seq in run.splits.cold_users[: cfg.show_users]]
                run.summary["live"] = _live_demo(cfg, run.splits, names, client, work, store, echo)
            run.summary["served"] = {"users": shown, "grpc": server.url_grpc, "http": server.url_http}
        echo("   tritonserver stopped")


def _show_user(cfg: PipelineConfig, splits, names: dict, client, seq, echo: Callable[[str], None]) -> dict:
    """Print one cold user's first k items and Triton's top-k for them; return what was shown."""
    history = splits.item_map.raws(seq.items[: cfg.k])
    truth = splits.item_map.raw(seq.items[cfg.k])
    rec = client.recommend(history, k=cfg.top_k)
    hit = truth in rec.items
    echo(f"\n   cold user {seq.user}: history (oldest first)")
    for it in history:
        echo(f"     - {it:>5} {names.get(it, '')}")
    echo(f"   top-{cfg.top_k} from Triton (model version {rec.model_version}):")
    for it, sc in zip(rec.items, rec.scores):
        mark = "  <- the user's actual next item" if it == truth else ""
        echo(f"     {sc:7.3f} {it:>5} {names.get(it, '')}{mark}")
    if not hit:
        echo(f"   (actual next item {truth} {names.get(truth, '')} not in the top {cfg.top_k})")
    return {"user": seq.user, "history": history, "items": rec.items, "titles": [names.get(it) for it in rec.items],
            "scores": rec.scores, "next_item": truth, "hit": hit}


def _live_demo(cfg: PipelineConfig, splits, names: dict, client, work: Path, store: Path,
               echo: Callable[[str], None]) -> dict:
    """The live loop on the first cold user not shown above: by user id before and after events."""
    from .learner import LearnerConfig
    from .learner.demo import show_loop

    echo("\n   -- the live loop: a new user's events are recorded, the learner adapts, Triton answers by user id")
    seq = splits.cold_users[min(cfg.show_users, len(splits.cold_users) - 1)]
    raws = splits.item_map.raws(seq.items[: cfg.k + 1])
    events = [(it, 1_000_000.0 + j) for j, it in enumerate(raws[: cfg.k])]
    return show_loop(client, LearnerConfig(model_dir=work / "served", store=str(store), fit_interval_s=0.0),
                     f"new-user-{seq.user}", events, raws[cfg.k], names, echo, cfg.top_k)


def _finish(cfg: PipelineConfig, work: Path, summary: dict, echo: Callable[[str], None]) -> dict:
    if cfg.stop_after:
        echo(f"\nstopped after the {cfg.stop_after} step (--stop-after)")
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    echo(f"\nsummary: {work / 'summary.json'}")
    cfg.summary = summary
    return summary
