"""Baselines with the same scorer interface as the model (``next_item_scores``)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ..contract import MASK_VALUE, PAD_INDEX


class PopularityModel:
    """Scores every item by how often it occurs in the training sequences (same for all users).

    Score columns follow the model's layout: N = num_items + 1, column 0 = padding (MASK_VALUE).
    """

    max_seq_len = None  # reads any history length (the history only matters for exclusion)

    def __init__(self, counts: np.ndarray):
        counts = np.asarray(counts, dtype=np.float32)  # [N] occurrences per column
        self.counts = torch.as_tensor(counts)
        self.counts[PAD_INDEX] = MASK_VALUE

    @property
    def num_items(self) -> int:
        return int(self.counts.numel() - 1)

    @classmethod
    def fit(cls, sequences: Iterable, num_items: int) -> "PopularityModel":
        """Count items in ``sequences`` (UserSequence or lists of indices) over 1..num_items."""
        counts = np.zeros(num_items + 1, dtype=np.float64)
        for s in sequences:
            items = np.asarray(getattr(s, "items", s), dtype=np.int64)
            if items.size:
                np.add.at(counts, items[(items > PAD_INDEX) & (items <= num_items)], 1.0)
        return cls(counts)

    def next_item_scores(self, history_ids: torch.Tensor) -> torch.Tensor:
        """history [B, L] -> scores [B, N] (popularity, identical rows)."""
        return self.counts.to(history_ids.device).unsqueeze(0).expand(history_ids.shape[0], -1).clone()

    def top_k(self, k: int = 10) -> list[int]:
        return torch.topk(self.counts, k).indices.tolist()
