"""Learning-rate schedule: linear warmup from 0 to the peak lr, then linear decay to 0."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    """Same shape as transformers.get_linear_schedule_with_warmup (warmup = ratio * total)."""
    total = max(1, int(total_steps))
    warmup = int(round(warmup_ratio * total))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return float(step + 1) / float(warmup)
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    return LambdaLR(optimizer, factor)
