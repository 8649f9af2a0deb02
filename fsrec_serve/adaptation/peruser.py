"""Per-user micro-tuning: one user-state offset per user, all users fitted in ONE optimisation.

Parameter set: ``user_params`` [U, H], an offset added to the user state before scoring
(``FsRecModel.apply_user_params``; the exported graph's optional ``user_params`` input), so every
user is served by ONE base model; zeros give the zero-shot answer exactly.

Fit (``fit_user_params``), on each user's OWN support only (query items are never seen):

* pairs: every support prefix predicts its next support item (causal: items[:t] -> items[t],
  t = 1..k-1; cloze also t = 0, the first item from [MASK] alone). The frozen base's states of
  the prefixes are computed once (no grad through the encoder);
* loss of user u: mean next-item cross-entropy over u's pairs (the prefix's items are left out of
  the softmax, as in evaluation) + ``l2 * ||offset_u||^2``; the users' losses are summed and Adam
  is elementwise, so the stacked fit equals fitting each user alone (tested to 1e-5);
* inner check: the LAST support item is held out. Rows [lr candidate x {inner, full} x user] are
  optimised together; "inner" rows train without the held-out pair and are scored on it at the
  step checkpoints, "full" rows train on every pair (the parameters served);
* selection (support only): the (lr, steps) with the best mean inner NDCG@10 over users; if it
  does not beat zero-shot's inner NDCG@10, nobody is adapted;
* per-user self-adaptation rule: user u gets the fitted offset iff, at the chosen (lr, steps),
  the held-out item's rank does not get worse AND its log-probability rises by more than
  ``margin`` against zero-shot; otherwise u gets zeros (zero-shot). Users without a held-out
  check (fewer than ``min_support`` items: k = 1 and 2 on a causal model) get zeros.

Bad supports (empty, only unknown items) and diverging rows (non-finite loss or parameters, e.g.
an extreme lr) never stop the fit: the user is reported in ``result.failed`` and gets zeros.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.splits import UserSequence
from ..errors import AdaptationError, ConfigError, SupportSetError
from ..evaluation.metrics import ndcg_at_k
from .strategies import fsrec_of


@dataclass
class PerUserConfig:
    """Knobs of the per-user offset fit (defaults chosen on ML-100K supports, fold 0, k=5)."""

    lrs: tuple = (0.03, 0.1, 0.3)  # Adam learning-rate candidates (selected on the inner check)
    steps: tuple = (10, 25, 50)  # step checkpoints (selected on the inner check); max = steps run
    l2: float = 1e-2  # weight of ||offset_u||^2 (pulls the offset toward 0 = zero-shot)
    margin: float = 0.0  # log-probability rise the held-out item needs for u to be adapted
    min_support: int = 3  # least support items for an inner check (causal: 2 train + 1 held out)
    per_user_check: bool = True  # False: every fitted user is adapted (no per-user rule)
    candidates: int = 0  # softmax over the target + the base's top (candidates - 1) items of each
    #   pair (hard negatives; ~N/candidates times cheaper); 0 = full softmax over the catalogue
    users_per_chunk: int = 512  # users fitted per optimisation (memory: pairs x items floats)
    # fit only each user's newest ``max_pairs`` (prefix -> next item) pairs, every prefix being the
    # FULL history before its target (0 = every pair of the support). With it, a growing history
    # keeps its prefixes: the online learner's state cache then runs the encoder once per event
    max_pairs: int = 0
    seed: int = 0  # unused by the fit itself (deterministic); recorded with the result

    def __post_init__(self) -> None:
        self.lrs, self.steps = tuple(float(x) for x in self.lrs), tuple(sorted(int(s) for s in self.steps))
        if not self.lrs or any(not math.isfinite(x) or x <= 0 for x in self.lrs):
            raise ConfigError(f"lrs must be positive finite numbers, got {self.lrs}")
        if not self.steps or self.steps[0] < 1:
            raise ConfigError(f"steps must be step counts >= 1, got {self.steps}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        if self.candidates < 0 or self.candidates == 1:
            raise ConfigError(f"candidates must be 0 (full softmax) or >= 2, got {self.candidates}")
        if self.min_support < 2:
            raise ConfigError(f"min_support must be >= 2 (a pair to train + an item to check), got {self.min_support}")


@dataclass
class PerUserResult:
    users: list  # user ids, row order of ``params``
    params: torch.Tensor  # [U, H] float32 offsets; zeros for zero-shot users
    adapted: np.ndarray  # [U] bool: the user got a fitted offset
    failed: dict = field(default_factory=dict)  # user -> why it fell back to zero-shot
    info: dict = field(default_factory=dict)  # chosen lr/steps, inner scores, seconds
    fitted: Optional[torch.Tensor] = None  # [U, H] fitted offsets before the per-user rule

    def params_for(self, users: Sequence[str]) -> torch.Tensor:
        """[len(users), H] offsets in the order of ``users`` (zeros for unknown users)."""
        row = {u: i for i, u in enumerate(self.users)}
        out = torch.zeros(len(users), self.params.shape[1])
        for j, u in enumerate(users):
            if u in row:
                out[j] = self.params[row[u]]
        return out

    def save(self, path: str | Path) -> Path:
        """Write {user: offset} as JSON atomically (a failed write leaves an older file intact)."""
        path = Path(path)
        if not torch.isfinite(self.params).all():
            raise AdaptationError(f"refusing to save non-finite user_params to {path}; refit with a lower lr")
        body = {"users": list(self.users), "params": self.params.tolist(),
                "adapted": self.adapted.tolist(), "failed": self.failed}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh)
        os.replace(tmp, path)
        return path


def check_user_support(s: UserSequence, num_items: int) -> UserSequence:
    """One user's support -> the usable part; SupportSetError naming the problem and the fix."""
    if len(s.items) == 0:
        raise SupportSetError(f"user {s.user!r}: empty support; give the user at least one interaction "
                              "or serve them zero-shot (no user_params)")
    known = [int(i) for i in s.items if 1 <= int(i) <= num_items]
    if not known:
        raise SupportSetError(f"user {s.user!r}: every support item is unknown to the model (indices "
                              f"{list(s.items)[:5]} outside 1..{num_items}); map raw ids with the model's "
                              "item_map, or serve the user from popularity")
    return UserSequence(s.user, known, [1.0] * len(known))


def first_k(sequence: UserSequence, k: int) -> UserSequence:
    """The first ``k`` interactions of a user; SupportSetError when the history is shorter."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if len(sequence) < k:
        raise SupportSetError(f"k={k} is larger than user {sequence.user!r}'s history ({len(sequence)} "
                              f"interactions); use k <= {len(sequence)} or leave the user out")
    return UserSequence(sequence.user, sequence.items[:k], sequence.ratings[:k])


@torch.no_grad()
def _states(model, histories: list[list[int]], batch: int = 1024) -> torch.Tensor:
    """Frozen user states [P, H] of ``histories`` (each padded to the longest)."""
    from ..model import pad_histories

    width = max(1, max((len(h) for h in histories), default=1))
    width = min(width, model.config.max_seq_len)
    out = [model.user_state(pad_histories(histories[i:i + batch], width)) for i in range(0, len(histories), batch)]
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


def _rank_logp(logits: torch.Tensor, targets: torch.Tensor):
    """logits [P, N] (excluded columns already very negative) -> (rank 1 = best, log-prob) [P]."""
    t = logits.gather(1, targets[:, None])  # [P, 1]
    rank = (logits > t).sum(1) + 1
    return rank, (t[:, 0] - torch.logsumexp(logits, 1))


class _Pairs:
    """Flattened (state, target, excluded items) pairs of many users for one optimisation."""

    def __init__(self, model, seqs: list[UserSequence], min_t: int, cache: Optional["StateCache"] = None,
                 max_pairs: int = 0):
        hist, tgt, owner, last = [], [], [], []
        for u, s in enumerate(seqs):
            first = max(min_t, len(s) - max_pairs) if max_pairs else min_t
            for t in range(first, len(s)):
                hist.append(s.items[:t])
                tgt.append(s.items[t])
                owner.append(u)
                last.append(t == len(s) - 1)
        if cache is not None:
            self.states = cache.states(model, hist)
        else:
            self.states = _states(model, hist) if hist else torch.zeros(0, model.config.hidden_size)
        self.targets = torch.tensor(tgt, dtype=torch.long)
        self.owner = torch.tensor(owner, dtype=torch.long)
        self.last = torch.tensor(last, dtype=torch.bool)
        width = max((len(h) for h in hist), default=0)
        self.exclude = torch.zeros(len(hist), max(1, width), dtype=torch.long)  # 0 = padding column
        for i, (h, t) in enumerate(zip(hist, tgt)):
            h = [x for x in h if x != t]  # a repeated item stays a valid target
            if h:
                self.exclude[i, : len(h)] = torch.tensor(h)


def _logits(model, states: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """[P, H] states -> [P, N] scores with padding and the prefix's own items excluded."""
    from ..contract import MASK_VALUE

    z = model.score_state(states)
    return z.scatter(1, exclude, MASK_VALUE)


class StateCache:
    """Frozen-model states of history prefixes, kept across fits (the online learner refits the
    same users as their histories grow: only the new prefixes need the encoder). Bounded LRU;
    valid for one model only (``model_fingerprint`` checked on use)."""

    def __init__(self, max_entries: int = 200_000):
        from collections import OrderedDict

        self.max_entries, self.fingerprint, self.hits, self.misses = max_entries, None, 0, 0
        self._model_id = None  # the model object last checked (weights are not changed in place)
        self._d: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()  # prefix digest -> state [H]

    def states(self, model, histories: list[list[int]]) -> torch.Tensor:
        from ..model import model_fingerprint

        if not histories:
            return torch.zeros(0, model.config.hidden_size)
        if id(model) != self._model_id:  # hash the weights once per model object, not per fit
            fp = model_fingerprint(model)
            if fp != self.fingerprint:
                self._d.clear()
                self.fingerprint = fp
            self._model_id = id(model)
        keys = [hashlib.blake2b(np.asarray(h, dtype=np.int64).tobytes(), digest_size=16).digest() for h in histories]
        todo = {}
        for k, h in zip(keys, histories):
            if k not in self._d and k not in todo:
                todo[k] = list(h)
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if todo:
            for k, st in zip(todo, _states(model, list(todo.values()))):
                self._d[k] = st
        out = torch.stack([self._d[k] for k in keys])
        for k in keys:
            self._d.move_to_end(k)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)
        return out


def fit_user_params(model, support: Sequence[UserSequence], config: Optional[PerUserConfig] = None,
                    cache: Optional[StateCache] = None) -> PerUserResult:
    """Fit one offset per user of ``support`` (module docstring); never reads a query item."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = config or PerUserConfig()
    base = fsrec_of(model).eval()
    if support is None or len(support) == 0:
        raise SupportSetError("the support set is empty: give at least one user with interactions "
                              "(support=[UserSequence(user, items, ratings)])")
    H = base.config.hidden_size
    users = [s.user for s in support]
    failed: dict = {}
    ok: list[tuple[int, UserSequence]] = []
    for i, s in enumerate(support):
        try:
            ok.append((i, check_user_support(s, base.config.num_items)))
        except SupportSetError as e:
            failed[s.user] = str(e)
    params, fitted = torch.zeros(len(users), H), torch.zeros(len(users), H)
    adapted = np.zeros(len(users), dtype=bool)
    fit = [(i, s) for i, s in ok if len(s) >= cfg.min_support]
    info: dict = {"n_users": len(users), "n_fitted": len(fit), "chunks": []}
    for c in range(0, len(fit), cfg.users_per_chunk):
        chunk = fit[c:c + cfg.users_per_chunk]
        p, a, fl, cinfo, raw = _fit_chunk(base, [s for _, s in chunk], cfg, cache)
        for j, (i, s) in enumerate(chunk):
            params[i], adapted[i], fitted[i] = p[j], a[j], raw[j]
            if j in fl:
                failed[s.user] = fl[j]
        info["chunks"].append(cinfo)
    if info["chunks"]:
        first = info["chunks"][0]
        info.update(lr=first["lr"], steps=first["steps"], inner_ndcg=first["inner_ndcg"],
                    inner_zero_shot_ndcg=first["inner_zero_shot_ndcg"])
    info["n_adapted"] = int(adapted.sum())
    info["seconds"] = time.perf_counter() - t0
    info["cpu_seconds"] = time.process_time() - c0
    return PerUserResult(users=users, params=params, adapted=adapted, failed=failed, info=info, fitted=fitted)


@torch.no_grad()
def _fit_chunk(base, seqs: list[UserSequence], cfg: PerUserConfig, cache: Optional[StateCache] = None):
    """One vectorized optimisation for ``seqs`` (all with >= min_support items)."""
    U, H, G = len(seqs), base.config.hidden_size, len(cfg.lrs)
    min_t = 0 if base.config.objective == "cloze" else 1
    pairs = _Pairs(base, seqs, min_t, cache, cfg.max_pairs)
    table = base.item_vectors()[: base.config.num_items + 1].detach()  # [N, H]
    base_logits = _logits(base, pairs.states, pairs.exclude)  # [P, N]
    N = base_logits.shape[1]
    C = cfg.candidates if 0 < cfg.candidates < N else 0
    if C:  # target first, then the C - 1 best-scored other items of the frozen base
        others = base_logits.scatter(1, pairs.targets[:, None], float("-inf"))
        cand = torch.cat([pairs.targets[:, None], others.topk(C - 1, dim=1).indices], 1)  # [P, C]
        logits_all = base_logits.gather(1, cand)  # [P, C]
    # inner check: the held-out (last) pair of each user, full ranking
    held = torch.nonzero(pairs.last).squeeze(1)  # [U] in user order
    held_bl, held_t = base_logits[held], pairs.targets[held]
    zs_rank, zs_logp = _rank_logp(held_bl, held_t)
    # two pair sets: v = 0 "inner" (without the held-out pair), v = 1 "full" (every pair)
    blocks = []
    for v in (0, 1):
        idx = torch.nonzero(torch.ones_like(pairs.last) if v else ~pairs.last).squeeze(1)
        own = pairs.owner[idx]
        scale = (1.0 / torch.bincount(own, minlength=U).clamp(min=1).float())[own][:, None]  # [S, 1]
        if C:  # the candidates' item vectors, gathered once: [S, C, H]
            blocks.append((own, scale, logits_all[idx], table[cand[idx]], torch.zeros_like(idx)))
        else:
            blocks.append((own, scale, base_logits[idx], None, pairs.targets[idx]))
    # parameters: P[g, v] = [U, H] offsets of lr candidate g, pair set v; Adam is elementwise
    P = torch.zeros(G, 2, U, H)
    m, v2 = torch.zeros_like(P), torch.zeros_like(P)
    b1, b2, eps = 0.9, 0.999, 1e-8
    lr = torch.tensor(cfg.lrs).view(G, 1, 1, 1)
    alive = torch.ones(G, 2, U, dtype=torch.bool)
    checks, snaps = {}, {}
    for step in range(1, max(cfg.steps) + 1):
        grad = 2.0 * cfg.l2 * P
        loss = cfg.l2 * (P * P).sum(-1)  # [G, 2, U]
        for g in range(G):
            for v, (own, scale, bl, cols, tgt) in enumerate(blocks):  # cols: [S, C, H] or None
                if bl.shape[0] == 0:
                    continue
                # forward + analytic gradient of CE (softmax - onehot), no autograd graph; the
                # offsets' item scores are computed once per user ([U, N]), not once per pair
                if C:
                    Z = bl + torch.einsum("sch,sh->sc", cols, P[g, v][own])  # [S, C]
                else:
                    Z = bl + (P[g, v] @ table.t())[own]  # [S, N]
                lse = torch.logsumexp(Z, 1)
                ar = torch.arange(Z.shape[0])
                ce = lse - Z[ar, tgt]
                Z.sub_(lse[:, None]).exp_()
                Z[ar, tgt] -= 1.0
                Z.mul_(scale)
                if C:
                    grad[g, v].index_add_(0, own, torch.einsum("sc,sch->sh", Z, cols))
                else:
                    grad[g, v] += torch.zeros(U, N).index_add_(0, own, Z) @ table  # [U, H]
                loss[g, v].index_add_(0, own, ce * scale[:, 0])
        bad = ~torch.isfinite(loss) | ~torch.isfinite(grad).all(-1)
        alive &= ~bad
        grad[~alive] = 0.0
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        P -= lr * (m / (1 - b1 ** step)) / ((v2 / (1 - b2 ** step)).sqrt() + eps)
        alive &= torch.isfinite(P).all(-1)
        P[~alive] = 0.0
        if step in cfg.steps:
            for g in range(G):
                checks[(g, step)] = _rank_logp(held_bl + P[g, 0] @ table.t(), held_t)
                snaps[(g, step)] = P[g, 1].clone()
    zs_ndcg = float(ndcg_at_k(zs_rank - 1, 10).mean())  # _rank_logp's ranks are 1-based
    scores = {key: float(ndcg_at_k(r - 1, 10).mean()) for key, (r, _) in checks.items()}
    best = max(scores, key=lambda key: (scores[key], -key[1], -key[0]))  # fewest steps, smallest lr on ties
    g, step = best
    failed = {}
    dead = ~alive[g].all(0)  # [U] a row of this user at the chosen lr diverged
    for u in torch.nonzero(dead).squeeze(1).tolist():
        failed[u] = (f"the per-user fit diverged (non-finite loss or parameters) at lr={cfg.lrs[g]}; "
                     "lower PerUserConfig.lrs; the user is served zero-shot")
    if scores[best] <= zs_ndcg:
        use = torch.zeros(U, dtype=torch.bool)
    elif cfg.per_user_check:
        r, lp = checks[best]
        use = (r <= zs_rank) & (lp > zs_logp + cfg.margin)
    else:
        use = torch.ones(U, dtype=torch.bool)
    use &= ~dead
    params = torch.where(use[:, None], snaps[best], torch.zeros(U, H))
    info = {"lr": cfg.lrs[g], "steps": step, "inner_ndcg": scores[best], "inner_zero_shot_ndcg": zs_ndcg,
            "grid": {f"{cfg.lrs[gg]}@{s}": round(v, 5) for (gg, s), v in scores.items()},
            "n_users": U, "n_pairs": int(pairs.targets.numel()), "candidates": C or N}
    return params, use.numpy(), failed, info, snaps[best]


@torch.no_grad()
def score_users(model, histories: Sequence[Sequence[int]], user_params: Optional[torch.Tensor]) -> torch.Tensor:
    """histories (newest last) + user_params [B, H] (or None) -> next-item scores [B, N]."""
    from ..model import pad_histories

    base = fsrec_of(model)
    x = pad_histories([list(h) for h in histories], base.config.max_seq_len)
    return base.next_item_scores(x, user_params=user_params)
