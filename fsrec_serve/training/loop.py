"""The reusable training loop (pretraining and few-shot fine-tuning share it)."""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import TrainingError
from .adversarial import EmbeddingAdversary
from .batches import make_training_batches
from .config import TrainConfig
from .schedules import linear_warmup_decay

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SELECTION_METRIC = "ndcg@10"  # early stopping and checkpoint selection


@dataclass
class TrainLoopResult:
    model: Any  # the trained model, best validation state restored
    history: list[dict] = field(default_factory=list)  # one dict per epoch (loss, lr, valid metrics)
    best_epoch: int = 0  # epoch (1-based) whose state was kept; the last epoch when no validation
    best_valid: dict = field(default_factory=dict)  # validation metrics of that epoch
    seconds: float = 0.0  # wall-clock seconds of the whole loop
    seconds_to_best: float = 0.0  # wall-clock seconds until the end of the best epoch
    epochs_run: int = 0  # epochs actually run (early stopping / time budget may cut)
    stopped_early: bool = False  # True when patience ran out
    peak_mb: float = 0.0  # peak resident memory of the process (MB); + GPU peak on cuda


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' asked but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def base_model(model: Any) -> Any:
    """The underlying FsRecModel of a PEFT-wrapped model (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _no_decay(name: str, p: torch.nn.Parameter) -> bool:
    lname = name.lower()
    return p.ndim < 2 or lname.endswith("bias") or "layernorm" in lname or "layer_norm" in lname


def parameter_groups(
    model: torch.nn.Module,
    weight_decay: float,
    trainable_parameters: Union[None, Iterable[torch.nn.Parameter], Callable[[str, torch.nn.Parameter], bool]] = None,
) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases / LayerNorm / 1-d parameters.

    ``trainable_parameters``: None = every parameter with requires_grad; an iterable of
    parameters; or a predicate ``f(name, param) -> bool``.
    """
    if trainable_parameters is None:
        keep = lambda n, p: p.requires_grad  # noqa: E731
    elif callable(trainable_parameters):
        pred = trainable_parameters
        keep = lambda n, p: p.requires_grad and pred(n, p)  # noqa: E731
    else:
        ids = {id(p) for p in trainable_parameters}
        keep = lambda n, p: id(p) in ids  # noqa: E731
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not keep(n, p):
            continue
        (no_decay if _no_decay(n, p) else decay).append(p)
    if not decay and not no_decay:
        raise TrainingError("no trainable parameters: check requires_grad or trainable_parameters")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def has_varying_ratings(sequences: Sequence) -> bool:
    """True when the sequences carry at least two different rating values."""
    first = None
    for s in sequences:
        for r in s.ratings:
            if first is None:
                first = r
            elif r != first:
                return True
    return False


def _train_epoch(model, batches, optimizer, scheduler, params, tc, device, cmask, adversary,
                 epoch: int) -> dict:
    """One pass over ``batches``: the epoch's record (mean losses, lr, steps, seconds)."""
    t0 = time.perf_counter()
    model.train()
    loss_sum, ce_sum, mse_sum, n_steps = 0.0, 0.0, 0.0, 0
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out = model(**batch, candidate_mask=cmask)
        loss = out.loss
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {float(loss.detach())} at epoch {epoch}: lower lr (now {tc.lr}) or "
                "raise max_grad_norm clipping"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if adversary is not None and adversary.perturb():  # the loss where it hurts most, added
            model(**batch, candidate_mask=cmask).loss.backward()
            adversary.restore()
        if tc.max_grad_norm and tc.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if adversary is not None:
            adversary.clear_frozen_grad()
        loss_sum += float(loss.detach())
        ce_sum += float(out.next_item_loss.detach()) if out.next_item_loss is not None else 0.0
        mse_sum += float(out.rating_loss.detach()) if out.rating_loss is not None else 0.0
        n_steps += 1
    return {"epoch": epoch, "loss": loss_sum / max(1, n_steps), "next_item_loss": ce_sum / max(1, n_steps),
            "rating_loss": mse_sum / max(1, n_steps), "lr": scheduler.get_last_lr()[0], "steps": n_steps,
            "train_seconds": time.perf_counter() - t0}


def _optimizer_and_batches(model, sequences, tc: TrainConfig, cfg, rng, use_ratings: bool, candidate_mask,
                           trainable_parameters):
    """AdamW over the trainable parameters, the first epoch's batches and the lr schedule."""
    groups = parameter_groups(model, tc.weight_decay, trainable_parameters)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.98), eps=1e-8)
    first_batches = make_training_batches(sequences, cfg, tc, rng, use_ratings, candidate_mask)
    if not first_batches:
        raise TrainingError(
            "no training batches: every sequence is too short (causal needs >= 2 items, cloze >= 1)"
        )
    scheduler = linear_warmup_decay(optimizer, tc.epochs * len(first_batches), tc.warmup_ratio)
    return params, optimizer, scheduler, first_batches


class _Selection:
    """Validation, best-state bookkeeping and early stopping of one ``train_loop`` run: after each
    epoch, evaluate when due, keep the best state (the latest without validation), count the
    evaluations without improvement."""

    def __init__(self, result: TrainLoopResult, tc: TrainConfig, valid_examples, evaluate_fn,
                 eval_kwargs: dict, save_fn, start: float):
        self.result, self.tc, self.valid, self.evaluate_fn = result, tc, valid_examples, evaluate_fn
        self.eval_kwargs, self.save_fn, self.start = eval_kwargs, save_fn, start
        self.best_score, self.best_state, self.bad_evals = -math.inf, None, 0

    def after_epoch(self, model, epoch: int, rec: dict, out_of_time: bool) -> None:
        """Evaluate when due (adds ``valid_*`` and ``seconds`` to ``rec``); keep a new best state."""
        improved = False
        last = epoch == self.tc.epochs
        if self.valid and (epoch % max(1, self.tc.eval_every) == 0 or last or out_of_time):
            metrics = dict(self.evaluate_fn(model, self.valid, **self.eval_kwargs))
            metrics.pop("n", None)
            rec.update({f"valid_{k}": v for k, v in metrics.items()})
            score = metrics.get(SELECTION_METRIC, 0.0)
            if score > self.best_score:
                self.best_score, improved, self.bad_evals = score, True, 0
                self.result.best_valid = dict(metrics)
            else:
                self.bad_evals += 1
        elif not self.valid:
            improved = True  # no validation: keep the latest state
        rec["seconds"] = time.perf_counter() - self.start
        if improved:
            self.result.best_epoch = epoch
            self.result.seconds_to_best = rec["seconds"]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if self.save_fn is not None:
                self.save_fn(model, epoch, rec)
        self.result.history.append(rec)
        self.result.epochs_run = epoch

    @property
    def patience_ran_out(self) -> bool:
        return bool(self.valid and self.tc.patience and self.bad_evals >= self.tc.patience)

    def restore_best(self, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def _progress_bar(tc: TrainConfig):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=tc.epochs, desc="train", unit="epoch", disable=not tc.progress)


def _report_epoch(rec: dict, log_file, on_epoch_end, bar) -> None:
    """The epoch's record to the JSONL log, the caller's hook and the progress bar."""
    if log_file:
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()
    if on_epoch_end:
        on_epoch_end(rec)
    if bar is not None:
        post = {"loss": f"{rec['loss']:.3f}"}
        if "valid_ndcg@10" in rec:
            post["ndcg@10"] = f"{rec['valid_ndcg@10']:.4f}"
        bar.set_postfix(post)
        bar.update(1)
    log.debug("epoch %d: %s", rec["epoch"], rec)


def train_loop(
    model: Any,  # FsRecModel or a PEFT-wrapped FsRecModel
    sequences: Sequence,  # list[UserSequence]: the training sequences
    train_config: Optional[TrainConfig] = None,
    valid_examples: Optional[Sequence] = None,  # list[Example] for early stopping (NDCG@10 via evaluate_fn)
    candidate_mask: Optional[torch.Tensor] = None,  # [N] bool, False = item out of the softmax
    trainable_parameters=None,  # None | iterable of parameters | predicate(name, param)
    *,
    model_config: Any = None,  # FsRecConfig; default: the (base) model's config
    use_ratings: Optional[bool] = None,  # None = train_config.use_ratings and ratings vary
    save_fn: Optional[Callable[[Any, int, dict], None]] = None,  # called on every new best
    log_path: Optional[Union[str, Path]] = None,  # JSONL, one line per epoch
    eval_kwargs: Optional[dict] = None,  # extra keyword arguments for evaluate_fn
    evaluate_fn: Optional[Callable[..., dict]] = None,  # (model, valid_examples, **kw) -> {"ndcg@10": ...}
    on_epoch_end: Optional[Callable[[dict], None]] = None,  # sees each epoch's record
) -> TrainLoopResult:
    """Train ``model`` on ``sequences`` with the objective of its config.

    AdamW (no decay on biases/LayerNorm), linear warmup + decay, gradient clipping, full softmax
    cross-entropy (the model's forward), optional rating loss, early stopping on validation
    NDCG@10 with the best state restored at the end. The validation metric comes from the caller:
    ``evaluate_fn(model, valid_examples, ks=(10,), batch_size=..., device=..., candidate_mask=...)``
    returns a dict with ``ndcg@10`` (``fsrec_serve.evaluation.evaluate_next_item`` fits; the
    training package never imports evaluation). The forward is called with keyword
    arguments only, so a PEFT-wrapped model works.
    """
    tc = train_config or TrainConfig()
    if valid_examples and evaluate_fn is None:
        raise TrainingError(
            "valid_examples needs evaluate_fn= (the validation metric), e.g. "
            "fsrec_serve.evaluation.evaluate_next_item; or pass valid_examples=None"
        )
    cfg = model_config or base_model(model).config
    set_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    device = resolve_device(tc.device)
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if use_ratings is None:
        use_ratings = bool(tc.use_ratings and getattr(cfg, "rating_head", False)
                           and has_varying_ratings(sequences))
    cmask = candidate_mask.bool().to(device) if candidate_mask is not None else None
    params, optimizer, scheduler, batches = _optimizer_and_batches(
        model, sequences, tc, cfg, rng, use_ratings, candidate_mask, trainable_parameters)

    log_file = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w")
    ekw = dict(ks=(10,), batch_size=tc.eval_batch_size, device=device, candidate_mask=candidate_mask)
    ekw.update(eval_kwargs or {})
    result = TrainLoopResult(model=model)
    start = time.perf_counter()
    selection = _Selection(result, tc, valid_examples, evaluate_fn, ekw, save_fn, start)
    bar = _progress_bar(tc)
    table = base_model(model).item_embeddings.weight
    adversary = (EmbeddingAdversary(table, tc.adversarial_eps, owned=any(p is table for p in params))
                 if tc.adversarial_eps else None)
    try:
        for epoch in range(1, tc.epochs + 1):
            if epoch > 1:
                batches = make_training_batches(sequences, cfg, tc, rng, use_ratings, candidate_mask)
            rec = _train_epoch(model, batches, optimizer, scheduler, params, tc, device, cmask, adversary,
                               epoch)
            if not use_ratings:
                rec.pop("rating_loss")
            out_of_time = tc.max_train_seconds is not None and time.perf_counter() - start >= tc.max_train_seconds
            selection.after_epoch(model, epoch, rec, out_of_time)
            _report_epoch(rec, log_file, on_epoch_end, bar)
            if selection.patience_ran_out:
                result.stopped_early = True
                break
            if out_of_time:
                log.info("stopping after %.0f s (max_train_seconds)", rec["seconds"])
                break
    finally:
        if adversary is not None:
            adversary.close()
        if bar is not None:
            bar.close()
        if log_file:
            log_file.close()
    selection.restore_best(model)
    result.seconds = time.perf_counter() - start
    result.peak_mb = peak_rss_mb()
    if device.type == "cuda":
        result.peak_mb += torch.cuda.max_memory_allocated(device) / 2**20
    model.eval()
    return result
