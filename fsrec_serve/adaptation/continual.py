"""Continual re-fine-tuning: adapt a deployed model to a new slice of the log without forgetting.

The new slice (e.g. the sequences of users who arrived after pretraining, or everyone's latest
interactions) is mixed with a *replay* sample of the old training sequences, and the mix is
adapted with a parameter-efficient strategy (LoRA by default: the base weights stay frozen, so
the change is low-rank and can be rolled back by dropping the adapter). Forgetting is measured by
the caller on the old users' held-out items (see ``evaluation.fewshot.forgetting``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..data.splits import UserSequence
from ..errors import SupportSetError
from .config import AdaptConfig
from .core import AdaptResult, adapt


def replay_mix(
    new_sequences: Sequence[UserSequence],
    replay: Optional[Sequence[UserSequence]] = None,
    replay_ratio: float = 1.0,
    seed: int = 0,
) -> list[UserSequence]:
    """``new_sequences`` + a random sample of ``replay`` of ``replay_ratio`` x their number."""
    if not new_sequences:
        raise SupportSetError("the new slice of the log is empty: nothing to re-fine-tune on")
    mix = list(new_sequences)
    if replay and replay_ratio > 0:
        n = min(len(replay), int(round(replay_ratio * len(new_sequences))))
        idx = np.random.default_rng(seed).choice(len(replay), size=n, replace=False)
        mix += [replay[int(i)] for i in sorted(idx)]
    return mix


def continual_adapt(
    model,  # the deployed FsRecModel (not modified)
    new_sequences: Sequence[UserSequence],  # the new slice of the log
    strategy: str = "lora",
    config: Optional[AdaptConfig] = None,
    replay: Optional[Sequence[UserSequence]] = None,  # old training sequences to rehearse
    replay_ratio: float = 1.0,  # replayed old sequences per new sequence
    examples: str = "sequences",  # long sequences: the model's own objective, not every prefix
) -> AdaptResult:
    """Adapt ``model`` to ``new_sequences`` mixed with replayed old sequences.

    Unlike a few-shot support set, a slice of the log holds long sequences, so the default is the
    model's own objective on them (``examples="sequences"``) rather than one window per prefix."""
    cfg = (config or AdaptConfig()).with_overrides(examples=examples)
    mix = replay_mix(new_sequences, replay, replay_ratio, cfg.seed)
    res = adapt(model, mix, strategy=strategy, config=cfg)
    res.info.update(n_new=len(new_sequences), n_replay=len(mix) - len(new_sequences),
                    replay_ratio=replay_ratio)
    return res
