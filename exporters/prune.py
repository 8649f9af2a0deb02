"""Pruning a trained FsRecModel for deployment: smaller NEW models, the trained one left alone.

Shapes: B = batch, L = history length, H = hidden size, N = num_items + 1 score columns.

* **catalogue** (:func:`prune_catalogue`): keep the ``keep`` items with the highest
  recency-weighted popularity over the training log (:func:`recency_popularity`) and drop the
  other rows of the item table, of the side-feature buffer and of the output bias. The new model
  carries an id map of the kept items only (raw ids in the full map's order), so the served
  ``item_map.json`` lists what the graph can return; a client drops the unknown (pruned) ids of a
  history, as for any unknown id. Scores of kept items equal the full model's for the same
  history with the pruned items dropped from it. Pruning runs at export time from the full trained
  checkpoint, never over it: an item pruned now comes back on the next export once it is popular.
* **heads** (:func:`prune_heads`): remove the attention heads of smallest importance with
  transformers' ``prune_heads`` (recorded in ``config.pruned_heads``: ``from_pretrained``
  rebuilds the shapes).
* **ffn** (:func:`prune_ffn`): keep the ``keep`` feed-forward neurons of largest importance in
  every block (``config.intermediate_size`` = keep).

Importance (:func:`structure_importance`) is the gradient-based score of Michel et al. (2019):
a gate of 1 multiplies each head's context (each FFN neuron's activation); the importance of a
unit is |d loss / d gate| summed over one epoch of training batches, normalised per layer.
:func:`recover` is the short recovery fine-tune (the library's train loop, early stopped on the
validation item). The export / guard / choice chain is :mod:`exporters.prune_select`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers.pytorch_utils import prune_linear_layer

from fsrec_serve.contract import MASK_VALUE, PAD_INDEX
from fsrec_serve.errors import ConfigError
from fsrec_serve.idmap import IdMap
from fsrec_serve.model import FsRecModel

DEFAULT_HALF_LIFE = 20.0  # interactions: an item consumed 20 steps before a user's newest one counts half


# -- catalogue ---------------------------------------------------------------------------------
def recency_popularity(sequences: Sequence, num_items: int, half_life: float = DEFAULT_HALF_LIFE) -> np.ndarray:
    """[num_items + 1] popularity over the training sequences (UserSequence or index lists), each
    interaction weighted by 0.5 ** (its distance to the end of its sequence / half_life): what
    users consumed last counts most (the logs carry no common clock; ``inf`` = plain counts)."""
    if half_life <= 0:
        raise ConfigError(f"half_life must be > 0 interactions (inf = plain popularity), got {half_life}")
    pop = np.zeros(int(num_items) + 1, dtype=np.float64)
    for s in sequences:
        items = np.asarray(getattr(s, "items", s), dtype=np.int64)
        age = np.arange(len(items))[::-1].astype(np.float64)  # 0 = the newest item
        np.add.at(pop, items, 0.5 ** (age / half_life) if math.isfinite(half_life) else 1.0)
    pop[PAD_INDEX] = 0.0
    return pop


@dataclass
class PrunedCatalogue:
    model: FsRecModel  # the NEW model over the kept items (its item_map lists them only)
    kept: np.ndarray  # [n] full-model indices of the kept items, ascending (new index j = kept[j - 1])
    full_num_items: int  # catalogue size of the full model

    def to_pruned(self) -> np.ndarray:
        """[full_num_items + 2] full index -> pruned index (0 = pruned / padding; [MASK] -> [MASK])."""
        out = np.zeros(self.full_num_items + 2, dtype=np.int64)
        out[self.kept] = np.arange(1, len(self.kept) + 1)
        out[self.full_num_items + 1] = len(self.kept) + 1
        return out


def prune_catalogue(model: FsRecModel, sequences: Sequence, keep: int,
                    half_life: float = DEFAULT_HALF_LIFE) -> PrunedCatalogue:
    """A NEW model serving the ``keep`` items of highest :func:`recency_popularity` over
    ``sequences`` (the training log); ``model`` is not changed. Ties keep the lower index."""
    n = int(model.config.num_items)
    if not 1 <= int(keep) <= n:
        raise ConfigError(f"keep={keep} must be in 1..{n} (the model's catalogue); lower catalogue-<n>")
    pop = recency_popularity(sequences, n, half_life)
    order = np.lexsort((np.arange(n + 1), -pop))  # most popular first, ties by index
    kept = np.sort(order[order != PAD_INDEX][: int(keep)])
    rows = torch.as_tensor(np.concatenate([[PAD_INDEX], kept, [n + 1]]), dtype=torch.long)  # pad, kept, [MASK]
    cfg = copy.deepcopy(model.config)
    cfg.num_items = int(keep)
    new = FsRecModel(cfg)
    state = {k: v for k, v in model.state_dict().items()}
    state["item_embeddings.weight"] = state["item_embeddings.weight"][rows]  # [keep + 2, H]
    state["output_bias.bias"] = state["output_bias.bias"][rows[:-1]]  # [keep + 1]
    if "item_features" in state:
        state["item_features"] = state["item_features"][rows]  # [keep + 2, F]
    new.load_state_dict(state)
    if model.item_map is not None:
        new.item_map = IdMap(model.item_map.raws(kept.tolist()))
    return PrunedCatalogue(model=new.eval(), kept=kept, full_num_items=n)


def drop_pruned(x: torch.Tensor, to_pruned: torch.Tensor, width: int) -> torch.Tensor:
    """Full-index histories [B, L] -> pruned-index histories [B, width]: pruned items removed,
    the rest left-padded again (newest last), the newest ``width`` kept."""
    mapped = to_pruned[x]  # [B, L]
    order = torch.sort((mapped != PAD_INDEX).to(torch.int8), dim=1, stable=True).indices
    packed = mapped.gather(1, order)  # padding first, kept items in their order
    if packed.shape[1] < width:
        packed = torch.cat([packed.new_zeros(len(packed), width - packed.shape[1]), packed], dim=1)
    return packed[:, -width:]


class FullCatalogueScorer:
    """A catalogue-pruned model scored in the full model's index space (the evaluation's
    scorer): histories [B, L] of full indices -> scores [B, full N], pruned items at MASK_VALUE.
    It reads histories of any length (no ``max_seq_len``: the evaluation gives it whole
    histories) and keeps the newest ``max_seq_len`` kept items, as serving does."""

    def __init__(self, pruned: PrunedCatalogue):
        self.pruned = pruned
        self.model = pruned.model
        self._to_pruned = torch.as_tensor(pruned.to_pruned())
        self._cols = torch.as_tensor(np.concatenate([[PAD_INDEX], pruned.kept]), dtype=torch.long)

    def parameters(self):
        return self.model.parameters()

    def next_item_scores(self, history_ids: torch.Tensor) -> torch.Tensor:
        x = drop_pruned(history_ids.cpu(), self._to_pruned, int(self.model.config.max_seq_len))
        s = self.model.next_item_scores(x.to(history_ids.device))  # [B, keep + 1]
        out = s.new_full((len(s), self.pruned.full_num_items + 1), MASK_VALUE)  # [B, full N]
        out[:, self._cols.to(s.device)] = s
        out[:, PAD_INDEX] = MASK_VALUE
        return out


# -- structure: importance ---------------------------------------------------------------------
def _layers(model: FsRecModel):
    return model.encoder.encoder.layer


def _gate_hook(gate: torch.Tensor, head_dim: int | None):
    """Forward hook multiplying a module's output [B, L, U*d] by gate [U] (d = head_dim or 1)."""
    def hook(module, inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        B, L, W = first.shape
        d = head_dim or 1
        gated = (first.view(B, L, W // d, d) * gate.view(1, 1, -1, 1)).view(B, L, W)
        return (gated, *output[1:]) if isinstance(output, tuple) else gated
    return hook


def structure_importance(model: FsRecModel, sequences: Sequence, train_config=None,
                         max_batches: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head importance per layer [heads_l], FFN neuron importance per layer [I_l]): |d loss /
    d gate| summed over one epoch of training batches (Michel et al. 2019), each layer's scores
    divided by their L2 norm. ``model`` is left unchanged (its gradients are cleared)."""
    from fsrec_serve.training import TrainConfig, make_training_batches

    tc = train_config or TrainConfig(progress=False)
    batches = make_training_batches(sequences, model.config, tc, np.random.default_rng(tc.seed))
    hooks, head_gates, ffn_gates = [], [], []
    for layer in _layers(model):
        att = layer.attention.self
        head_gates.append(torch.ones(att.num_attention_heads, requires_grad=True))
        ffn_gates.append(torch.ones(layer.intermediate.dense.out_features, requires_grad=True))
        hooks.append(att.register_forward_hook(_gate_hook(head_gates[-1], att.attention_head_size)))
        hooks.append(layer.intermediate.register_forward_hook(_gate_hook(ffn_gates[-1], None)))
    was_training = model.training
    model.eval()  # no dropout: the importance of the model as served
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(**batch).loss.backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return [_normalised(g.grad) for g in head_gates], [_normalised(g.grad) for g in ffn_gates]


def _normalised(grad: torch.Tensor) -> torch.Tensor:
    """|grad| [U] divided by its L2 norm (a layer's importances sum to a comparable scale)."""
    return (grad.abs() / grad.abs().norm().clamp_min(1e-12)).detach()


# -- structure: surgery ------------------------------------------------------------------------
def prune_heads(model: FsRecModel, keep: int, importance: Sequence[torch.Tensor]) -> FsRecModel:
    """A NEW model keeping the ``keep`` most important heads over all layers (at least one per
    layer): transformers' ``prune_heads`` on a copy of ``model``."""
    per_layer = [len(v) for v in importance]
    if not len(per_layer) <= int(keep) <= sum(per_layer):
        raise ConfigError(f"heads-{keep}: keep between {len(per_layer)} (one per layer) and "
                          f"{sum(per_layer)} heads (all of them)")
    ranked = sorted(((float(s), li, h) for li, v in enumerate(importance) for h, s in enumerate(v)), reverse=True)
    kept = {(li, int(torch.argmax(v))) for li, v in enumerate(importance)}  # the best head of each layer
    for _, li, h in ranked:
        if len(kept) >= int(keep):
            break
        kept.add((li, h))
    drop = {li: [h for h in range(n) if (li, h) not in kept] for li, n in enumerate(per_layer)}
    new = copy.deepcopy(model)
    new.prune_heads({li: hs for li, hs in drop.items() if hs})
    return new


def prune_ffn(model: FsRecModel, keep: int, importance: Sequence[torch.Tensor]) -> FsRecModel:
    """A NEW model whose feed-forward blocks keep their ``keep`` most important neurons."""
    size = int(model.config.intermediate_size)
    if not 1 <= int(keep) <= size:
        raise ConfigError(f"ffn-{keep}: keep between 1 and intermediate_size ({size}) neurons")
    new = copy.deepcopy(model)
    for layer, imp in zip(_layers(new), importance):
        idx = torch.sort(torch.topk(imp, int(keep)).indices).values  # [keep], kept in order
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, idx, dim=0)  # H -> keep
        layer.output.dense = prune_linear_layer(layer.output.dense, idx, dim=1)  # keep -> H
    new.config.intermediate_size = int(keep)
    return new


def recover(model: FsRecModel, splits, train_config=None, epochs: int = 5, patience: int = 2) -> FsRecModel:
    """The short recovery fine-tune of a pruned model: the library's train loop on the split's
    training sequences (``train_config``'s settings, at most ``epochs`` epochs), early stopped on
    the validation item's NDCG@10 (``patience`` evaluations), the best state kept. In place."""
    import dataclasses

    from fsrec_serve.training import (
        TrainConfig,
        default_evaluate_fn,
        pretrain_candidate_mask,
        train_loop,
    )

    tc = dataclasses.replace(train_config or TrainConfig(), epochs=int(epochs), patience=int(patience),
                             output_dir=None, progress=False, warmup_ratio=0.0)
    res = train_loop(model, splits.loo_train(), tc, valid_examples=splits.loo_valid(),
                     candidate_mask=pretrain_candidate_mask(splits, model.config.num_items),
                     evaluate_fn=default_evaluate_fn())
    return res.model.eval()


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DEFAULT_HALF_LIFE", "FullCatalogueScorer", "PrunedCatalogue", "drop_pruned", "num_parameters",
           "prune_catalogue", "prune_ffn", "prune_heads", "recency_popularity", "recover", "structure_importance"]
