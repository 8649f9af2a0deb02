"""Cold-start items: learn the id vectors of new items from a few interactions.

Before adaptation a cold item is represented by its side features only (``feature_proj`` of its
genres; its id embedding is zero and its output bias 0, as pretraining left it). Adaptation
trains exactly two things, and only in the rows of the new items: their id embeddings
(``item_embeddings.weight[new]``) and output biases (``output_bias.bias[new]``). Every other row
and every other parameter stays bit-identical (gradients of other rows are zeroed and AdamW runs
without weight decay, so their update is exactly 0).

Training data: sequences that END with an interaction with a new item (the user's history up to
and including it); the cloze objective masks the last item (``last_item_mask_ratio = 1``), so the
model learns to predict the new item from the history that led to it. Inner validation: the last
adaptation sequence of each new item that has >= 2 (early stopping), then a refit on all.
"""

from __future__ import annotations

import copy
import time
from typing import Optional, Sequence

import torch

from ..data.splits import Example, UserSequence
from ..errors import SupportSetError
from .artifact import AdaptArtifact, model_fingerprint
from .config import AdaptConfig
from .core import SELECTION_METRIC, AdaptResult, inner_score, train_config_for
from .strategies import fsrec_of

COLD_ITEMS_STRATEGY = "cold_items"
ITEM_PARAMS = ("item_embeddings.weight", "output_bias.bias")


def _split_item_sequences(sequences: Sequence[UserSequence]):
    by_item: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        by_item.setdefault(s.items[-1], []).append(i)
    held = {idxs[-1] for idxs in by_item.values() if len(idxs) >= 2}
    train = [s for i, s in enumerate(sequences) if i not in held]
    valid = [Example(s.user, s.items[:-1], s.items[-1], s.ratings[-1], s.ratings[:-1])
             for i, s in enumerate(sequences) if i in held and len(s) >= 2]
    return train, valid


def _train_items(base, items: torch.Tensor, cfg: AdaptConfig, sequences, valid, epochs: int):
    from ..training import set_seed, train_loop

    set_seed(cfg.seed)
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(False)
    V = model.item_embeddings.weight.shape[0]
    row_mask = torch.zeros(V, dtype=torch.bool)
    row_mask[items] = True
    emb = model.item_embeddings.weight
    bias = model.output_bias.bias
    emb.requires_grad_(True)
    bias.requires_grad_(True)
    emb.register_hook(lambda g: g * row_mask.to(g.device, g.dtype).unsqueeze(1))
    bias.register_hook(lambda g: g * row_mask[: g.shape[0]].to(g.device, g.dtype))
    tc = train_config_for(cfg, "head_only", epochs)
    tc.weight_decay = 0.0  # decoupled decay would move the frozen rows
    tc.last_item_mask_ratio = 1.0  # predict the new item from the history that led to it
    tc.lr = cfg.lr if cfg.lr is not None else 1e-2
    res = train_loop(model, list(sequences), tc, valid_examples=valid or None,
                     model_config=base.config, trainable_parameters=[emb, bias], use_ratings=False)
    model.eval()
    return model, res


def adapt_cold_items(
    model,  # pretrained FsRecModel (not modified)
    sequences: Sequence[UserSequence],  # histories ending with an interaction with a new item
    items: Sequence[int],  # the new items' indices (only their rows are trained)
    config: Optional[AdaptConfig] = None,
) -> AdaptResult:
    """Learn the id embeddings and output biases of ``items`` from ``sequences``."""
    t0 = time.perf_counter()
    cfg = config or AdaptConfig()
    base = fsrec_of(model)
    if not sequences:
        raise SupportSetError("no interactions with the new items: nothing to adapt on")
    items_t = torch.as_tensor(sorted(set(int(i) for i in items)), dtype=torch.long)
    if items_t.numel() == 0:
        raise SupportSetError("no new items given")
    fingerprint = model_fingerprint(base)
    train, valid = _split_item_sequences(sequences)
    info = {"strategy": COLD_ITEMS_STRATEGY, "n_items": int(items_t.numel()),
            "n_sequences": len(sequences), "lr": cfg.lr if cfg.lr is not None else 1e-2}
    epochs = cfg.epochs
    if valid and train:
        _, res = _train_items(base, items_t, cfg, train, valid, cfg.epochs)
        info["inner"] = {"n_valid": len(valid), "zero_shot_ndcg@10": inner_score(base, valid),
                         "ndcg@10": float(res.best_valid.get(SELECTION_METRIC, float("nan"))),
                         "best_epoch": int(res.best_epoch)}
        epochs = max(1, res.best_epoch)
    adapted, _ = _train_items(base, items_t, cfg, sequences, None, epochs)
    info["passes"] = int(epochs)
    info["seconds"] = time.perf_counter() - t0
    tensors = {n: p.detach().clone() for n, p in adapted.named_parameters() if n in ITEM_PARAMS}
    art = AdaptArtifact(strategy=COLD_ITEMS_STRATEGY, config=cfg.to_dict(),
                        base_fingerprint=fingerprint, info=info, tensors=tensors)
    for p in adapted.parameters():
        p.requires_grad_(False)
    return AdaptResult(model=adapted, artifact=art, strategy=COLD_ITEMS_STRATEGY, info=info)
