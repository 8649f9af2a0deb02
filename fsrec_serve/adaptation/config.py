"""AdaptConfig: every knob of few-shot adaptation, with per-strategy defaults."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

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


# The optimisation knobs live in the training package's TrainConfig (held by AdaptConfig.train);
# these are adaptation's defaults for them (small cohorts, short sequences, inner validation).
ADAPT_TRAIN_DEFAULTS = dict(
    epochs=40,  # most passes over the support set (a pass is 1 step for a cohort <= batch_size)
    batch_size=256,  # support sequences per step
    weight_decay=0.0,  # AdamW decoupled weight decay (on matrices only)
    warmup_ratio=0.1,  # share of the steps spent warming the lr up from 0
    max_grad_norm=1.0,  # gradient clipping (global L2 norm); 0 = off
    patience=6,  # early stopping: passes without a better inner-validation NDCG@10
    device="cpu",  # "cpu", "cuda" or "auto"
    last_item_mask_ratio=0.5,  # "sequences" + cloze: share of windows whose LAST item is masked
    window="tail",  # support sequences are short: their last window only
    eval_every=1,  # the inner validation scores every pass
    progress=False,  # no progress bar inside adaptation
)
# TrainConfig fields that AdaptConfig decides itself (per strategy / from the support)
_OWN_TRAIN_FIELDS = ("lr", "use_ratings")


def _train_fields() -> frozenset:
    from ..training.config import TrainConfig

    return frozenset(f.name for f in fields(TrainConfig)) - set(_OWN_TRAIN_FIELDS)


def default_adapt_train_config():
    """The TrainConfig that AdaptConfig holds by default (ADAPT_TRAIN_DEFAULTS)."""
    from ..training.config import TrainConfig

    return TrainConfig(**ADAPT_TRAIN_DEFAULTS)


@dataclass(init=False)
class AdaptConfig:
    """Few-shot adaptation settings. ``None`` means "the strategy's default".

    The optimisation knobs (epochs, batch_size, weight_decay, warmup_ratio, max_grad_norm,
    patience, seed, device, num_threads, mask_prob, last_item_mask_ratio, crop/reorder/aug
    probabilities, ...) are NOT copied here: ``train`` holds the training package's TrainConfig
    and ``train_config(strategy)`` derives the run's config from it (lr per strategy). For
    convenience ``AdaptConfig(seed=3, epochs=4)`` routes TrainConfig keywords into ``train`` and
    ``cfg.seed`` reads them back."""

    train: Any = None  # TrainConfig of the adaptation runs (None = ADAPT_TRAIN_DEFAULTS); its lr
    #   and use_ratings are replaced per run (lr_for(strategy), use_ratings below)
    lr: Optional[float] = None  # peak learning rate; None = DEFAULT_LR[strategy]
    # -- batches on the support sequences ----------------------------------------------------
    examples: str = "prefixes"  # "prefixes": every support prefix (>= 2 items) is a window whose
    #   LAST item is the target (= "predict item t from items < t", the inference situation);
    #   "sequences": the support sequences as they are, with the model's own objective (cloze:
    #   random masks + last_item_mask_ratio; causal: every position predicts the next item)
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

    def __init__(self, train=None, **kw) -> None:
        from ..training.config import TrainConfig

        tkeys = _train_fields()
        flat = {k: kw.pop(k) for k in list(kw) if k in tkeys}
        own = {f.name: f for f in fields(self) if f.name != "train"}
        unknown = set(kw) - set(own)
        if unknown:
            raise ConfigError(f"unknown AdaptConfig fields {sorted(unknown)}; known: "
                              f"{sorted(set(own) | tkeys | {'train'})}")
        if train is None:
            train = default_adapt_train_config()
        elif isinstance(train, dict):
            train = TrainConfig.from_dict({**ADAPT_TRAIN_DEFAULTS, **train})
        self.train = replace(train, **flat) if flat else train
        for name, f in own.items():
            if name in kw:
                val = kw[name]
            elif f.default_factory is not MISSING:  # type: ignore[misc]
                val = f.default_factory()  # type: ignore[misc]
            else:
                val = f.default
            setattr(self, name, val)
        self.__post_init__()

    def __getattr__(self, name: str):
        # only called when normal lookup fails: TrainConfig knobs read through (cfg.seed, cfg.epochs)
        train = self.__dict__.get("train")
        if train is not None and name in _train_fields():
            return getattr(train, name)
        raise AttributeError(f"AdaptConfig has no field {name!r}")

    def __post_init__(self) -> None:
        if self.examples not in ("prefixes", "sequences"):
            raise ConfigError(f"examples must be 'prefixes' or 'sequences', got {self.examples!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
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

    def train_config(self, strategy: str, epochs: Optional[int] = None):
        """The TrainConfig of one adaptation run of ``strategy``: ``train`` with the strategy's
        lr, ``epochs`` passes (default train.epochs) and the rating switch resolved."""
        return replace(self.train, lr=self.lr_for(strategy), epochs=int(epochs or self.train.epochs),
                       use_ratings=True if self.use_ratings is None else bool(self.use_ratings))

    def with_overrides(self, **kw) -> "AdaptConfig":
        """A copy with fields changed (AdaptConfig fields or TrainConfig knobs)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(kw)
        return AdaptConfig(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AdaptConfig":
        """From ``to_dict()`` output; flat dicts of older artifacts (TrainConfig knobs at the
        top level) are accepted too."""
        return cls(**dict(d))

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
