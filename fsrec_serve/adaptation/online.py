"""Online learning steps of the live loop: per-user parameters refitted from the newest items, and
a guarded refinement of the served model on the newest slice of the log.

Both are library calls shared by the live learner (events from the store, models to Triton) and
the prequential replay (``experiments.replay``):

* ``refit_user_params``: one vectorized ``fit_user_params`` over every given user's newest
  ``window`` items; users the per-user rule leaves zero-shot (or with fewer than ``min_support``
  items) get zeros, so every user has a row;
* ``refine_model``: a copy of the served model is fine-tuned (``continual_adapt``) on the recent
  users' sequences without their LAST item, mixed with replayed old sequences. The candidate is
  accepted iff (1) its NDCG@10 on those held-out newest events is >= (1 - tolerance) x the served
  model's and (2) on the held-out last items of a sample of replayed old users (left out of the
  fine-tuning) new / served NDCG@10 >= ``min_forgetting``. The served model is never modified and
  a bad candidate never raises: it is refused with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data.splits import Example, UserSequence
from ..errors import ConfigError
from ..model.fingerprint import model_fingerprint
from .config import AdaptConfig
from .continual import continual_adapt
from .fitting import inner_score
from .peruser import PerUserConfig, StateCache, fit_user_params
from .strategies import fsrec_of


def refit_user_params(model, histories: dict, window: int = 20,
                      config: Optional[PerUserConfig] = None, cache: Optional[StateCache] = None,
                      context: str = "window") -> tuple[dict, dict]:
    """{user: float32 [H]} for EVERY user of ``histories`` (item indices, newest last), fitted on
    their newest ``window`` items in ONE ``fit_user_params`` call; zeros for the users the
    per-user rule leaves zero-shot, with too few or only unknown items. Returns (params, info)
    with info = seconds, cpu_seconds, n_users, n_fitted, n_adapted (+ the fit's chosen lr/steps)."""
    t0, c0 = time.perf_counter(), time.process_time()
    H = fsrec_of(model).config.hidden_size
    out = {u: np.zeros(H, dtype=np.float32) for u in histories}
    if context not in ("window", "history"):
        raise ConfigError(f"context must be 'window' or 'history', got {context!r}")
    # "window": the newest `window` items are the whole support (what the replays measured);
    # "history": the newest `window` items are the targets, each with its full prefix as context
    keep = window if context == "window" else int(fsrec_of(model).config.max_seq_len) + window
    seqs = [UserSequence(u, [int(i) for i in h[-keep:]], [1.0] * len(h[-keep:]))
            for u, h in histories.items() if len(h) > 0]
    if context == "history":
        config = dataclasses.replace(config or PerUserConfig(), max_pairs=window - 1)
    info: dict = {"n_users": len(out), "n_fitted": 0, "n_adapted": 0}
    if seqs:
        res = fit_user_params(model, seqs, config, cache)
        params = res.params.detach().cpu().numpy().astype(np.float32)
        for row, u in enumerate(res.users):
            out[u] = params[row].copy()
        info.update({k: res.info[k] for k in ("n_fitted", "n_adapted", "lr", "steps") if k in res.info})
        info["failed"] = len(res.failed)
    info["seconds"] = time.perf_counter() - t0
    info["cpu_seconds"] = time.process_time() - c0
    return out, info


@dataclass
class RefineConfig:
    """Knobs of one guarded refinement of the served model (``refine_model``)."""

    epochs: int = 3  # passes over the recent + replayed sequences (the inner check may keep fewer)
    lr: Optional[float] = None  # peak learning rate; None = the strategy's default (full: 5e-4)
    strategy: str = "full"  # adaptation strategy of the copy ("full", "lora", ...; merged at the end)
    replay_ratio: float = 1.0  # replayed old sequences per recent sequence
    tolerance: float = 0.0  # accept iff new NDCG@10 >= (1 - tolerance) x served NDCG@10 on the
    #   recent users' held-out newest events (0.0: not worse)
    min_forgetting: float = 0.98  # accept iff new / served NDCG@10 on the held-out last items of
    #   the sampled replay users is >= this
    forgetting_users: int = 300  # replay users sampled for the forgetting check (left out of training)
    seed: int = 0  # replay sample, forgetting sample and training seed
    max_seconds: Optional[float] = None  # wall-clock cap of the fine-tuning (None = no cap)


@dataclass
class RefineResult:
    model: Any  # the candidate as a plain FsRecModel (adapter merged); None if fine-tuning failed.
    #   Serve it only when ``accepted``
    accepted: bool  # both guards passed
    reason: str  # why it was accepted or refused
    served_ndcg: float  # served model's NDCG@10 on the recent users' held-out newest events
    new_ndcg: float  # the candidate's NDCG@10 on the same events
    forgetting: float  # candidate / served NDCG@10 on the replay users' held-out last items
    n_recent: int  # held-out newest events the first guard was measured on
    cpu_seconds: float  # process CPU seconds of the whole refinement (fit + guards)
    seconds: float  # wall-clock seconds of the whole refinement
    fingerprint: Optional[str]  # model_fingerprint of the candidate (None without one)


def _hold_out_last(seqs: Sequence[UserSequence]) -> tuple[list[UserSequence], list[Example]]:
    """(sequences without their last item, the last items as examples); users with one item
    train on nothing and are not evaluated (no history to predict from)."""
    train, held = [], []
    for s in seqs:
        if len(s) >= 2:
            train.append(UserSequence(s.user, list(s.items[:-1]), list(s.ratings[:-1])))
            held.append(Example(s.user, list(s.items[:-1]), s.items[-1], s.ratings[-1], list(s.ratings[:-1])))
    return train, held


def _finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _ratio(new: float, old: float) -> float:
    if old > 0:
        return new / old
    return 1.0 if new >= old else 0.0


def _sample_forgetting(replay: Sequence[UserSequence], cfg: RefineConfig):
    """(replay for training with the sampled users' last item removed, their held-out examples)."""
    eligible = [i for i, s in enumerate(replay) if len(s) >= 3]
    rng = np.random.default_rng(cfg.seed)
    n = min(len(eligible), cfg.forgetting_users)
    picked = set(int(i) for i in rng.choice(eligible, size=n, replace=False)) if n else set()
    train, held = [], []
    for i, s in enumerate(replay):
        if i in picked:
            t, h = _hold_out_last([s])
            train += t
            held += h
        else:
            train.append(s)
    return train, held


def refine_model(model, recent: Sequence[UserSequence], replay: Sequence[UserSequence],
                 config: Optional[RefineConfig] = None) -> RefineResult:
    """Fine-tune a copy of ``model`` on ``recent`` (minus each user's newest event) + ``replay``
    and accept it only if it passes both guards (module docstring); never raises on a bad one."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = config or RefineConfig()
    served = fsrec_of(model)
    train, held = _hold_out_last(recent)
    old_train, old_held = _sample_forgetting(list(replay or []), cfg)

    def result(cand, ok: bool, reason: str, s=float("nan"), n=float("nan"), f=float("nan")) -> RefineResult:
        fp = model_fingerprint(cand) if cand is not None else None
        return RefineResult(cand, ok, reason, s, n, f, len(held), time.process_time() - c0,
                            time.perf_counter() - t0, fp)

    if not held:
        return result(None, False, "no recent user has 2 or more events: nothing to hold out or learn")
    try:
        acfg = AdaptConfig(epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, device="cpu",
                           max_train_seconds=cfg.max_seconds)
        res = continual_adapt(served, train, strategy=cfg.strategy, config=acfg, replay=old_train,
                              replay_ratio=cfg.replay_ratio)
        cand = copy.deepcopy(res.merged_model()).eval()
        for p in cand.parameters():
            p.requires_grad_(False)
    except Exception as e:  # noqa: BLE001 (a failed candidate is refused, never raised)
        return result(None, False, f"fine-tuning failed: {type(e).__name__}: {e}")
    if getattr(res, "strategy", cfg.strategy) == "zero_shot":
        return result(cand, False, f"fine-tuning degraded to zero-shot: {res.info.get('degraded', '')}")
    if not _finite(cand):
        return result(cand, False, "the candidate has non-finite weights (diverged); lower RefineConfig.lr")
    s_ndcg, n_ndcg = inner_score(served, held), inner_score(cand, held)
    forgetting = _ratio(inner_score(cand, old_held), inner_score(served, old_held)) if old_held else 1.0
    if not (math.isfinite(n_ndcg) and n_ndcg >= (1.0 - cfg.tolerance) * s_ndcg):
        return result(cand, False, f"newest events: candidate NDCG@10 {n_ndcg:.4f} < (1 - {cfg.tolerance:g}) x "
                      f"served {s_ndcg:.4f} on {len(held)} held-out events", s_ndcg, n_ndcg, forgetting)
    if not (math.isfinite(forgetting) and forgetting >= cfg.min_forgetting):
        return result(cand, False, f"forgetting: candidate / served NDCG@10 {forgetting:.4f} < "
                      f"{cfg.min_forgetting:g} on {len(old_held)} replayed users' held-out items",
                      s_ndcg, n_ndcg, forgetting)
    return result(cand, True, f"accepted: newest events NDCG@10 {s_ndcg:.4f} -> {n_ndcg:.4f} "
                  f"({len(held)} events), old users ratio {forgetting:.4f}", s_ndcg, n_ndcg, forgetting)
