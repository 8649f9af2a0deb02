"""The plain SASRec recipe, written independently of the library: the reference a base model must beat.

SASRec (Kang & McAuley, 2018) as it is usually reproduced with a full-softmax cross-entropy:
pre-LayerNorm self-attention blocks with a causal mask, a point-wise ReLU feed-forward of the
model width, item embeddings scaled by sqrt(d) plus learned positions, the output layer tied to
the item embeddings; one window of the newest ``max_len + 1`` training items per user and epoch;
Adam (no weight decay, no warm-up, no clipping); the best epoch on the validation item.

It shares nothing with ``fsrec_serve.model`` or ``fsrec_serve.training`` (only the evaluation
protocol, so both are scored by the same code):

    python -m bench.quality --datasets beauty --methods plain-sasrec --seeds 0
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class PlainConfig:
    hidden: int = 64  # model width d
    layers: int = 2  # self-attention blocks
    heads: int = 1  # attention heads
    max_len: int = 50  # newest items read
    dropout: float = 0.5  # embedding, attention and feed-forward dropout
    lr: float = 1e-3  # Adam learning rate (betas 0.9, 0.98)
    batch_size: int = 128  # users per step
    epochs: int = 200  # most epochs
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    max_seconds: float | None = None  # wall-clock budget for training


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, p: float):
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d, eps=1e-8), nn.LayerNorm(d, eps=1e-8)
        self.attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.Dropout(p), nn.ReLU(), nn.Linear(d, d), nn.Dropout(p))

    def forward(self, x, causal, keep):  # x [B, L, d], causal [L, L] bool, keep [B, L, 1]
        q = self.ln_attn(x)
        a, _ = self.attn(q, x, x, attn_mask=causal, need_weights=False)
        x = self.ln_ffn(q + a)
        return (x + self.ffn(x)) * keep


class PlainSASRec(nn.Module):
    def __init__(self, num_items: int, cfg: PlainConfig):
        super().__init__()
        self.max_seq_len, self.d = cfg.max_len, cfg.hidden
        self.item = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.hidden, eps=1e-8)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, L] left-padded -> [B, L, d]
        L = ids.shape[1]
        keep = (ids > 0).unsqueeze(-1).float()
        pos = torch.arange(self.max_seq_len - L, self.max_seq_len, device=ids.device)
        x = self.drop(self.item(ids) * math.sqrt(self.d) + self.pos(pos)) * keep
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).triu(1)  # True = hidden
        for b in self.blocks:
            x = b(x, causal, keep)
        return self.ln(x)

    def next_item_scores(self, ids: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, N]
        return self.hidden(ids)[:, -1] @ self.item.weight.T


def _pad_left(rows: list[list[int]], L: int) -> torch.Tensor:
    out = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, L - len(r):] = torch.as_tensor(r[-L:])
    return out


def train_plain(splits, cfg: PlainConfig, valid: list, seed: int = 0) -> dict:
    """Train on ``splits.loo_train()``, keep the best epoch on ``valid`` (NDCG@10)."""
    from fsrec_serve.evaluation import evaluate_next_item

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PlainSASRec(len(splits.item_map), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    seqs = [list(s.items[-(cfg.max_len + 1):]) for s in splits.loo_train() if len(s.items) >= 2]
    best, best_state, best_epoch, history, t0, t_best = -1.0, None, 0, [], time.perf_counter(), 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order, losses = rng.permutation(len(seqs)), []
        for b in range(0, len(order), cfg.batch_size):
            rows = [seqs[i] for i in order[b:b + cfg.batch_size]]
            L = max(len(r) for r in rows) - 1  # left padding to the batch's longest window: the
            #   positions are counted from the newest item, so this equals padding to max_len
            inp, tgt = _pad_left([r[:-1] for r in rows], L), _pad_left([r[1:] for r in rows], L)
            h = model.hidden(inp)[tgt > 0]  # [T, d]: only positions with a next item
            loss = nn.functional.cross_entropy(h @ model.item.weight.T, tgt[tgt > 0])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        v = evaluate_next_item(model, valid, ks=(10,))["ndcg@10"]
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 5),
                        "valid_ndcg@10": round(v, 5), "seconds": round(time.perf_counter() - t0, 1)})
        if v > best:
            best, best_state, best_epoch, t_best = v, copy.deepcopy(model.state_dict()), epoch, time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if epoch - best_epoch >= cfg.patience or (cfg.max_seconds and elapsed > cfg.max_seconds):
            break
    model.load_state_dict(best_state)
    model.eval()
    return {"model": model, "best_valid": {"ndcg@10": best}, "best_epoch": best_epoch,
            "history": history, "seconds_to_best": t_best, "seconds_total": time.perf_counter() - t0}
