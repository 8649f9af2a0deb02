"""Settings fitted to a log's statistics: the one rule behind every default of ``fsrec train``.

No data set is known by name. The rule reads the training sequences (their count, their length
quantiles, the catalogue size) and picks each setting with a reason that ``fsrec train`` prints:

| setting | rule | ML-100K (943 users, median 63) | Beauty (22k users, median 4) |
| --- | --- | --- | --- |
| ``max_seq_len`` | 90th length percentile, up to a multiple of 50, in [50, 200] | 200 | 50 |
| dropout | 0.5 when the median history is shorter than 20 items, else 0.2 | 0.2 | 0.5 |
| ``batch_size`` | largest power of two <= users / 30 (>= 30 steps an epoch), in [32, 128] | 32 | 128 |
| ``patience`` | 10 below 5,000 users (noisy validation), else 5 | 10 | 5 |
| cloze | mask 0.5 (long) / 0.4 (short), lr 2e-3, smaller batches and more epochs | | |

The rule reproduces the settings tuned on the validation item of the two bundled data sets
(docs/training.md), so they are no longer a table of names: any other log gets the same reasoning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import ConfigError

OBJECTIVES = ("causal", "cloze")
DEFAULT_OBJECTIVE = "causal"  # the objective that wins the quality benchmark (bench/results/quality.json)
SHORT_HISTORY = 20  # median history length below which sequences count as short (sparse logs)
SMALL_LOG_USERS = 5000  # fewer users than this: a noisy validation set, small batches


@dataclass(frozen=True)
class DataStats:
    """What the rule reads from the training sequences."""

    users: int  # training sequences (warm users)
    items: int  # catalogue size
    interactions: int  # items over all training sequences
    length_median: float  # median training sequence length
    length_q90: float  # 90th percentile of the training sequence lengths

    @property
    def density(self) -> float:  # interactions / (users x items)
        return self.interactions / max(1, self.users * self.items)

    def describe(self) -> str:
        return (f"{self.users:,} users, {self.items:,} items, {self.interactions:,} interactions "
                f"(density {self.density:.2%}); history length median {self.length_median:g}, "
                f"90th percentile {self.length_q90:g}")


def data_stats(sequences: Sequence, num_items: int) -> DataStats:
    """DataStats of training sequences (UserSequence or lists of item indices)."""
    lengths = np.array([len(getattr(s, "items", s)) for s in sequences], dtype=np.float64)
    if lengths.size == 0:
        raise ConfigError("no training sequences to fit settings to; check the log and its cleaning")
    return DataStats(users=int(lengths.size), items=int(num_items), interactions=int(lengths.sum()),
                     length_median=float(np.median(lengths)), length_q90=float(np.quantile(lengths, 0.9)))


@dataclass
class FittedConfig:
    """Model and training settings for one log, with the reason for each."""

    model: dict = field(default_factory=dict)  # FsRecConfig keyword arguments
    train: dict = field(default_factory=dict)  # TrainConfig keyword arguments
    reasons: list = field(default_factory=list)  # "setting = value: why" lines, in order


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def fitted_config(stats: DataStats, objective: str = DEFAULT_OBJECTIVE) -> FittedConfig:
    """The settings the rule picks for ``stats`` (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    short = stats.length_median < SHORT_HISTORY
    small = stats.users < SMALL_LOG_USERS
    max_len = int(min(200, max(50, 50 * math.ceil(stats.length_q90 / 50))))
    dropout = 0.5 if short else 0.2
    batch = min(128, max(32, _pow2_floor(stats.users / 30)))
    patience = 10 if small else 5
    epochs, lr = 40, 1e-3
    model = dict(objective=objective, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, max_seq_len=max_len, hidden_dropout_prob=dropout,
                 attention_probs_dropout_prob=dropout)
    reasons = [
        f"max_seq_len = {max_len}: 90 % of histories have <= {stats.length_q90:g} items (multiple of 50, 50..200)",
        f"dropout = {dropout}: median history {stats.length_median:g} items "
        f"({'<' if short else '>='} {SHORT_HISTORY}: {'short, sparse' if short else 'long'} histories)",
        f"batch_size = {batch}: >= 30 steps an epoch over {stats.users:,} users (32..128)",
        f"patience = {patience}: {stats.users:,} validation users "
        f"({'<' if small else '>='} {SMALL_LOG_USERS:,}: {'noisy' if small else 'stable'} early stopping)",
    ]
    if objective == "cloze":  # BERT4Rec converges slower: more masking, higher lr, more epochs
        model["mask_prob"] = 0.4 if short else 0.5
        lr, epochs = 2e-3, (80 if small else 60)
        batch, patience = (batch // 2 if small else batch), (15 if small else 6)
        reasons.append(f"cloze: mask_prob = {model['mask_prob']}, lr = {lr}, epochs = {epochs}, "
                       f"batch_size = {batch}, patience = {patience} (masked items converge slower)")
    train = dict(epochs=epochs, batch_size=batch, lr=lr, weight_decay=0.01, patience=patience)
    return FittedConfig(model=model, train=train, reasons=reasons)


def recommended_config(data, objective: str = DEFAULT_OBJECTIVE) -> FittedConfig:
    """The fitted settings of ``data``: Splits (their leave-one-out training sequences) or DataStats."""
    if not isinstance(data, DataStats):
        if not hasattr(data, "loo_train"):
            raise ConfigError("recommended_config needs the data's Splits or DataStats (settings are "
                              f"fitted to the log, not to a name); got {type(data).__name__}")
        data = data_stats(data.loo_train(), len(data.item_map))
    return fitted_config(data, objective)
