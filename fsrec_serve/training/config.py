"""Training configuration (the settings fitted to a log are in :mod:`.fitted`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import ConfigError


@dataclass
class TrainConfig:
    """Knobs of :func:`train_loop` / :func:`pretrain`. Every field has a safe default."""

    epochs: int = 100  # maximum passes over the training sequences
    batch_size: int = 128  # sequences (windows) per optimisation step
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on biases / LayerNorm)
    warmup_ratio: float = 0.05  # share of all steps spent warming the lr up linearly from 0
    max_grad_norm: float = 5.0  # gradient clipping (global L2 norm); 0 = off
    patience: int = 10  # stop after this many evaluations without a better valid NDCG@10; 0 = off
    seed: int = 0  # seeds torch, numpy and random
    device: str = "auto"  # "cpu", "cuda" or "auto" (cuda when available)
    num_threads: Optional[int] = None  # torch intra-op threads on CPU; None = leave as is
    # -- batches ------------------------------------------------------------------------
    mask_prob: Optional[float] = None  # cloze: share of positions masked; None = model_config.mask_prob
    last_item_mask_ratio: float = 0.2  # cloze: share of windows whose LAST item only is masked
    window: str = "tail+random"  # how sequences longer than max_seq_len are used: "tail" (last
    #   window only), "random" (one random window per epoch), "tail+random" (the tail window plus,
    #   for long sequences, one random earlier window per epoch), "chunks" (cut into windows)
    bucket_by_length: bool = False  # batch windows of similar length together (less padding). Off:
    #   a batch of short windows weighs each labelled position more than a mixed batch does, which
    #   tilts the loss toward short histories (Beauty ablation, seed 0: test NDCG@10 0.0503 on, 0.0554 off)
    prefix_prob: float = 0.0  # per sequence and epoch: probability of one more window holding the
    #   sequence's first m items (m random, < its length), so the model learns how users start
    # -- augmentation (CL4SRec-style; each applied to a training window with its probability) --
    crop_prob: float = 0.0  # probability of cropping a window to a random contiguous part
    crop_ratio: float = 0.8  # share of the window kept by a crop
    aug_mask_prob: float = 0.0  # probability of item-masking a window (inputs only, causal)
    aug_mask_ratio: float = 0.2  # share of items replaced by [MASK] when item-masking
    reorder_prob: float = 0.0  # probability of shuffling a contiguous part of a window
    reorder_ratio: float = 0.2  # share of the window shuffled by a reorder
    adversarial_eps: float = 0.0  # > 0: adversarial training, item embeddings moved by this share
    #   of their norm along the loss gradient and that loss added (fsrec_serve.training.adversarial)
    # -- multi-task ---------------------------------------------------------------------
    use_ratings: bool = True  # pass rating labels (rating head loss) when ratings are not constant
    # -- evaluation / checkpoints / logging ------------------------------------------------
    eval_every: int = 1  # evaluate on the validation examples every this many epochs
    eval_batch_size: int = 64  # histories per evaluation batch (eager attention: B*heads*L*L floats)
    output_dir: Optional[str] = None  # where the best checkpoint and metrics.jsonl go; None = nowhere
    progress: bool = True  # tqdm progress bar
    max_train_seconds: Optional[float] = None  # wall-clock budget; training stops after it

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.device not in ("cpu", "cuda", "auto") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.window not in ("tail", "random", "tail+random", "chunks"):
            raise ConfigError(
                f"window must be 'tail', 'random', 'tail+random' or 'chunks', got {self.window!r}"
            )
        for name in ("crop_prob", "aug_mask_prob", "reorder_prob", "last_item_mask_ratio",
                     "warmup_ratio", "prefix_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        if self.adversarial_eps < 0:
            raise ConfigError(f"adversarial_eps must be >= 0, got {self.adversarial_eps}")
        if self.mask_prob is not None and not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob}")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
