"""Chronological per-user sequences and the splits every protocol uses.

Protocol (deterministic from ``SplitConfig.seed``):

1. Each user's interactions are sorted by time (ties keep file order) -> a sequence.
2. **Cold items** (``cold_item_frac`` of the catalogue) are held out of pretraining:
   ``strategy="latest"`` takes the items whose first interaction is latest (needs timestamps),
   ``"least"`` the least-interacted ones (ties broken by the seed). Every interaction with a cold
   item is removed from the pretraining sequences; they stay in ``full_sequences`` for the
   cold-item scenario.
3. **Cold users** (``cold_user_frac`` of the users with at least ``min_cold_user_len``
   interactions, drawn with the seed) are removed from pretraining entirely. Their support is the
   first k interactions and their query the rest (see ``support_query``).
4. The remaining **warm users** are split leave-one-out: last item = test, second-to-last =
   validation, the rest = training (``loo_train`` / ``loo_valid`` / ``loo_test``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, EmptyUserError
from ..idmap import IdMap
from .readers import Interactions
from .spec import DataSpec


@dataclass
class SplitConfig:
    seed: int = 0  # drives every random choice below
    cold_user_frac: float = 0.1  # share of eligible users held out as cold-start users
    min_cold_user_len: int = 11  # a cold user needs k_max + 1 interactions (k up to 10)
    cold_item_frac: float = 0.05  # share of the catalogue held out as cold-start items
    cold_item_strategy: str = "auto"  # "latest", "least", or "auto" (latest if timestamps)
    min_warm_len: int = 3  # warm users need train + valid + test items


@dataclass
class UserSequence:
    user: str  # raw user id
    items: list[int]  # item indices in time order (newest last)
    ratings: list[float]  # aligned ratings (1.0 for implicit data)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Example:
    """One prediction task: the model sees ``history`` and must rank ``target`` high."""

    user: str  # raw user id
    history: list[int]  # item indices, newest last
    target: int  # item index to predict
    rating: float = 1.0  # the user's rating of ``target``
    history_ratings: list[float] = field(default_factory=list)  # aligned with history


@dataclass
class Splits:
    name: str  # data set name
    config: SplitConfig  # how the split was made
    item_map: IdMap  # every item of the log (warm and cold), index 0 = padding
    item_features: np.ndarray | None  # [vocab, n_features] float32 (row 0 = padding) or None
    feature_names: list[str]  # names of the feature columns
    warm: list[UserSequence]  # pretraining users, sequences without cold items
    cold_users: list[UserSequence]  # users never seen in pretraining (full sequences)
    cold_items: np.ndarray  # item indices held out of pretraining
    full_sequences: dict[str, UserSequence]  # every user's full sequence (cold items included)
    source: DataSpec | None = None  # the log's DataSpec, when it was read from one (RunRecord keeps it)

    # -- leave-one-out on warm users -------------------------------------------------------
    def loo_train(self) -> list[UserSequence]:
        """Training sequences: everything but the last two items."""
        return [UserSequence(s.user, s.items[:-2], s.ratings[:-2]) for s in self.warm]

    def loo_valid(self) -> list[Example]:
        return [
            Example(s.user, s.items[:-2], s.items[-2], s.ratings[-2], s.ratings[:-2]) for s in self.warm
        ]

    def loo_test(self) -> list[Example]:
        return [
            Example(s.user, s.items[:-1], s.items[-1], s.ratings[-1], s.ratings[:-1]) for s in self.warm
        ]

    # -- cold-start users ----------------------------------------------------------------
    def support_query(self, k: int) -> tuple[list[UserSequence], list[Example]]:
        """Cold users' support (first k interactions) and query (the (k+1)-th, predicted from
        the k support items as history)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1 (support size), got {k}")
        support, query = [], []
        for s in self.cold_users:
            if len(s) <= k:
                continue
            support.append(UserSequence(s.user, s.items[:k], s.ratings[:k]))
            query.append(Example(s.user, s.items[:k], s.items[k], s.ratings[k], s.ratings[:k]))
        return support, query

    @property
    def vocab_size(self) -> int:
        return self.item_map.vocab_size

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "items": len(self.item_map),
            "warm_users": len(self.warm),
            "cold_users": len(self.cold_users),
            "cold_items": len(self.cold_items),
            "pretraining_interactions": int(sum(len(s) for s in self.warm)),
            "seed": self.config.seed,
        }


def _sort_key(raw: str):
    return (0, int(raw), raw) if raw.isdigit() else (1, 0, raw)


def make_splits(data: Interactions, config: SplitConfig | None = None) -> Splits:
    """Build the deterministic splits described in the module docstring."""
    cfg = config or SplitConfig()
    if not 0 <= cfg.cold_user_frac < 1 or not 0 <= cfg.cold_item_frac < 1:
        raise ConfigError("cold_user_frac and cold_item_frac must be in [0, 1)")
    rng = np.random.default_rng(cfg.seed)
    used_items = np.flatnonzero(np.bincount(data.item_codes, minlength=len(data.item_vocab)))
    item_map = IdMap(sorted(data.item_vocab[used_items].tolist(), key=_sort_key))
    if len(data) == 0:
        raise EmptyUserError(f"data set {data.name!r} has no users")
    index_of_code = np.zeros(len(data.item_vocab), dtype=np.int64)  # item code -> item index
    index_of_code[used_items] = item_map.indices(data.item_vocab[used_items].tolist())
    idx = index_of_code[data.item_codes]  # [N] item index per row

    # each user's sequence in time order (ties keep file order)
    order = data.time_order()
    ucodes = data.user_codes[order]
    starts = np.flatnonzero(np.r_[True, ucodes[1:] != ucodes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    seq_items, seq_ratings = idx[order], data.ratings[order]
    span = {data.user_vocab[ucodes[a]]: (a, b) for a, b in zip(starts.tolist(), ends.tolist())}
    full: dict[str, UserSequence] = {}
    for u in sorted(span, key=_sort_key):
        a, b = span[u]
        full[u] = UserSequence(u, seq_items[a:b].tolist(), seq_ratings[a:b].tolist())

    # cold items
    strategy = cfg.cold_item_strategy
    if strategy == "auto":
        strategy = "latest" if data.has_timestamps else "least"
    n_cold_items = int(round(cfg.cold_item_frac * len(item_map)))
    if n_cold_items:
        counts = np.bincount(idx, minlength=item_map.vocab_size)[1:]
        tie = rng.random(len(item_map))
        if strategy == "latest":
            if not data.has_timestamps:
                raise ConfigError("cold_item_strategy='latest' needs timestamps; use 'least'")
            first = np.full(item_map.vocab_size, np.iinfo(np.int64).max)
            np.minimum.at(first, idx, data.timestamps)
            order = np.lexsort((tie, -first[1:]))  # latest first appearance first
        elif strategy == "least":
            order = np.lexsort((tie, counts))  # fewest interactions first
        else:
            raise ConfigError(f"unknown cold_item_strategy {strategy!r}; use latest, least or auto")
        cold_items = np.sort(order[:n_cold_items] + 1)
    else:
        cold_items = np.zeros(0, dtype=np.int64)
    cold_set = set(cold_items.tolist())

    # cold users
    users = list(full)
    eligible = [u for u in users if len(full[u]) >= cfg.min_cold_user_len]
    n_cold_users = int(round(cfg.cold_user_frac * len(eligible)))
    cold_user_ids = set(rng.permutation(eligible)[:n_cold_users].tolist()) if n_cold_users else set()

    warm, cold_users = [], []
    for u in users:
        s = full[u]
        if u in cold_user_ids:
            cold_users.append(s)
            continue
        keep = [j for j, it in enumerate(s.items) if it not in cold_set]
        ws = UserSequence(u, [s.items[j] for j in keep], [s.ratings[j] for j in keep])
        if len(ws) >= cfg.min_warm_len:
            warm.append(ws)

    feats = None
    if data.item_features:
        n_f = len(next(iter(data.item_features.values())))
        feats = np.zeros((item_map.vocab_size, n_f), dtype=np.float32)
        for raw, vec in data.item_features.items():
            if raw in item_map:
                feats[item_map.index(raw)] = vec
    return Splits(
        name=data.name,
        config=cfg,
        item_map=item_map,
        item_features=feats,
        feature_names=list(data.feature_names),
        warm=warm,
        cold_users=cold_users,
        cold_items=cold_items,
        full_sequences=full,
        source=getattr(data, "spec", None),
    )
