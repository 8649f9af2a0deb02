"""AdaptConfig: every knob of few-shot adaptation, with per-strategy defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

# strategies that train something (zero_shot trains nothing; auto chooses among the others)
TRAINED_STRATEGIES = ("head_only", "full", "lora", "adalora", "ia3", "prefix", "prompt")
STRATEGIES = ("zero_shot",) + TRAINED_STRATEGIES
ALL_STRATEGIES = STRATEGIES + ("auto",)
PEFT_STRATEGIES = ("lora", "adalora", "ia3", "prefix", "prompt")  # saved as PEFT adapters
MERGEABLE = ("lora", "adalora", "ia3")  # PEFT adapters that merge_and_unload() can fold in

# peak learning rate per strategy when AdaptConfig.lr is None (chosen on dev runs of ML-100K,
# split seed 0, k in {1, 5}; see docs/adaptation.md)
DEFAULT_LR = {
    "head_only": 1e-1,  # a bias vector: needs a large step to move the item prior within ~20 passes
    "full": 5e-4,
    "lora": 1e-2,
    "adalora": 1e-2,
    "ia3": 3e-2,
    "prefix": 1e-2,
    "prompt": 1e-2,
}

# candidates that strategy="auto" evaluates on the inner split (zero_shot is always added first,
# so auto never does worse than the unadapted model on the inner validation)
DEFAULT_AUTO_CANDIDATES: tuple[dict, ...] = (
    {"strategy": "head_only", "lr": 1e-1},
    {"strategy": "lora", "lr": 1e-2, "lora_r": 8},
    {"strategy": "full", "lr": 5e-4},
    {"strategy": "full", "lr": 1e-4},
)


@dataclass
class AdaptConfig:
    """Few-shot adaptation settings. ``None`` means "the strategy's default"."""

    # -- optimisation (AdamW + linear warmup/decay, the training package's train_loop) ---------
    lr: Optional[float] = None  # peak learning rate; None = DEFAULT_LR[strategy]
    epochs: int = 40  # most passes over the support set (a pass is 1 step for a cohort <= batch_size)
    batch_size: int = 256  # support sequences per step
    weight_decay: float = 0.0  # AdamW decoupled weight decay (on matrices only)
    warmup_ratio: float = 0.1  # share of the steps spent warming the lr up from 0
    max_grad_norm: float = 1.0  # gradient clipping (global L2 norm); 0 = off
    patience: int = 6  # early stopping: passes without a better inner-validation NDCG@10
    seed: int = 0  # seeds the inner split, masking, augmentation and initialisation
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    num_threads: Optional[int] = None  # torch CPU threads; None = leave as is
    # -- batches on the support sequences ----------------------------------------------------
    examples: str = "prefixes"  # "prefixes": every support prefix (>= 2 items) is a window whose
    #   LAST item is the target (= "predict item t from items < t", the inference situation);
    #   "sequences": the support sequences as they are, with the model's own objective (cloze:
    #   random masks + last_item_mask_ratio; causal: every position predicts the next item)
    last_item_mask_ratio: float = 0.5  # "sequences" + cloze: share of windows whose LAST item is masked
    mask_prob: Optional[float] = None  # cloze: share of positions masked otherwise; None = model's
    crop_prob: float = 0.0  # augmentation: probability of cropping a support sequence
    reorder_prob: float = 0.0  # augmentation: probability of shuffling a part of a support sequence
    aug_mask_prob: float = 0.0  # augmentation (causal): probability of item-masking the inputs
    use_ratings: Optional[bool] = None  # train the rating head on support ratings; None = if they vary
    # -- inner validation on the support set (never the query) ------------------------------
    inner_valid_frac: float = 0.5  # share of support users whose LAST support item is held out
    refit: bool = True  # after early stopping, retrain on the whole support for the best #passes
    # -- what is trained -------------------------------------------------------------------
    train_output_bias: bool = True  # PEFT strategies also train the per-item output bias
    train_rating_head: bool = False  # also train the rating head (if any): for rating predictions;
    #   off by default because serving ranks by next-item scores (keeps adapters small)
    lora_r: int = 8  # LoRA rank (AdaLoRA: the final average rank)
    lora_alpha: Optional[int] = None  # LoRA scaling numerator; None = 2 * r
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_targets: tuple = ("query", "value")  # BERT linear layers that get LoRA / AdaLoRA
    adalora_init_r: int = 12  # AdaLoRA starting rank per layer (pruned towards lora_r; >= lora_r)
    num_virtual_tokens: int = 4  # prefix / prompt tuning: virtual tokens
    # -- auto -------------------------------------------------------------------------------
    auto_candidates: Optional[list] = None  # list of {"strategy": ..., overrides}; None = default grid
    auto_folds: int = 1  # inner folds: 1 = one held-out share (inner_valid_frac); n > 1 = n disjoint
    #   groups of users, each held out once (n times the cost, less noise)
    # -- free-form extra fields recorded with the artifact -------------------------------------
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.examples not in ("prefixes", "sequences"):
            raise ConfigError(f"examples must be 'prefixes' or 'sequences', got {self.examples!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.inner_valid_frac <= 1.0:
            raise ConfigError(f"inner_valid_frac must be in (0, 1], got {self.inner_valid_frac}")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.auto_folds < 1:
            raise ConfigError(f"auto_folds must be >= 1, got {self.auto_folds}")
        self.lora_targets = tuple(self.lora_targets)

    def lr_for(self, strategy: str) -> float:
        """The peak learning rate used for ``strategy``."""
        if self.lr is not None:
            return float(self.lr)
        if strategy not in DEFAULT_LR:
            raise ConfigError(f"strategy {strategy!r} has no learning rate (it does not train)")
        return DEFAULT_LR[strategy]

    def with_overrides(self, **kw) -> "AdaptConfig":
        known = {f.name for f in fields(self)}
        unknown = set(kw) - known
        if unknown:
            raise ConfigError(f"unknown AdaptConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AdaptConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown AdaptConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "AdaptConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def check_strategy(strategy: str) -> str:
    s = strategy.replace("-", "_")
    if s not in ALL_STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(ALL_STRATEGIES)}")
    return s
