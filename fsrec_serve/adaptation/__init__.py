"""Few-shot adaptation: zero-shot / head-only / full / PEFT (LoRA, AdaLoRA, IA3, prefix, prompt)
/ auto, adapter artifacts, continual re-fine-tuning and cold-item adaptation."""

from .artifact import AdaptArtifact, load_adapted, merge, model_fingerprint
from .config import (ALL_STRATEGIES, DEFAULT_AUTO_CANDIDATES, DEFAULT_LR, MERGEABLE, PEFT_STRATEGIES,
                     STRATEGIES, AdaptConfig)
from .core import AdaptResult, adapt, adapt_each_user, check_support, inner_split
from .prompt_encoder import PromptableEncoder

__all__ = [
    "AdaptArtifact", "AdaptConfig", "AdaptResult", "ALL_STRATEGIES", "DEFAULT_AUTO_CANDIDATES",
    "DEFAULT_LR", "MERGEABLE", "PEFT_STRATEGIES", "PromptableEncoder", "STRATEGIES", "adapt",
    "adapt_each_user", "check_support", "inner_split", "load_adapted", "merge", "model_fingerprint",
]
