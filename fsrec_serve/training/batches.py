"""Training batches for the two objectives.

* **cloze** (BERT4Rec): a window of up to ``max_seq_len`` items; each position is replaced by
  [MASK] with probability ``mask_prob`` (at least one per window) and labelled with its item.
  A share ``last_item_mask_ratio`` of the windows masks only the LAST item instead: that is
  exactly the inference situation (history + [MASK] at the newest position).
* **causal** (SASRec): a window of up to ``max_seq_len + 1`` items; input ``w[:-1]``, labels
  ``w[1:]`` (every position predicts the next item).

Windows are right-aligned and left-padded to the longest window of the batch (positions are
counted from the right, so padding to the batch maximum instead of ``max_seq_len`` changes
nothing but speed). Sequences longer than a window contribute according to ``window``
(see :class:`~fsrec_serve.training.config.TrainConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from . import augment


@dataclass
class Window:
    items: list[int]  # item indices, newest last
    ratings: list[float]  # aligned ratings


def window_size(model_config) -> int:
    """Items per training window: max_seq_len (cloze) or max_seq_len + 1 (causal)."""
    return model_config.max_seq_len + (1 if model_config.objective == "causal" else 0)


def make_windows(sequences: Sequence, size: int, mode: str, rng: np.random.Generator,
                 min_len: int = 2, overlap: int = 0, prefix_prob: float = 0.0) -> list[Window]:
    """Cut each training sequence into the windows of one epoch (see TrainConfig.window).

    With ``prefix_prob`` a sequence also gives, with that probability, a window of its first
    m items (m uniform in min_len..min(n, size)): positions are counted from the newest item,
    so only such a window puts a user's first items where a new user's few items sit at
    inference."""
    out: list[Window] = []
    for s in sequences:
        items, ratings = list(s.items), list(s.ratings)
        n = len(items)
        if n < min_len:
            continue
        if prefix_prob and rng.random() < prefix_prob and min(n, size) > min_len:
            m = int(rng.integers(min_len, min(n, size)))  # < n: never a copy of the whole sequence
            out.append(Window(items[:m], ratings[:m]))
        if n <= size:
            out.append(Window(items, ratings))
            continue
        if mode in ("tail", "tail+random"):
            out.append(Window(items[-size:], ratings[-size:]))
        if mode == "random" or mode == "tail+random":
            hi = n if mode == "random" else n - 1  # tail+random: an earlier window
            end = int(rng.integers(size, hi + 1))
            out.append(Window(items[end - size:end], ratings[end - size:end]))
        if mode == "chunks":
            # from the newest end backwards; ``overlap`` items shared by neighbours (causal: 1,
            # so every transition is a training pair)
            end = n
            while True:
                start = max(0, end - size)
                if end - start >= min_len:
                    out.append(Window(items[start:end], ratings[start:end]))
                if start == 0:
                    break
                end = start + overlap
    return out


def _augment(w: Window, tc, rng: np.random.Generator) -> Window:
    items, ratings = w.items, w.ratings
    if tc.crop_prob and len(items) > 2 and rng.random() < tc.crop_prob:
        items, ratings = augment.crop(items, ratings, tc.crop_ratio, rng)
    if tc.reorder_prob and len(items) > 2 and rng.random() < tc.reorder_prob:
        items, ratings = augment.reorder(items, ratings, tc.reorder_ratio, rng)
    return Window(items, ratings)


def make_training_batches(
    sequences: Sequence,  # list[UserSequence] (items newest last, aligned ratings)
    model_config,  # FsRecConfig (objective, max_seq_len, mask_prob, mask_token_id)
    train_config,  # TrainConfig (batch_size, window, augmentation, mask knobs)
    rng: np.random.Generator,
    use_ratings: bool = False,  # add rating_labels
    candidate_mask: Optional[torch.Tensor] = None,  # [N] bool: labels outside it are dropped
    shuffle: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """One epoch of batches: dicts with input_ids [B, L], attention_mask [B, L],
    labels [B, L] (-100 = none) and optionally rating_labels [B, L] (0 = none)."""
    cloze = model_config.objective == "cloze"
    size = window_size(model_config)
    windows = make_windows(sequences, size, train_config.window, rng, min_len=1 if cloze else 2,
                           overlap=0 if cloze else 1,
                           prefix_prob=getattr(train_config, "prefix_prob", 0.0))
    windows = [_augment(w, train_config, rng) for w in windows]
    bs = train_config.batch_size
    if shuffle and getattr(train_config, "bucket_by_length", False) and len(windows) > bs:
        # batches of similar lengths (less padding), in random order; lengths are jittered so
        # equal-length windows mix differently every epoch
        lengths = np.array([len(w.items) for w in windows], dtype=np.float64)
        order = np.argsort(lengths + rng.random(len(windows)) * 0.1 * lengths.std(), kind="stable")
        groups = [order[i:i + bs] for i in range(0, len(order), bs)]
        chunks = [[windows[i] for i in groups[j]] for j in rng.permutation(len(groups))]
    else:
        if shuffle:
            windows = [windows[i] for i in rng.permutation(len(windows))]
        chunks = [windows[b:b + bs] for b in range(0, len(windows), bs)]
    mask_token = model_config.mask_token_id
    mask_prob = train_config.mask_prob if train_config.mask_prob is not None else model_config.mask_prob
    allowed = candidate_mask.bool().cpu().numpy() if candidate_mask is not None else None
    batches = []
    for chunk in chunks:
        inputs, labels, rlabels = [], [], []
        for w in chunk:
            items = np.asarray(w.items, dtype=np.int64)
            ratings = np.asarray(w.ratings, dtype=np.float32)
            if cloze:
                n = len(items)
                if rng.random() < train_config.last_item_mask_ratio:
                    masked = np.zeros(n, dtype=bool)
                    masked[-1] = True
                else:
                    masked = rng.random(n) < mask_prob
                    if not masked.any():
                        masked[int(rng.integers(n))] = True
                inp = np.where(masked, mask_token, items)
                lab = np.where(masked, items, -100)
                rat = np.where(masked, ratings, 0.0)
            else:
                inp, lab, rat = items[:-1].copy(), items[1:].copy(), ratings[1:].copy()
                if train_config.aug_mask_prob and len(inp) > 1 and rng.random() < train_config.aug_mask_prob:
                    inp = np.asarray(augment.mask_items(inp.tolist(), train_config.aug_mask_ratio,
                                                        mask_token, rng), dtype=np.int64)
            if allowed is not None:
                keep = (lab < 0) | allowed[np.clip(lab, 0, len(allowed) - 1)]
                lab = np.where(keep, lab, -100)
                rat = np.where(keep, rat, 0.0)
            inputs.append(inp)
            labels.append(lab)
            rlabels.append(rat)
        L = max(len(x) for x in inputs)
        B = len(inputs)
        input_ids = torch.zeros(B, L, dtype=torch.long)
        label_t = torch.full((B, L), -100, dtype=torch.long)
        rating_t = torch.zeros(B, L, dtype=torch.float32)
        for i, (x, y, r) in enumerate(zip(inputs, labels, rlabels)):
            n = len(x)
            input_ids[i, L - n:] = torch.from_numpy(np.asarray(x, dtype=np.int64))
            label_t[i, L - n:] = torch.from_numpy(np.asarray(y, dtype=np.int64))
            rating_t[i, L - n:] = torch.from_numpy(np.asarray(r, dtype=np.float32))
        if not (label_t != -100).any():
            continue
        batch = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": label_t}
        if use_ratings:
            batch["rating_labels"] = rating_t
        batches.append(batch)
    return batches
