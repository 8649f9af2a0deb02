"""Evaluation protocols: next-item ranking (full or sampled) and rating error.

Any *scorer* works: an object with ``next_item_scores(history_ids [B, L]) -> [B, N]``
(``FsRecModel``, a PEFT-wrapped model, :class:`~fsrec_serve.evaluation.baselines.PopularityModel`).

Full ranking (``sampled_negatives=None``): the target is ranked against every item of the
catalogue; with ``exclude_history=True`` the user's own history items (all of them, not only
the ones that fit into the model's window) and the padding column are removed from the
candidates, as ICLRec does. The target itself always stays a candidate. ``candidate_mask``
([N] bool) can further restrict the catalogue (e.g. to the items the pretrained model knows).

Sampled (``sampled_negatives=100``): the target is ranked against 100 items drawn uniformly,
without replacement, from the catalogue minus the user's history and the target (seeded).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Protocol, Sequence

import numpy as np
import torch

from ..errors import ConfigError, EmptyUserError
from ..model.modeling_fsrec import pad_histories
from .metrics import rank_of_targets, summarize_ranks


class Scorer(Protocol):
    def next_item_scores(self, history_ids: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, N]
        ...


def _base_model(scorer: Any) -> Any:
    get = getattr(scorer, "get_base_model", None)
    return get() if callable(get) else scorer


def scorer_max_len(scorer: Any, examples: Sequence) -> int:
    """History length the scorer reads: config.max_seq_len, .max_seq_len, else the longest history."""
    base = _base_model(scorer)
    cfg = getattr(base, "config", None)
    L = getattr(cfg, "max_seq_len", None) or getattr(base, "max_seq_len", None)
    if L:
        return int(L)
    return max(1, max((len(e.history) for e in examples), default=1))


def scorer_device(scorer: Any, device=None) -> torch.device:
    if device is not None and device != "auto":
        return torch.device(device)
    params = getattr(scorer, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class _EvalMode:
    """Put a torch module in eval mode for the duration, restoring its training flag after."""

    def __init__(self, scorer: Any):
        self.m = scorer if isinstance(scorer, torch.nn.Module) else None

    def __enter__(self):
        self.was_training = self.m.training if self.m is not None else False
        if self.m is not None:
            self.m.eval()
        return self

    def __exit__(self, *exc):
        if self.m is not None and self.was_training:
            self.m.train()


def _batches(n: int, size: int) -> Iterable[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _check_examples(examples: Sequence) -> None:
    for e in examples:
        if len(e.history) == 0:
            raise EmptyUserError(
                f"user {e.user!r} has an empty history: next-item evaluation needs at least one "
                "earlier item; drop the example or give it a history"
            )


def _score_histories(scorer, histories, L, device) -> torch.Tensor:
    ids = pad_histories(histories, L).to(device)  # [B, L]
    return scorer.next_item_scores(ids).float()  # [B, N]


def evaluate_next_item(
    scorer: Scorer,
    examples: Sequence,  # list[Example] (user, history, target)
    ks: Sequence[int] = (5, 10, 20),
    exclude_history: bool = True,
    sampled_negatives: Optional[int] = None,  # None = full ranking; 100 = the sampled protocol
    batch_size: int = 256,
    device: Any = None,  # None = the scorer's device
    candidate_mask: Optional[torch.Tensor] = None,  # [N] bool, False = never a candidate
    seed: int = 0,  # seeds the negative sampling
    ties: str = "pessimistic",
    return_ranks: bool = False,  # add "ranks" (list of 0-based ranks) to the result
) -> dict[str, Any]:
    """HR@K, NDCG@K, MRR@K of the targets: {"hr@10": ..., "ndcg@10": ..., "mrr@10": ..., "n": E}."""
    if not examples:
        raise EmptyUserError("no examples to evaluate; check the split (every user filtered out?)")
    if sampled_negatives is not None and sampled_negatives < 1:
        raise ConfigError(f"sampled_negatives must be >= 1 or None, got {sampled_negatives}")
    _check_examples(examples)
    dev = scorer_device(scorer, device)
    L = scorer_max_len(scorer, examples)
    rng = np.random.default_rng(seed)
    ranks: list[torch.Tensor] = []
    cmask = candidate_mask.bool().cpu() if candidate_mask is not None else None
    with _EvalMode(scorer), torch.inference_mode():
        for sl in _batches(len(examples), batch_size):
            chunk = examples[sl]
            scores = _score_histories(scorer, [e.history for e in chunk], L, dev).cpu()  # [B, N]
            B, N = scores.shape
            targets = torch.tensor([e.target for e in chunk], dtype=torch.long)  # [B]
            if int(targets.max()) >= N or int(targets.min()) < 1:
                raise ConfigError(
                    f"target index out of range 1..{N - 1}: the examples use another item map "
                    "than the model; build them from the model's splits"
                )
            if sampled_negatives is None:
                exclude = torch.zeros(B, N, dtype=torch.bool)  # [B, N]
                exclude[:, 0] = True  # padding
                if cmask is not None:
                    exclude |= ~cmask[:N].unsqueeze(0)
                if exclude_history:
                    rows = torch.cat([torch.full((len(e.history),), i, dtype=torch.long)
                                      for i, e in enumerate(chunk)])
                    cols = torch.cat([torch.as_tensor(e.history, dtype=torch.long) for e in chunk])
                    exclude[rows, cols] = True
                ranks.append(rank_of_targets(scores, targets, exclude, ties=ties))
            else:
                allowed = np.arange(1, N) if cmask is None else np.flatnonzero(cmask[:N].numpy())
                allowed = allowed[allowed > 0]
                cand = torch.empty(B, 1 + sampled_negatives, dtype=torch.long)  # [B, 1 + S]
                for i, e in enumerate(chunk):
                    seen = set(e.history) if exclude_history else set()
                    seen.add(e.target)
                    cand[i, 0] = e.target
                    cand[i, 1:] = torch.as_tensor(
                        _sample_negatives(allowed, seen, sampled_negatives, rng, e.user)
                    )
                sub = scores.gather(1, cand)  # [B, 1 + S]
                ranks.append(rank_of_targets(sub, torch.zeros(B, dtype=torch.long), None, ties=ties))
    all_ranks = torch.cat(ranks)
    out: dict[str, Any] = summarize_ranks(all_ranks, ks)
    out["n"] = int(all_ranks.numel())
    if return_ranks:
        out["ranks"] = all_ranks.tolist()
    return out


def _sample_negatives(allowed: np.ndarray, seen: set, n: int, rng: np.random.Generator, user) -> list[int]:
    out: list[int] = []
    chosen: set = set()
    tries = 0
    while len(out) < n:
        draw = rng.choice(allowed, size=2 * (n - len(out)) + 8)
        for x in draw.tolist():
            if x not in seen and x not in chosen:
                chosen.add(x)
                out.append(x)
                if len(out) == n:
                    break
        tries += 1
        if tries > 50:
            free = np.setdiff1d(allowed, np.fromiter(seen | chosen, dtype=np.int64))
            if len(free) < n - len(out):
                raise ConfigError(
                    f"user {user!r}: only {len(free) + len(out)} items are left to sample as "
                    f"negatives, {n} asked; lower sampled_negatives"
                )
            out.extend(rng.choice(free, size=n - len(out), replace=False).tolist())
    return out


def evaluate_ratings(
    model: Any,  # has predict_ratings(history [B, L], items [B, C]) -> [B, C]
    examples: Sequence,  # Example with .rating = the true rating of .target
    batch_size: int = 256,
    device: Any = None,
) -> dict[str, float]:
    """RMSE and MAE of the predicted rating of each example's target item."""
    if not examples:
        raise EmptyUserError("no examples to evaluate")
    _check_examples(examples)
    dev = scorer_device(model, device)
    L = scorer_max_len(model, examples)
    sq, ab = 0.0, 0.0
    with _EvalMode(model), torch.inference_mode():
        for sl in _batches(len(examples), batch_size):
            chunk = examples[sl]
            ids = pad_histories([e.history for e in chunk], L).to(dev)
            items = torch.tensor([[e.target] for e in chunk], dtype=torch.long, device=dev)
            pred = model.predict_ratings(ids, items)[:, 0].float().cpu()  # [B]
            true = torch.tensor([float(e.rating) for e in chunk])
            sq += float(((pred - true) ** 2).sum())
            ab += float((pred - true).abs().sum())
    n = len(examples)
    return {"rmse": math.sqrt(sq / n), "mae": ab / n, "n": n}


def evaluate_checkpoint(
    model_dir,  # folder written by pretrain / save_pretrained
    dataset: Any = None,  # preset name or DataSpec; default: the data recorded in fsrec_run.json
    data_dir=None,  # where presets are; default: FSREC_DATA_DIR
    split: str = "test",  # "test" or "valid" (leave-one-out item)
    split_config=None,  # SplitConfig; default: the one recorded with the run, else SplitConfig()
    ks: Sequence[int] = (5, 10, 20),
    sampled_negatives: Optional[int] = None,
    ratings: bool = True,  # add rmse/mae when the model has a rating head and ratings vary
    popularity: bool = False,  # also evaluate the popularity baseline on the same examples
    device: Any = "cpu",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate a saved model on its data set's leave-one-out split (what ``fsrec evaluate`` runs).

    The split is rebuilt from the run's record (``RunRecord.splits``) so that the model is
    evaluated on the users and items it was validated on; cold items are not candidates (the
    pretrained model never learned them).
    """
    import dataclasses
    from pathlib import Path

    from ..data import RunRecord
    from ..errors import DataNotFoundError
    from ..model import FsRecModel
    from .baselines import PopularityModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise DataNotFoundError(
            f"{model_dir} holds no model (config.json missing); pass the --output-dir of `fsrec train`"
        )
    if split not in ("test", "valid"):
        raise ConfigError(f"split must be 'test' or 'valid', got {split!r}")
    record = RunRecord.find(model_dir)
    if dataset is not None:
        record = record.with_source(dataset) if record is not None else RunRecord.for_source(dataset)
    elif record is None:
        record = RunRecord.load(model_dir)  # the error: no record, no --dataset
    if split_config is not None:
        record = record.with_split(split_config)
    model = FsRecModel.from_pretrained(model_dir).to(device)
    model.eval()
    splits = record.splits(data_dir)
    if model.config.num_items != len(splits.item_map):
        raise ConfigError(
            f"the model knows {model.config.num_items} items but {record.dataset} has "
            f"{len(splits.item_map)}: wrong --dataset for this model?"
        )
    examples = splits.loo_test() if split == "test" else splits.loo_valid()
    cmask = torch.ones(len(splits.item_map) + 1, dtype=torch.bool)
    cmask[0] = False
    if len(splits.cold_items):
        cmask[torch.as_tensor(splits.cold_items, dtype=torch.long)] = False
    kw = dict(ks=ks, sampled_negatives=sampled_negatives, candidate_mask=cmask, batch_size=batch_size)
    out: dict[str, Any] = {
        "dataset": record.dataset,
        "split": split,
        "protocol": "loo-full" if sampled_negatives is None else f"loo-sampled{sampled_negatives}",
        "split_config": dataclasses.asdict(record.split_config),
        "model": evaluate_next_item(model, examples, device=device, **kw),
    }
    if ratings and model.rating_head is not None and len({e.rating for e in examples}) > 1:
        out["model"].update(evaluate_ratings(model, examples, batch_size=batch_size, device=device))
    if popularity:
        # counts over the histories the model reads at prediction time (no target leaks)
        pop = PopularityModel.fit([e.history for e in examples], len(splits.item_map))
        out["popularity"] = evaluate_next_item(pop, examples, **kw)
    return out
