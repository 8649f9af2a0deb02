"""The folds and fold bases of the k-shot benchmark (``bench/fewshot_r18.py``).

User folds (``coldstart-k{k}``)
    Every user with at least ``K_MAX + 1`` interactions is a cold user in exactly one of
    ``n_folds`` folds (``coldstart.user_folds``). The other users are the fold's warm users.

Time folds (``coldstart-time-k{k}``)
    Users ordered by their first event; fold j's cold users are those whose first event falls in
    [T_j, T_{j+1}) (T_j = a quantile of the first-event times). The fold's base is pretrained
    on the events before T_j only (every earlier user's sequence cut at T_j): nothing it sees
    happened after its cold users arrived.

Inner users
    A random share of each fold's warm users whose first ``K_MAX + 1`` interactions are left out
    of the fold's pretraining sequences (the rest of their sequence is kept). Their first k items
    and (k+1)-th item are the inner validation on which every hyperparameter of the benchmark
    is chosen: the base never trained on the prefix it is asked to continue, as for a cold user,
    and no cold user's query is read.

Fold bases
    Per fold, the ML-100K causal recipe (``FULL_RECIPE``: 200-item history, 40 epochs, batch
    32, patience 10, early stopping on the warm users' validation item) as ``base``, and the same
    with prefix windows (``TrainConfig.prefix_prob = 0.5``) as ``prefix``. Checkpoints are cached.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data.splits import SplitConfig, Splits, UserSequence
from ..errors import ConfigError
from .coldstart import user_folds

K_MAX = 10  # the largest k of the benchmark: cold and inner users need K_MAX + 1 interactions

# The ML-100K causal recipe, pinned here so the fold bases do not move with the library's
# defaults (recorded from recommended_config("ml-100k", "causal")).
FULL_RECIPE = {
    "model": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                  max_seq_len=200, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
                  objective="causal"),
    "train": dict(epochs=40, batch_size=32, lr=1e-3, weight_decay=0.01, patience=10),
}
VARIANTS = {"base": {}, "prefix": {"prefix_prob": 0.5}}  # TrainConfig overrides per base


@dataclass
class KshotFold:
    name: str  # "user-3", "time-0": the fold's protocol family and index
    splits: Splits  # warm = pretraining users (sequences as pretrained), cold_users = test users
    inner: list = field(default_factory=list)  # UserSequence of the inner users (full prefixes)
    cut_time: Optional[int] = None  # time folds: events at or after it are not pretrained on

    def pretrain_sequences(self) -> list[UserSequence]:
        """The warm users' leave-one-out training sequences without the inner users' first
        ``K_MAX + 1`` items."""
        inner = {s.user for s in self.inner}
        out = []
        for s in self.splits.loo_train():
            cut = K_MAX + 1 if s.user in inner else 0
            out.append(UserSequence(s.user, s.items[cut:], s.ratings[cut:]))
        return [s for s in out if len(s) >= 2]


def pick_inner(splits: Splits, frac: float, seed: int) -> list[UserSequence]:
    """A random ``frac`` of the warm users long enough to lose their first K_MAX + 1 items and
    still keep a training part, validation and test item (sorted by user)."""
    ok = [s for s in splits.warm if len(s) >= K_MAX + 1 + 4]
    n = int(round(frac * len(ok)))
    idx = np.random.default_rng(seed).permutation(len(ok))[:n]
    return sorted((ok[i] for i in idx), key=lambda s: s.user)


def all_warm_splits(data) -> Splits:
    from ..data import make_splits

    return make_splits(data, SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))


def kshot_user_folds(data, n_folds: int = 5, inner_frac: float = 0.2, seed: int = 0) -> list[KshotFold]:
    """The user folds (module docstring), each with its inner users."""
    folds = user_folds(all_warm_splits(data), n_folds, seed=seed, min_len=K_MAX + 1)
    return [KshotFold(f"user-{f}", sp, pick_inner(sp, inner_frac, seed + 100 + f)) for f, sp in enumerate(folds)]


def first_event_times(data, splits: Splits) -> dict:
    """{user: [event time per position of ``splits.full_sequences[user]``]}."""
    from .coldstart import interaction_times

    times = interaction_times(data)
    return {u: [times[(u, p)] for p in range(len(s))] for u, s in splits.full_sequences.items()}


def kshot_time_folds(data, quantiles: Sequence[float] = (0.5, 0.75), inner_frac: float = 0.2,
                     seed: int = 0) -> list[KshotFold]:
    """The time folds (module docstring): fold j's cold users arrive in [T_j, T_{j+1})."""
    if not data.has_timestamps:
        raise ConfigError("time folds need a log with timestamps")
    sp = all_warm_splits(data)
    times = first_event_times(data, sp)
    first = {u: t[0] for u, t in times.items()}
    cuts = [int(np.quantile(list(first.values()), q)) for q in quantiles] + [np.iinfo(np.int64).max]
    out = []
    for j in range(len(quantiles)):
        lo, hi = cuts[j], cuts[j + 1]
        cold = [sp.full_sequences[u] for u in sorted(first) if lo <= first[u] < hi
                and len(sp.full_sequences[u]) >= K_MAX + 1]
        warm = []
        for s in sp.warm:
            n = sum(1 for t in times[s.user] if t < lo)  # events are time-sorted
            if n >= 3:
                warm.append(UserSequence(s.user, s.items[:n], s.ratings[:n]))
        fsp = dataclasses.replace(sp, warm=warm, cold_users=cold)
        out.append(KshotFold(f"time-{j}", fsp, pick_inner(fsp, inner_frac, seed + 200 + j), cut_time=lo))
    return out


def fold_base(fold: KshotFold, variant: str, cache: str | Path, seed: int = 0, num_threads: int = 1,
              log=print, max_train_seconds: Optional[float] = None):
    """(model, run info) of one fold base, pretrained and cached under ``cache`` when missing."""
    from ..model import FsRecConfig, FsRecModel
    from ..training import TrainConfig, pretrain
    from ..training.loop import has_varying_ratings

    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    out = Path(cache) / f"{fold.name}-{variant}-s{seed}"
    if (out / "model.safetensors").exists() and (out / "fsrec_run.json").exists():
        return FsRecModel.from_pretrained(str(out)).eval(), json.loads((out / "fsrec_run.json").read_text())
    sp = fold.splits
    log(f"  pretraining {fold.name} {variant} seed {seed} ({len(sp.warm)} warm, {len(fold.inner)} inner, "
        f"{len(sp.cold_users)} cold) -> {out}")
    mc = FsRecConfig(num_items=len(sp.item_map), rating_head=has_varying_ratings(sp.warm),
                     num_item_features=0 if sp.item_features is None else int(sp.item_features.shape[1]),
                     **FULL_RECIPE["model"])
    tmp = out.with_name(out.name + ".partial")  # a failed run never replaces a finished one
    tc = TrainConfig(**FULL_RECIPE["train"], **VARIANTS[variant], seed=seed, device="cpu",
                     num_threads=num_threads, progress=False, output_dir=str(tmp),
                     max_train_seconds=max_train_seconds)
    res = pretrain(sp, mc, tc, train_sequences=fold.pretrain_sequences())
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return res.model.eval(), json.loads((out / "fsrec_run.json").read_text())
