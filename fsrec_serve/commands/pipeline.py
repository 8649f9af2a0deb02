"""``fsrec pipeline``: the main job end to end (train -> adapt -> export -> Triton -> query)."""

from __future__ import annotations

from pathlib import Path


def add_parsers(sub) -> None:
    from ..data.args import add_data_arguments
    from ..pipeline import STEPS, PipelineConfig

    d = PipelineConfig()
    p = sub.add_parser(
        "pipeline",
        help="run the main job end to end: data, pretrain, adapt, export, quantize, repository, "
        "Triton, recommendations",
    )
    p.add_argument("--dataset", default=d.dataset, help="ml-100k (default) or beauty; or your own log with --data")
    p.add_argument("--data-dir", type=Path, default=None, help="data sets folder (env FSREC_DATA_DIR)")
    p.add_argument("--work-dir", type=Path, default=d.work_dir, help="where runs are written")
    p.add_argument("--repository", type=Path, default=d.repository, help="Triton model repository")
    p.add_argument("--objective", choices=["causal", "cloze"], default=d.objective)
    p.add_argument("--epochs", type=int, default=d.epochs, help="pretraining epochs at most")
    p.add_argument("--max-train-seconds", type=float, default=d.max_train_seconds,
                   help="pretraining time budget in seconds (0 = none)")
    p.add_argument("--max-seq-len", type=int, default=None, help="history length (default: recommended)")
    p.add_argument("--hidden-size", type=int, default=None, help="model width (default: recommended)")
    p.add_argument("--batch-size", type=int, default=None, help="pretraining batch (default: recommended)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--k", type=int, default=d.k, help="support size of the adapted cold cohort")
    p.add_argument("--strategy", default=d.strategy, help="adaptation strategy (default auto)")
    p.add_argument("--no-quantize", dest="quantize", action="store_false",
                   help="serve FP32 without trying optimized/INT8 graphs")
    p.add_argument("--show-users", type=int, default=d.show_users)
    p.add_argument("--protocol", choices=["grpc", "http"], default=d.protocol)
    p.add_argument("--device", default=d.device, help="cpu, cuda or auto")
    p.add_argument("--no-features", dest="use_features", action="store_false",
                   help="do not feed item categories (genres / --item-metadata) to the model")
    p.add_argument("--stop-after", choices=STEPS, default=None,
                   help="stop after this step (e.g. pretrain: check a new data source cheaply)")
    add_data_arguments(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..data import data_source_from_args
    from ..pipeline import PipelineConfig, run_pipeline

    spec = data_source_from_args(args)  # --data ..., else the preset --dataset (cleaning options apply)
    cfg = PipelineConfig(
        dataset=args.dataset, data_dir=args.data_dir, data=spec, use_features=args.use_features,
        stop_after=args.stop_after, verbose=bool(getattr(args, "verbose", False)), work_dir=args.work_dir,
        repository=args.repository, objective=args.objective, epochs=args.epochs,
        max_seq_len=args.max_seq_len, hidden_size=args.hidden_size, batch_size=args.batch_size,
        max_train_seconds=args.max_train_seconds or None, seed=args.seed, k=args.k,
        strategy=args.strategy, quantize=args.quantize, show_users=args.show_users,
        protocol=args.protocol, device=args.device,
    )
    run_pipeline(cfg)
    return 0
