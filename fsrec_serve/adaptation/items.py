"""Cold-start items: learn the vectors of new items from a few interactions, without harm.

Before adaptation a new item is represented by its side features only (``feature_proj`` of its
genres; its id embedding is zero and its output bias 0, as pretraining left it). Adaptation
trains exactly two things, and only in the rows of the new items: their id embeddings
(``item_embeddings.weight[new]``) and output biases (``output_bias.bias[new]``). Every other
row and every other parameter stays bit-identical.

Why not just fit the new items' own interactions: with only examples whose target is a new
item, the softmax rewards raising the new items' scores everywhere (their biases grow without
bound) and they enter every warm user's top 10 (warm NDCG@10 ratio 0.000 on ML-100K).

What is fitted instead (a softmax regression on frozen user states, full batch, seconds):
    * positives: each adaptation sequence's history -> its last item (a new item);
    * replay: histories of warm users -> their next (warm) item, where the new items are
      negatives of the full softmax. ``replay`` (e.g. the pretraining sequences) gives one
      example per sequence (its last item) plus ``replay_positions`` earlier ones; without it
      the adaptation sequences' own earlier positions are the replay.
    * loss = (sum_pos CE + w * sum_replay CE) / (n_pos + w * n_replay): by the maximum-likelihood
      property of a bias, a new item's expected probability mass over all examples matches its
      (weighted) count, so ``w`` calibrates how often new items may be recommended.
    The user state of an example does not depend on the new rows unless the history holds a
    new item (its input vector changes after adaptation); states are computed once with the
    pretrained rows, which is exact for the replay histories of warm users.

Selection (never on evaluation events): the last adaptation sequence of every new item with
>= 2 is held out (inner new-item NDCG@10); warm users' validation examples (``warm_valid``, e.g.
``Splits.loo_valid()``; default: the replay examples) give the warm ratio after / before. The
chosen ``w`` is the one with the best inner new-item NDCG@10 among the candidates whose warm
ratio is >= ``target_ratio``; if none reaches it, the one with the highest warm ratio. Then a
refit on every adaptation sequence.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.splits import Example, UserSequence
from ..errors import SupportSetError
from ..evaluation.metrics import ndcg_at_k, rank_of_targets
from ..model.modeling_fsrec import pad_histories
from .artifact import AdaptArtifact, model_fingerprint
from .core import AdaptResult
from .strategies import fsrec_of

COLD_ITEMS_STRATEGY = "cold_items"
ITEM_PARAMS = ("item_embeddings.weight", "output_bias.bias")


@dataclass
class ColdItemConfig:
    replay_weights: tuple = (0.03, 0.1, 0.3, 1.0, 3.0)  # candidate w (weight of a replay example)
    target_ratio: float = 0.99  # warm validation NDCG@10 after / before a candidate must keep
    replay_positions: int = 2  # earlier positions per replay sequence (besides its last item)
    max_replay: int = 4000  # cap on replay examples (random sample above it)
    steps: int = 300  # full-batch Adam steps
    lr: float = 0.05  # Adam learning rate of the new rows
    l2: float = 1e-3  # L2 on the new id-embedding rows (they start at zero)
    batch_size: int = 256  # histories per encoder call when computing the user states
    seed: int = 0  # seeds the replay sample


def _examples(seqs: Sequence[UserSequence], positions: int, rng, last: bool = True) -> list[Example]:
    """history -> item examples: each sequence's last item (if ``last``) plus ``positions``
    random earlier ones (history >= 1 item)."""
    out = []
    for s in seqs:
        n = len(s.items)
        if last and n >= 2:
            out.append(Example(s.user, s.items[:-1], s.items[-1]))
        earlier = np.arange(1, n - 1)
        if positions and earlier.size:
            for j in rng.choice(earlier, size=min(positions, earlier.size), replace=False):
                out.append(Example(s.user, s.items[:int(j)], s.items[int(j)]))
    return out


@torch.no_grad()
def _states(model, examples: Sequence[Example], batch_size: int) -> torch.Tensor:
    """[X, H] user states of the examples' histories (the model's own window)."""
    L = model.config.max_seq_len
    out = [model.user_state(pad_histories([e.history for e in examples[i:i + batch_size]], L))
           for i in range(0, len(examples), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


class _Problem:
    """Frozen part of the softmax of a set of examples: states, base scores, history masks."""

    def __init__(self, model, examples: Sequence[Example], items: torch.Tensor, batch_size: int):
        self.examples = list(examples)
        self.states = _states(model, self.examples, batch_size)  # [X, H]
        with torch.no_grad():
            self.base = model._scores(self.states, model.item_vectors())  # [X, N]
        self.targets = torch.as_tensor([e.target for e in self.examples], dtype=torch.long)
        N = self.base.shape[1]
        self.exclude = torch.zeros(len(self.examples), N, dtype=torch.bool)  # [X, N]
        for r, e in enumerate(self.examples):
            self.exclude[r, torch.as_tensor(e.history, dtype=torch.long)] = True
        self.exclude[:, 0] = True
        self.items = items
        rest = self.base.clone()
        rest[:, items] = float("-inf")
        self.lse_rest = torch.logsumexp(rest, dim=1)  # [X] over the old columns
        self.is_new = torch.zeros(N, dtype=torch.bool)
        self.is_new[items] = True

    def scores(self, vecs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """[X, N] scores with the new columns from ``vecs`` [n, H] and ``bias`` [n]."""
        s = self.base.clone()
        s[:, self.items] = self.states @ vecs.t() + bias
        return s

    def ce(self, vecs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """[X] cross-entropy of every example (full softmax, new columns trainable)."""
        new = self.states @ vecs.t() + bias  # [X, n]
        lse = torch.logaddexp(self.lse_rest, torch.logsumexp(new, dim=1))
        col = {int(c): j for j, c in enumerate(self.items)}
        tgt_new = torch.as_tensor([col.get(int(t), -1) for t in self.targets])
        tgt = torch.where(tgt_new >= 0, new.gather(1, tgt_new.clamp(min=0).view(-1, 1)).squeeze(1),
                          self.base.gather(1, self.targets.view(-1, 1)).squeeze(1))
        return lse - tgt

    def ndcg(self, vecs: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> float:
        s = self.base if vecs is None else self.scores(vecs, bias)
        ranks = rank_of_targets(s, self.targets, self.exclude).numpy()
        return float(ndcg_at_k(ranks, 10).mean()) if ranks.size else float("nan")


def _fit(pos: _Problem, rep: _Problem, vec0: torch.Tensor, bias0: torch.Tensor, w: float,
         cfg: ColdItemConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on (delta id rows [n, H], biases [n]) of the weighted loss (module docstring)."""
    delta = torch.zeros_like(vec0, requires_grad=True)
    bias = bias0.clone().requires_grad_(True)
    opt = torch.optim.Adam([delta, bias], lr=cfg.lr)
    denom = len(pos.examples) + w * len(rep.examples)
    for _ in range(cfg.steps):
        opt.zero_grad()
        v = vec0 + delta
        loss = (pos.ce(v, bias).sum() + w * rep.ce(v, bias).sum()) / denom
        loss = loss + cfg.l2 * delta.pow(2).sum()
        loss.backward()
        opt.step()
    return (vec0 + delta).detach(), bias.detach()


def _split_item_sequences(sequences: Sequence[UserSequence]):
    """(train, held-out) adaptation sequences: the last one of each item that has >= 2."""
    by_item: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        by_item.setdefault(s.items[-1], []).append(i)
    held = {idxs[-1] for idxs in by_item.values() if len(idxs) >= 2}
    return ([s for i, s in enumerate(sequences) if i not in held],
            [s for i, s in enumerate(sequences) if i in held])


def adapt_cold_items(
    model,  # pretrained FsRecModel (not modified)
    sequences: Sequence[UserSequence],  # histories ending with an interaction with a new item
    items: Sequence[int],  # the new items' indices (only their rows are trained)
    config=None,  # ColdItemConfig; an AdaptConfig is accepted (its seed is used)
    *,
    replay: Optional[Sequence[UserSequence]] = None,  # warm sequences (e.g. Splits.loo_train())
    warm_valid: Optional[Sequence[Example]] = None,  # warm validation examples for selection
) -> AdaptResult:
    """Learn the id embeddings and output biases of ``items`` without pushing them into warm
    users' top 10 (see the module docstring)."""
    t0 = time.perf_counter()
    cfg = config if isinstance(config, ColdItemConfig) else ColdItemConfig(
        seed=int(getattr(config, "seed", 0) or 0))
    base = fsrec_of(model)
    base.eval()
    if not sequences:
        raise SupportSetError("no interactions with the new items: nothing to adapt on; pass "
                              "sequences that end with an interaction with a new item")
    items_t = torch.as_tensor(sorted(set(int(i) for i in items)), dtype=torch.long)
    if items_t.numel() == 0:
        raise SupportSetError("no new items given: pass the indices of the items to learn")
    seqs = [s for s in sequences if len(s.items) >= 2]
    if not seqs:
        raise SupportSetError("every adaptation sequence has a single item: a new item needs a "
                              "history before it to be learned from")
    rng = np.random.default_rng(cfg.seed)
    fingerprint = model_fingerprint(base)
    new_set = set(items_t.tolist())
    rep_ex = [e for e in _examples(replay if replay is not None else seqs, cfg.replay_positions, rng,
                                   last=replay is not None) if e.target not in new_set]
    if len(rep_ex) > cfg.max_replay:
        rep_ex = [rep_ex[i] for i in sorted(rng.choice(len(rep_ex), cfg.max_replay, replace=False))]
    if not rep_ex:
        raise SupportSetError("no replay examples (warm histories -> warm items): pass replay="
                              "the pretraining sequences")
    with torch.no_grad():
        vec0 = base.item_vectors()[items_t].clone()  # [n, H] side features (+ id rows, zero)
        bias0 = base.output_bias()[items_t].clone()  # [n]
    rep = _Problem(base, rep_ex, items_t, cfg.batch_size)
    valid = rep if not warm_valid else _Problem(base, list(warm_valid), items_t, cfg.batch_size)
    warm0 = valid.ndcg()
    train, held = _split_item_sequences(seqs)
    candidates: dict = {}
    weights = tuple(cfg.replay_weights)
    if held and train and len(weights) > 1:
        pos_tr = _Problem(base, _examples(train, 0, rng), items_t, cfg.batch_size)
        pos_va = _Problem(base, _examples(held, 0, rng), items_t, cfg.batch_size)
        for w in weights:
            v, b = _fit(pos_tr, rep, vec0, bias0, w, cfg)
            ratio = valid.ndcg(v, b) / warm0 if warm0 > 0 else float("nan")
            candidates[w] = {"new_ndcg@10": pos_va.ndcg(v, b), "warm_ratio": ratio}
        ok = [w for w in weights if candidates[w]["warm_ratio"] >= cfg.target_ratio]
        w = (max(ok, key=lambda x: (candidates[x]["new_ndcg@10"], x)) if ok
             else max(weights, key=lambda x: (candidates[x]["warm_ratio"], x)))
    else:
        w = max(weights)  # nothing to select on: the most conservative candidate
    pos = _Problem(base, _examples(seqs, 0, rng), items_t, cfg.batch_size)
    vecs, bias = _fit(pos, rep, vec0, bias0, w, cfg)

    adapted = copy.deepcopy(base)
    with torch.no_grad():
        feats = vec0 - base.item_embeddings.weight[items_t]  # side-feature part (fixed)
        adapted.item_embeddings.weight[items_t] = vecs - feats
        adapted.output_bias.bias[items_t] = bias
    for p in adapted.parameters():
        p.requires_grad_(False)
    adapted.eval()
    info = {"strategy": COLD_ITEMS_STRATEGY, "n_items": int(items_t.numel()),
            "n_sequences": len(seqs), "n_replay": len(rep_ex), "replay_weight": w,
            "target_ratio": cfg.target_ratio, "candidates": candidates,
            "warm_valid_ndcg@10_before": warm0, "config": asdict(cfg),
            "seconds": time.perf_counter() - t0}
    tensors = {n: p.detach().clone() for n, p in adapted.named_parameters() if n in ITEM_PARAMS}
    art = AdaptArtifact(strategy=COLD_ITEMS_STRATEGY, config=asdict(cfg), base_fingerprint=fingerprint,
                        info=info, tensors=tensors)
    return AdaptResult(model=adapted, artifact=art, strategy=COLD_ITEMS_STRATEGY, info=info)


__all__ = ["COLD_ITEMS_STRATEGY", "ColdItemConfig", "adapt_cold_items"]
