"""Few-shot adaptation: zero-shot / head-only / full / PEFT (LoRA, AdaLoRA, IA3, prefix, prompt)
/ auto per cohort, per-user user-state offsets (``peruser``), adapter artifacts, continual
re-fine-tuning and cold-item adaptation.

Module order (no cycles): config -> strategies -> artifact -> fitting -> auto -> core (``adapt``);
``peruser`` needs only strategies."""

from .artifact import AdaptArtifact, load_adapted, merge, model_fingerprint
from .config import (
                     ALL_STRATEGIES,
                     DEFAULT_AUTO_CANDIDATES,
                     DEFAULT_LR,
                     MERGEABLE,
                     PEFT_STRATEGIES,
                     STRATEGIES,
                     AdaptConfig,
)
from .core import adapt, adapt_each_user
from .fitting import AdaptResult, check_support, inner_split
from .peruser import PerUserConfig, PerUserResult, fit_user_params
from .prompt_encoder import PromptableEncoder

__all__ = [
    "AdaptArtifact", "AdaptConfig", "AdaptResult", "ALL_STRATEGIES", "DEFAULT_AUTO_CANDIDATES",
    "DEFAULT_LR", "MERGEABLE", "PEFT_STRATEGIES", "PerUserConfig", "PerUserResult", "PromptableEncoder",
    "STRATEGIES", "adapt", "adapt_each_user", "check_support", "fit_user_params", "inner_split",
    "load_adapted", "merge", "model_fingerprint",
]
