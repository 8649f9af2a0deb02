"""Users who arrive after training: a stale model, cheap update rounds, and a retrain bound.

Protocol (ML-100K, the only data set here with real timestamps)
    * ``T`` = the ``quantile`` (0.8) of all interaction times. The *stale* model is pretrained
      on the interactions before ``T`` only.
    * *Arrivals* = users whose first interaction is at or after ``T``. For k in ``ks`` the query
      of an arrival with more than k interactions is their (k+1)-th item, predicted from their
      first k as history (full ranking, history excluded), at the query's time ``t_q``.
    * Time after ``T`` is cut into ``n_rounds`` update rounds of equal event counts (boundaries
      ``b_0 = T < b_1 < ... < b_{R-1}``; on ML-100K 5 rounds = one update every ~4,000 events,
      every 2-7 days). A deployment runs one update at each boundary ``b_r`` on the events before
      ``b_r`` and serves the updated model until ``b_{r+1}``; a query at ``t_q`` in round r is
      answered by the model of ``b_r``. Nothing at or after ``b_r`` is ever used: no future leak.
    * Paths (each reused for the queries of its round):
        - ``stale``: the model of ``T``, never updated;
        - ``cohort`` (adapted): at ``b_r`` the previous round's model is fine-tuned for a few
          epochs on the *new slice*: the tail windows (history before ``b_r``) of the users who
          had events in ``[b_{r-1}, b_r)``; old positions in those windows act as replay;
        - ``retrain`` (upper bound): at ``b_r`` a fresh model pretrained on every event before
          ``b_r`` with the stale model's recipe (early stopping on each user's last event).
    * ``gap_closed`` = (adapted - stale) / (retrain - stale) on the mean NDCG@10 of all
      queries; ``relative_gain`` = method mean / stale mean - 1 with a 95 % bootstrap CI over
      users (paired: the same users' queries for both). Round-0 queries (before the first
      update) get the stale model in every path; they are kept so that every arrival counts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..idmap import IdMap
from ..data.splits import Example, SplitConfig, Splits, UserSequence
from ..errors import ConfigError


@dataclass
class ArrivalsConfig:
    quantile: float = 0.8  # T = this quantile of all interaction times (stale cut-off)
    n_rounds: int = 5  # update rounds after T, equal event counts (round 0 = stale model)
    ks: tuple = (1, 3, 5, 10)  # support sizes of the arrivals' queries
    min_train_len: int = 3  # users with fewer events before a cut train without a valid item


@dataclass
class Event:
    item: int  # item index (IdMap of the whole log)
    rating: float  # explicit rating
    time: int  # unix time


@dataclass
class Query:
    example: Example  # history = the user's first k items, target = the (k+1)-th
    time: int  # the target's timestamp
    round: int  # index of the update round whose model answers it


@dataclass
class Timeline:
    name: str  # data set name
    item_map: IdMap  # every item of the log
    item_features: Optional[np.ndarray]  # [vocab, F] or None
    feature_names: list  # feature column names
    events: dict  # user -> list[Event] in time order
    T: int  # stale cut-off time
    boundaries: list = field(default_factory=list)  # [b_0 = T, b_1, ..., b_{R-1}]

    def round_of(self, t: int) -> int:
        """Index r of the last boundary b_r <= t (0 for anything before b_1)."""
        return max(0, int(np.searchsorted(self.boundaries, t, side="right")) - 1)


def build_timeline(data, cfg: Optional[ArrivalsConfig] = None) -> Timeline:
    """Timeline of an ``Interactions`` log with real timestamps (module docstring)."""
    from ..data.splits import make_splits

    cfg = cfg or ArrivalsConfig()
    if not getattr(data, "has_timestamps", True):
        raise ConfigError(f"data set {data.name!r} has no timestamps; the arrivals protocol needs "
                          "real interaction times (use ml-100k)")
    if not 0 < cfg.quantile < 1 or cfg.n_rounds < 1:
        raise ConfigError("quantile must be in (0, 1) and n_rounds >= 1")
    base = make_splits(data, SplitConfig(cold_user_frac=0.0, cold_item_frac=0.0))  # ids, features
    item_map = base.item_map
    raw = data.sequences()
    events = {u: [Event(item_map.index(i), float(r), int(t)) for i, r, t in raw[u]]
              for u in base.full_sequences}
    ts = np.sort(np.asarray(data.timestamps, dtype=np.int64))
    T = int(np.quantile(ts, cfg.quantile))
    after = ts[ts >= T]
    bounds = [T] + [int(np.quantile(after, r / cfg.n_rounds)) for r in range(1, cfg.n_rounds)]
    return Timeline(data.name, item_map, base.item_features, base.feature_names, events, T,
                    sorted(set(bounds)))


def arrival_users(tl: Timeline) -> list:
    """Users whose first interaction is at or after T."""
    return [u for u, ev in tl.events.items() if ev and ev[0].time >= tl.T]


def arrival_queries(tl: Timeline, k: int) -> list[Query]:
    """One query per arrival with more than k events (module docstring)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    out = []
    for u in arrival_users(tl):
        ev = tl.events[u]
        if len(ev) <= k:
            continue
        ex = Example(u, [e.item for e in ev[:k]], ev[k].item, ev[k].rating, [e.rating for e in ev[:k]])
        out.append(Query(ex, ev[k].time, tl.round_of(ev[k].time)))
    return out


def sequences_before(tl: Timeline, t: int, users: Optional[Sequence] = None) -> list[UserSequence]:
    """Every (or ``users``') sequence truncated to the events strictly before ``t``."""
    out = []
    for u in (users if users is not None else tl.events):
        ev = [e for e in tl.events[u] if e.time < t]
        if ev:
            out.append(UserSequence(u, [e.item for e in ev], [e.rating for e in ev]))
    return out


def train_valid_before(tl: Timeline, t: int, min_train_len: int = 3):
    """(training sequences, validation examples) of the events before ``t``: each user with at
    least ``min_train_len`` events holds out their last one for early stopping."""
    train, valid = [], []
    for s in sequences_before(tl, t):
        if len(s) >= min_train_len:
            train.append(UserSequence(s.user, s.items[:-1], s.ratings[:-1]))
            valid.append(Example(s.user, s.items[:-1], s.items[-1], s.ratings[-1], s.ratings[:-1]))
        elif len(s) >= 2:
            train.append(s)
    return train, valid


def splits_before(tl: Timeline, t: int) -> Splits:
    """A ``Splits`` view of the events before ``t`` for ``training.pretrain``: items never seen
    before ``t`` are the cold items (id embedding zero, out of the pretraining softmax)."""
    seqs = sequences_before(tl, t)
    seen = np.zeros(tl.item_map.vocab_size, dtype=bool)
    for s in seqs:
        seen[s.items] = True
    cold = np.asarray([i for i in range(1, len(tl.item_map) + 1) if not seen[i]], dtype=np.int64)
    return Splits(tl.name, SplitConfig(cold_user_frac=0.0, cold_item_frac=0.0), tl.item_map,
                  tl.item_features, tl.feature_names, seqs, [], cold,
                  {s.user: s for s in seqs})


def new_slice(tl: Timeline, t0: int, t1: int) -> list[UserSequence]:
    """Sequences before ``t1`` of the users with at least one event in ``[t0, t1)``."""
    users = [u for u, ev in tl.events.items() if any(t0 <= e.time < t1 for e in ev)]
    return [s for s in sequences_before(tl, t1, users) if len(s) >= 2]


@dataclass
class CohortUpdateConfig:
    epochs: int = 3  # passes over the new slice per round (fixed: no validation pass to pay)
    lr: float = 5e-4  # AdamW learning rate (below pretraining's 1e-3: a nudge, not a restart)
    batch_size: int = 32  # windows per step (the pretraining batch of ML-100K causal)
    seed: int = 0  # seeds the batches
    num_threads: Optional[int] = None  # torch CPU threads; None = leave as is


def cohort_update(model, sequences: Sequence[UserSequence], cfg: Optional[CohortUpdateConfig] = None,
                  candidate_mask=None):
    """A copy of ``model`` fine-tuned (all weights) on ``sequences`` (their tail windows) for
    ``cfg.epochs`` epochs; ``model`` is not modified."""
    from ..training import TrainConfig, train_loop

    cfg = cfg or CohortUpdateConfig()
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0,
                     patience=0, seed=cfg.seed, device="cpu", num_threads=cfg.num_threads,
                     window="tail", progress=False)
    res = train_loop(m, list(sequences), tc, candidate_mask=candidate_mask)
    out = res.model.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def paired_relative_gain(method: Sequence[float], base: Sequence[float], users: Sequence,
                         n_boot: int = 2000, seed: int = 0) -> dict:
    """``mean(method) / mean(base) - 1`` over paired per-query values, with a 95 % bootstrap CI
    that resamples users (all of a user's queries move together)."""
    a, b = np.asarray(method, dtype=float), np.asarray(base, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ConfigError("paired_relative_gain needs two non-empty arrays of the same length")
    uniq, inv = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    sa, sb = np.bincount(inv, a, len(uniq)), np.bincount(inv, b, len(uniq))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    num, den = sa[idx].sum(1), sb[idx].sum(1)
    boots = np.where(den > 0, num / np.where(den > 0, den, 1) - 1.0, np.nan)
    gain = a.sum() / b.sum() - 1.0 if b.sum() > 0 else float("nan")
    lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if np.isfinite(boots).any() else (np.nan, np.nan)
    return {"mean": float(gain), "ci_low": float(lo), "ci_high": float(hi), "n_users": int(len(uniq)),
            "boot_undefined": float(np.isnan(boots).mean())}  # share of resamples with a zero baseline


def gap_closed(adapted: float, stale: float, retrain: float) -> float:
    """(adapted - stale) / (retrain - stale); NaN when retrain does not beat stale."""
    gap = retrain - stale
    return float((adapted - stale) / gap) if gap > 0 else float("nan")


def gap_closed_ci(adapted: Sequence[float], stale: Sequence[float], retrain: Sequence[float],
                  users: Sequence, n_boot: int = 2000, seed: int = 0) -> dict:
    """``gap_closed`` of the query means with a 95 % bootstrap CI that resamples users."""
    a, s, r = (np.asarray(x, dtype=float) for x in (adapted, stale, retrain))
    uniq, inv = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    sa, ss, sr = (np.bincount(inv, x, len(uniq)) for x in (a, s, r))
    idx = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
    num, den = (sa[idx] - ss[idx]).sum(1), (sr[idx] - ss[idx]).sum(1)
    boots = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    ok = np.isfinite(boots)
    lo, hi = np.percentile(boots[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan)
    return {"mean": gap_closed(a.sum(), s.sum(), r.sum()), "ci_low": float(lo), "ci_high": float(hi),
            "n_users": int(len(uniq)), "boot_defined": float(ok.mean())}


def seen_mask(tl: Timeline, t: int):
    """[N] bool torch mask: True for the items with at least one event before ``t``."""
    import torch

    mask = torch.zeros(len(tl.item_map) + 1, dtype=torch.bool)
    for ev in tl.events.values():
        for e in ev:
            if e.time < t:
                mask[e.item] = True
    return mask


def ranks_with_user_params(model, examples: Sequence[Example], user_params=None, batch_size: int = 256):
    """[E] 0-based full-ranking ranks of the targets (own history and padding excluded, ties
    pessimistic, as ``evaluate_next_item``) with optional per-user offsets [E, H]."""
    import torch

    from ..evaluation.metrics import rank_of_targets
    from ..model.modeling_fsrec import pad_histories

    out = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            x = pad_histories([e.history for e in chunk], model.config.max_seq_len)
            up = None if user_params is None else user_params[i:i + batch_size]
            s = model.next_item_scores(x, user_params=up)  # [B, N]
            ex = torch.zeros_like(s, dtype=torch.bool)
            for r, e in enumerate(chunk):
                ex[r, torch.as_tensor(e.history, dtype=torch.long)] = True
            ex[:, 0] = True
            out.append(rank_of_targets(s, torch.as_tensor([e.target for e in chunk]), ex))
    return torch.cat(out).numpy()
