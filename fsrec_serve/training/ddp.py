"""Multi-process pretraining with ``torch.distributed`` (DDP): gloo on CPU, NCCL on GPU.

A thin layer over :func:`~fsrec_serve.training.loop.train_loop`; nothing in the loop changes.

How the work is split: every rank builds the *same* global batches (same seed, same sequences,
same masking: batch building is cheap next to the transformer), and :class:`BatchShardDDP`
hands each rank its rows ``rank::world_size`` of every batch. The local loss is re-weighted by
the rank's share of labelled positions, so DDP's gradient average equals the gradient of the
single-process loss of the whole batch: with dropout off, a 2-process run follows the
1-process loss curve up to float rounding (``tests/unit/test_training_ddp.py``). Every rank evaluates the
same weights on the same validation examples, so early stopping decides the same everywhere
(checked each epoch: a disagreement raises instead of hanging). Rank 0 alone writes files.

Launch (one node; ``--nproc-per-node=gpu`` = one process per GPU)::

    torchrun --standalone --nproc-per-node=2 -m fsrec_serve.training.ddp \
        --dataset ml-100k --objective causal --epochs 50 --output-dir runs/pretrain-ddp

Multi-node: the same command on every node with ``--nnodes=N --node-rank=i
--rdzv-endpoint=<host>:29400`` instead of ``--standalone`` (see docs/deployment.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, TrainingError
from .config import TrainConfig
from .fitted import DEFAULT_OBJECTIVE, OBJECTIVES
from .loop import METRICS_FILE, TrainLoopResult, train_loop

log = logging.getLogger(__name__)

# keyword arguments of the model's forward that are not per-row tensors (never sharded)
_NOT_SHARDED = frozenset({"candidate_mask", "return_dict"})


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the process group."""

    rank: int  # global rank, 0 .. world_size - 1 (rank 0 writes files)
    world_size: int  # number of processes
    local_rank: int  # rank on this node (selects the GPU)
    backend: str  # "gloo" or "nccl"
    device: str  # torch device of this rank: "cpu" or "cuda:<local_rank>"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_backend(backend: str = "auto") -> str:
    """"auto" -> NCCL when CUDA is available, else gloo."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be 'gloo', 'nccl' or 'auto', got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend 'nccl' needs CUDA GPUs; use --backend gloo (or auto) on CPU")
    return backend


def init_distributed(backend: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Idempotent. Without torchrun's variables this is a
    one-process group (rank 0 of 1), so the same code runs under plain ``python``."""
    backend = resolve_backend(backend)
    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    return DistContext(rank, world, local_rank, backend, device)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class BatchShardDDP(nn.Module):
    """DDP over a model whose forward takes whole batches: keeps rows ``rank::world`` of every
    per-row tensor, runs the DDP forward on them and re-weights the loss by the rank's share of
    labelled positions (so the averaged gradient is the whole batch's). Attributes the wrapper
    does not have (``next_item_scores``, ``config``, ``item_map``, ...) come from the model, so
    evaluation code works on it unchanged."""

    def __init__(self, module: nn.Module, ctx: DistContext, find_unused_parameters: bool = True):
        super().__init__()
        module.to(ctx.device)
        device_ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
        # find_unused_parameters: a shard without rated positions leaves the rating head unused
        self.ddp = DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
        self.rank, self.world_size = ctx.rank, ctx.world_size

    def get_base_model(self) -> nn.Module:
        """The wrapped FsRecModel (what train_loop / evaluation call base_model() for)."""
        return self.ddp.module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "ddp":
                raise
            return getattr(self.ddp.module, name)

    def forward(self, **batch: Any) -> Any:
        ids = batch["input_ids"]  # [B, L]
        B = int(ids.shape[0])
        labels = batch.get("labels")  # [B, L] or None
        rows = torch.arange(self.rank, B, self.world_size, device=ids.device)  # this rank's rows
        empty = rows.numel() == 0
        if empty:  # fewer rows than ranks: run row 0 with zero weight (keeps DDP in step)
            rows = torch.zeros(1, dtype=torch.long, device=ids.device)
        local = {
            k: (v.index_select(0, rows) if torch.is_tensor(v) and k not in _NOT_SHARDED
                and v.dim() >= 1 and v.shape[0] == B else v)
            for k, v in batch.items()
        }
        out = self.ddp(**local)
        if labels is not None and getattr(out, "loss", None) is not None:
            total = int((labels != -100).sum())  # labelled positions in the whole batch
            mine = 0 if empty else int((local["labels"] != -100).sum())
            # mean over my positions * my share * world = my part of the whole batch's mean
            weight = (mine * self.world_size / total) if total else 0.0
            out.loss = out.loss * weight
        return out


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


def _all_reduce_minmax(value: float, ctx: DistContext) -> tuple[float, float]:
    dev = ctx.device if ctx.backend == "nccl" else "cpu"
    lo = torch.tensor([float(value)], dtype=torch.float64, device=dev)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return float(lo.item()), float(hi.item())


def ddp_train_loop(
    model: nn.Module,  # an FsRecModel (not yet wrapped); same initial weights on every rank
    sequences: Sequence,  # the SAME training sequences on every rank (list[UserSequence])
    train_config: TrainConfig,
    ctx: DistContext,
    valid_examples: Optional[Sequence] = None,  # same on every rank; early stopping on NDCG@10
    candidate_mask: Optional[torch.Tensor] = None,  # [N] bool
    **loop_kwargs: Any,  # passed on to train_loop (model_config, save_fn, evaluate_fn, ...)
) -> TrainLoopResult:
    """:func:`train_loop` across the process group. ``result.model`` is the unwrapped model;
    each history record gains ``global_loss`` (the loss of the whole batch, averaged over ranks).
    """
    if train_config.max_train_seconds is not None and ctx.world_size > 1:
        raise ConfigError(
            "max_train_seconds is per-process wall clock and would stop ranks at different "
            "epochs (a hang); bound distributed runs with epochs / patience instead"
        )
    tc = dataclasses.replace(train_config, device=ctx.device,
                             progress=train_config.progress and ctx.is_main)
    cfg = loop_kwargs.pop("model_config", None) or model.config
    user_hook = loop_kwargs.pop("on_epoch_end", None)
    wrapped = BatchShardDDP(model, ctx)

    def on_epoch_end(rec: dict) -> None:
        rec["global_loss"] = all_reduce_mean(rec["loss"], ctx)
        if "valid_ndcg@10" in rec:
            lo, hi = _all_reduce_minmax(rec["valid_ndcg@10"], ctx)
            if hi - lo > 1e-9:
                raise TrainingError(
                    f"ranks disagree on validation NDCG@10 at epoch {rec['epoch']} ({lo} vs {hi}): "
                    "weights diverged (non-deterministic kernels?); set patience=0"
                )
        if user_hook is not None:
            user_hook(rec)

    res = train_loop(wrapped, sequences, tc, valid_examples=valid_examples,
                     candidate_mask=candidate_mask, model_config=cfg,
                     on_epoch_end=on_epoch_end, **loop_kwargs)
    res.model = wrapped.get_base_model()
    res.model.eval()
    return res


def ddp_pretrain(
    splits,  # fsrec_serve.data.Splits, built identically on every rank (same seed)
    model_config=None,  # FsRecConfig; default: default_model_config(splits)
    train_config: Optional[TrainConfig] = None,  # default: default_train_config(splits)
    ctx: Optional[DistContext] = None,  # default: init_distributed() from torchrun's environment
):
    """:func:`~fsrec_serve.training.pretrain.pretrain` on every process of the group: same
    model, data and outputs (rank 0 writes ``output_dir``: weights, item_map.json,
    train_config.json, metrics.jsonl with ``global_loss``, fsrec_run.json)."""
    from .pretrain import (
        TRAIN_CONFIG_FILE, PretrainResult, build_model, default_evaluate_fn, default_model_config,
        default_train_config, pretrain_candidate_mask, run_record,
    )

    ctx = ctx or init_distributed()
    objective = model_config.objective if model_config is not None else DEFAULT_OBJECTIVE
    cfg = model_config or default_model_config(splits, objective)
    tc = train_config or default_train_config(splits, objective)
    torch.manual_seed(tc.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = build_model(splits, cfg)
    out_dir = Path(tc.output_dir) if tc.output_dir else None
    save_fn = None
    if out_dir is not None and ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tc.save(out_dir / TRAIN_CONFIG_FILE)

        def save_fn(m, epoch, rec):  # noqa: ANN001
            m.get_base_model().save_pretrained(out_dir)

    res = ddp_train_loop(
        model, splits.loo_train(), tc, ctx, valid_examples=splits.loo_valid(),
        candidate_mask=pretrain_candidate_mask(splits, cfg.num_items), model_config=cfg,
        save_fn=save_fn, evaluate_fn=default_evaluate_fn(),
    )
    if out_dir is not None and ctx.is_main:
        res.model.save_pretrained(out_dir)
        with open(out_dir / METRICS_FILE, "w") as f:
            for rec in res.history:
                f.write(json.dumps(rec) + "\n")
        run_record(splits, cfg.objective, res, world_size=ctx.world_size, backend=ctx.backend).save(out_dir)
    return PretrainResult(
        model=res.model, history=res.history, best_epoch=res.best_epoch, best_valid=res.best_valid,
        seconds=res.seconds, peak_mb=res.peak_mb, output_dir=out_dir,
        seconds_to_best=res.seconds_to_best, stopped_early=res.stopped_early,
    )


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun ... -m fsrec_serve.training.ddp",
        description="Distributed (DDP) pretraining; launch with torchrun.",
    )
    p.add_argument("--dataset", default="ml-100k", help="ml-100k or beauty")
    p.add_argument("--data-dir", default=None, help="folder of the data sets (env FSREC_DATA_DIR)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=DEFAULT_OBJECTIVE)
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--epochs", type=int, default=None, help="default: the data set's recommendation")
    p.add_argument("--batch-size", type=int, default=None, help="GLOBAL batch (split over ranks)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--output-dir", default=None, help="rank 0 saves the best model here")
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    ctx = init_distributed(args.backend)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"%(asctime)s rank{ctx.rank} %(levelname)s %(name)s: %(message)s")
    try:
        from ..data import SplitConfig, load_dataset, make_splits
        from ..settings import get_settings
        from .pretrain import default_model_config, default_train_config

        data = load_dataset(args.dataset, get_settings(data_dir=args.data_dir).data_dir)
        splits = make_splits(data, SplitConfig(seed=args.seed))
        overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size,
                                            lr=args.lr, patience=args.patience).items() if v is not None}
        tc = default_train_config(splits, args.objective, seed=args.seed,
                                  output_dir=args.output_dir, **overrides)
        res = ddp_pretrain(splits, default_model_config(splits, args.objective), tc, ctx)
        if ctx.is_main:
            print(json.dumps({"world_size": ctx.world_size, "backend": ctx.backend,
                              "best_epoch": res.best_epoch, "best_valid": res.best_valid,
                              "seconds": round(res.seconds, 1), "output_dir": str(res.output_dir)}))
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
