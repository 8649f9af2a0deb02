"""Adversarial training on item embeddings (the APR family, applied as a fast gradient step).

After the clean loss's backward pass, every item embedding row with a gradient is moved by
``eps`` times its own norm along that gradient (the direction that increases the loss most, per
row); the loss at the moved embeddings is added (its gradient accumulates into the same step), and
the clean rows are copied back before the optimizer steps. The output layer is tied to the embeddings,
so an item is perturbed both where it is read and where it is scored.

Usable in pretraining and in adaptation: a table the optimizer does not own (frozen, or left out
of the trainable parameters) is given a gradient for the duration, cleared every step, and never
changes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError


class EmbeddingAdversary:
    def __init__(self, weight: torch.nn.Parameter, eps: float, owned: bool = True):
        if not eps > 0:
            raise ConfigError(f"adversarial eps must be > 0, got {eps}")
        self.weight, self.eps = weight, float(eps)  # [N, H] item embeddings (tied output layer)
        self.owned = owned  # the optimizer steps (and clears) this table
        self._was_trainable = weight.requires_grad
        self._clean: Optional[torch.Tensor] = None  # [N, H] the rows before the perturbation
        weight.requires_grad_(True)

    def perturb(self) -> bool:
        """Move each row along its gradient by eps x its norm; False when there is no gradient."""
        g = self.weight.grad
        if g is None:
            return False
        with torch.no_grad():
            self._clean = self.weight.detach().clone()
            g_norm = g.norm(dim=1, keepdim=True)  # [N, 1]
            row_norm = self.weight.norm(dim=1, keepdim=True)  # [N, 1]
            delta = torch.where(g_norm > 0, self.eps * row_norm * g / g_norm.clamp_min(1e-12),
                                torch.zeros_like(g))  # [N, H]
            self.weight.add_(delta)
        return True

    def restore(self) -> None:
        """Undo :meth:`perturb`: the clean rows, bit for bit."""
        if self._clean is not None:
            with torch.no_grad():
                self.weight.copy_(self._clean)
            self._clean = None

    def clear_frozen_grad(self) -> None:
        """A table the optimizer does not own keeps no gradient from one step to the next."""
        if not self.owned:
            self.weight.grad = None

    def close(self) -> None:
        self.restore()
        self.clear_frozen_grad()
        self.weight.requires_grad_(self._was_trainable)
