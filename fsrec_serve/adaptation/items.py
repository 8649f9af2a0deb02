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
      every earlier position of the adaptation sequences is the replay (at most ``max_replay``).
    * loss = (sum_pos CE + w * sum_replay CE) / (n_pos + w * n_replay): by the maximum-likelihood
      property of a bias, a new item's expected probability mass over all examples matches its
      (weighted) count, so ``w`` calibrates how often new items may be recommended.
    The user state of an example does not depend on the new rows unless the history holds a
    new item (its input vector changes after adaptation); states are computed once with the
    pretrained rows, which is exact for the replay histories of warm users.

Bias calibration: after a fit, the smallest shift d (of ``bias_shifts``) subtracted from the
new items' biases that keeps warm users' validation NDCG@10 after / before >= ``target_ratio``
(``warm_valid``, e.g. ``Splits.loo_valid()``; default: the replay examples). Shapes
(``shift_forms``): "uniform" (every new item - d) or "count" (item i - d * max_n / n_i, n_i its
adaptation events: the less an item was seen, the more its bias is shrunk, as a prior would);
the shape is chosen with the replay weight on the held-out events below.

Default ``w`` = 1: a replay example weighs as much as a new-item example (the mixture a log
with the new items in it would give); the calibration alone enforces the harm constraint.
Selection among (``replay_weights`` x ``shift_forms``), never on evaluation events: the last
adaptation sequence of every new item with >= 2 is held out (inner new-item NDCG@10); each
``w`` is fitted on the rest and calibrated in each shape; the best inner new-item NDCG@10 among
the candidates whose calibrated warm ratio reaches ``target_ratio`` wins (else the highest warm
ratio). With one held-out event per item the choice of ``w`` was noise on small data, hence
one ``w`` by default.
Then the fit on every adaptation sequence and a fresh calibration.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch

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
    replay_weights: tuple = (1.0,)  # candidate w (weight of a replay example); >1 value = selection
    target_ratio: float = 0.99  # warm validation NDCG@10 after / before a candidate must keep
    bias_shifts: tuple = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # calibration grid
    shift_forms: tuple = ("uniform", "count")  # calibration shapes, chosen on the held-out events
    replay_positions: int = 2  # earlier positions per replay sequence (besides its last item)
    replay_tail: int = 0  # > 0: draw those positions among the last ``replay_tail`` only
    max_replay: int = 4000  # cap on replay examples (random sample above it)
    steps: int = 300  # full-batch Adam steps (over all refresh rounds)
    refresh: int = 3  # rounds; states of histories holding a new item are recomputed before each
    lr: float = 0.05  # Adam learning rate of the new rows
    l2: float = 1e-3  # L2 on the new id-embedding rows (they start at zero)
    batch_size: int = 256  # histories per encoder call when computing the user states
    seed: int = 0  # seeds the replay sample


def _examples(seqs: Sequence[UserSequence], positions: int, rng, last: bool = True,
              tail: int = 0) -> list[Example]:
    """history -> item examples: each sequence's last item (if ``last``) plus ``positions``
    random earlier ones (history >= 1 item; among the last ``tail`` positions if ``tail``)."""
    out = []
    for s in seqs:
        n = len(s.items)
        if last and n >= 2:
            out.append(Example(s.user, s.items[:-1], s.items[-1]))
        earlier = np.arange(max(1, n - 1 - tail) if tail else 1, n - 1)
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
        self.items, self.batch_size = items, batch_size
        self.targets = torch.as_tensor([e.target for e in self.examples], dtype=torch.long)
        N = model.config.num_items + 1
        self.exclude = torch.zeros(len(self.examples), N, dtype=torch.bool)  # [X, N]
        for r, e in enumerate(self.examples):
            self.exclude[r, torch.as_tensor(e.history, dtype=torch.long)] = True
        self.exclude[:, 0] = True
        self.is_new = torch.zeros(N, dtype=torch.bool)
        self.is_new[items] = True
        # states change with the new rows only where a history holds a new item
        self.needs_refresh = bool(self.exclude[:, items].any())
        self.refresh(model)

    def refresh(self, model) -> None:
        """Recompute the states and the frozen scores with ``model``'s current rows."""
        self.states = _states(model, self.examples, self.batch_size)  # [X, H]
        with torch.no_grad():
            self.base = model._scores(self.states, model.item_vectors())  # [X, N]
        rest = self.base.clone()
        rest[:, self.items] = float("-inf")
        self.lse_rest = torch.logsumexp(rest, dim=1)  # [X] over the old columns

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


def _set_rows(model, items: torch.Tensor, vecs: torch.Tensor, bias: torch.Tensor) -> None:
    """Write new-item vectors [n, H] (id row + fixed side-feature part) and biases into ``model``."""
    with torch.no_grad():
        feats = model.item_vectors()[items] - model.item_embeddings.weight[items]  # fixed part
        model.item_embeddings.weight[items] = vecs - feats
        model.output_bias.bias[items] = bias


def _fit(work, problems: Sequence[_Problem], pos: _Problem, rep: _Problem, vec0: torch.Tensor,
         bias0: torch.Tensor, w: float, cfg: ColdItemConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on (delta id rows [n, H], biases [n]) of the weighted loss (module docstring).

    ``cfg.refresh`` rounds: the states of histories that hold a new item are recomputed with
    the current rows (``work``, a scratch copy of the model) before each round."""
    delta = torch.zeros_like(vec0, requires_grad=True)
    bias = bias0.clone().requires_grad_(True)
    opt = torch.optim.Adam([delta, bias], lr=cfg.lr)
    denom = len(pos.examples) + w * len(rep.examples)
    for r in range(cfg.refresh):
        _set_rows(work, pos.items, (vec0 + delta).detach(), bias.detach())
        for p in problems:
            if p.needs_refresh:
                p.refresh(work)
        for _ in range(cfg.steps // cfg.refresh):
            opt.zero_grad()
            v = vec0 + delta
            loss = (pos.ce(v, bias).sum() + w * rep.ce(v, bias).sum()) / denom
            loss = loss + cfg.l2 * delta.pow(2).sum()
            loss.backward()
            opt.step()
    vecs, b = (vec0 + delta).detach(), bias.detach()
    _set_rows(work, pos.items, vecs, b)
    for p in problems:
        if p.needs_refresh:
            p.refresh(work)
    return vecs, b


def _shift_scale(form: str, seqs: Sequence[UserSequence], items: torch.Tensor) -> torch.Tensor:
    """[n] how much of the shift each new item gets: 1 each ("uniform"), or max count / own
    count of adaptation events ("count": the less an item was seen, the more its bias is
    shrunk, as a prior would)."""
    if form == "uniform":
        return torch.ones(len(items))
    n = torch.zeros(len(items))
    col = {int(c): j for j, c in enumerate(items)}
    for s in seqs:
        if s.items[-1] in col:
            n[col[s.items[-1]]] += 1
    return n.max().clamp(min=1) / n.clamp(min=1)


def _calibrate(valid: _Problem, warm0: float, vecs: torch.Tensor, bias: torch.Tensor,
               cfg: ColdItemConfig, scale: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(shifted biases, d, ratio): the smallest d of ``cfg.bias_shifts`` such that the biases
    minus d * ``scale`` keep the warm validation NDCG@10 ratio >= ``cfg.target_ratio`` (the
    largest d if none does)."""
    ratio = float("nan")
    for d in cfg.bias_shifts:
        ratio = valid.ndcg(vecs, bias - d * scale) / warm0 if warm0 > 0 else float("nan")
        if not ratio < cfg.target_ratio:
            return bias - d * scale, float(d), ratio
    d = float(cfg.bias_shifts[-1])
    return bias - d * scale, d, ratio


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
    if replay is not None:  # the last item of every replay sequence + a few earlier ones
        rep_ex = _examples(replay, cfg.replay_positions, rng, tail=cfg.replay_tail)
    else:  # every earlier position of the adaptation sequences themselves
        rep_ex = _examples(seqs, max(len(s.items) for s in seqs), rng, last=False)
    rep_ex = [e for e in rep_ex if e.target not in new_set]
    if len(rep_ex) > cfg.max_replay:
        rep_ex = [rep_ex[i] for i in sorted(rng.choice(len(rep_ex), cfg.max_replay, replace=False))]
    if not rep_ex:
        raise SupportSetError("no replay examples (warm histories -> warm items): pass replay="
                              "the pretraining sequences")
    with torch.no_grad():
        vec0 = base.item_vectors()[items_t].clone()  # [n, H] side features (+ id rows, zero)
        bias0 = base.output_bias()[items_t].clone()  # [n]
    work = copy.deepcopy(base)  # scratch copy: its new rows follow the fit
    for p in work.parameters():
        p.requires_grad_(False)
    rep = _Problem(base, rep_ex, items_t, cfg.batch_size)
    valid = rep if not warm_valid else _Problem(base, list(warm_valid), items_t, cfg.batch_size)
    warm0 = valid.ndcg()
    train, held = _split_item_sequences(seqs)
    candidates: dict = {}
    weights, forms = tuple(cfg.replay_weights), tuple(cfg.shift_forms)
    if held and train and len(weights) * len(forms) > 1:
        pos_tr = _Problem(base, _examples(train, 0, rng), items_t, cfg.batch_size)
        pos_va = _Problem(base, _examples(held, 0, rng), items_t, cfg.batch_size)
        for w in weights:
            v, b = _fit(work, (pos_tr, pos_va, rep, valid), pos_tr, rep, vec0, bias0, w, cfg)
            for form in forms:
                bs, d, ratio = _calibrate(valid, warm0, v, b, cfg, _shift_scale(form, train, items_t))
                candidates[f"{w}/{form}"] = {"replay_weight": w, "shift_form": form, "bias_shift": d,
                                             "new_ndcg@10": pos_va.ndcg(v, bs), "warm_ratio": ratio}
        ok = [c for c in candidates.values() if c["warm_ratio"] >= cfg.target_ratio]
        best = (max(ok, key=lambda c: (c["new_ndcg@10"], c["replay_weight"])) if ok
                else max(candidates.values(), key=lambda c: (c["warm_ratio"], c["replay_weight"])))
        w, form = best["replay_weight"], best["shift_form"]
        _set_rows(work, items_t, vec0, bias0)
    else:  # nothing to select on: the most conservative candidate
        w, form = max(weights), forms[0]
    pos = _Problem(work, _examples(seqs, 0, rng), items_t, cfg.batch_size)
    for p in (rep, valid):
        if p.needs_refresh:
            p.refresh(work)
    vecs, bias = _fit(work, (pos, rep), pos, rep, vec0, bias0, w, cfg)
    bias, shift, ratio = _calibrate(valid, warm0, vecs, bias, cfg, _shift_scale(form, seqs, items_t))
    _set_rows(work, items_t, vecs, bias)
    adapted = work
    adapted.eval()
    info = {"strategy": COLD_ITEMS_STRATEGY, "n_items": int(items_t.numel()),
            "n_sequences": len(seqs), "n_replay": len(rep_ex), "replay_weight": w,
            "bias_shift": shift, "shift_form": form, "warm_valid_ratio": ratio,
            "target_ratio": cfg.target_ratio, "candidates": candidates,
            "warm_valid_ndcg@10_before": warm0, "config": asdict(cfg),
            "seconds": time.perf_counter() - t0}
    tensors = {n: p.detach().clone() for n, p in adapted.named_parameters() if n in ITEM_PARAMS}
    art = AdaptArtifact(strategy=COLD_ITEMS_STRATEGY, config=asdict(cfg), base_fingerprint=fingerprint,
                        info=info, tensors=tensors)
    return AdaptResult(model=adapted, artifact=art, strategy=COLD_ITEMS_STRATEGY, info=info)


__all__ = ["COLD_ITEMS_STRATEGY", "ColdItemConfig", "adapt_cold_items"]
