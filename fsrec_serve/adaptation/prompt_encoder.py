"""Make the BERT encoder of :class:`FsRecModel` usable by PEFT's prefix and prompt tuning.

PEFT's prompt-learning methods (``PrefixTuningConfig``, ``PromptTuningConfig``) wrap a Hugging
Face *task* model and rewrite its keyword arguments. On our model that fails in two ways
(reproduced by ``tests/unit/test_adaptation_peft.py::test_plain_peft_prompt_learning_fails``):

* wrapping the whole :class:`FsRecModel` fails because PEFT calls the model with
  ``inputs_embeds=`` / ``past_key_values=`` (``TypeError: FsRecModel.forward() got an unexpected
  keyword argument 'inputs_embeds'``) -- the recommender's forward takes item ids;
* wrapping the inner ``BertModel`` (``task_type="FEATURE_EXTRACTION"``) gets further, but PEFT
  drops our right-aligned ``position_ids`` for prompt tuning ("Position ids are not supported
  for parameter efficient tuning. Ignoring position ids.") and shifts them by the number of
  virtual tokens for prefix tuning. BERT then counts positions from the left over
  ``L + num_virtual_tokens`` tokens, which overflows its ``max_seq_len`` position table
  (``IndexError: index out of range in self`` for prefix tuning; ``RuntimeError: The expanded
  size of the tensor (L+P) must match the existing size (L)`` for prompt tuning), and prompt
  tuning returns ``P`` extra hidden states in front of the sequence.

The workaround is this small wrapper, which PEFT wraps instead of ``BertModel``. It recomputes
the model's right-aligned position ids from the real sequence length (so PEFT's rewriting no
longer matters), gives the virtual prompt tokens position 0 (any fixed position works: a
trained prompt vector absorbs a constant position embedding), passes explicit
``token_type_ids`` and strips the prompt tokens' hidden states, so the caller sees ``[B, L, H]``
as before. With no virtual tokens it is exactly ``BertModel`` (tested bit-for-bit).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

# PEFT warns on every prompt-tuning forward that it drops position_ids; PromptableEncoder
# recomputes them itself, so the warning is noise here.
warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")


class PromptableEncoder(nn.Module):
    """A ``BertModel`` that takes ``inputs_embeds`` and tolerates PEFT's prompt learning."""

    def __init__(self, bert: nn.Module, max_seq_len: int):
        super().__init__()
        self.bert = bert  # the FsRecModel's BertModel (weights shared, not copied)
        self.config = bert.config  # PEFT reads num_layers / token_dim / heads from it
        self.max_seq_len = int(max_seq_len)  # size of the position table (right-aligned ids)
        self.num_prompt_tokens = 0  # prompt tuning: virtual tokens PEFT puts in front of inputs_embeds

    @property
    def device(self) -> torch.device:  # PEFT moves its prompt encoder here
        return next(self.bert.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bert.parameters()).dtype

    # PEFT looks the word embeddings up under this name (BERT's own table is unused: 1 row)
    @property
    def embeddings(self) -> nn.Module:
        return self.bert.embeddings

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,  # unused (FsRecModel always passes inputs_embeds)
        attention_mask: Optional[torch.Tensor] = None,  # [B, P + L] (prompt) or [B, P + L] (prefix) or [B, L]
        inputs_embeds: Optional[torch.Tensor] = None,  # [B, P + L, H] (prompt tuning) or [B, L, H]
        position_ids: Optional[torch.Tensor] = None,  # ignored: recomputed (PEFT rewrites them)
        token_type_ids: Optional[torch.Tensor] = None,  # ignored: always 0
        past_key_values=None,  # prefix tuning: the virtual keys/values of every layer
        **kwargs,
    ) -> BaseModelOutput:
        if inputs_embeds is None:
            raise ValueError("PromptableEncoder needs inputs_embeds (FsRecModel.encode passes them)")
        B, T, _ = inputs_embeds.shape
        P = self.num_prompt_tokens
        L = T - P  # real tokens
        real = torch.arange(L, device=inputs_embeds.device) + (self.max_seq_len - L)  # right-aligned
        pos = torch.cat([torch.zeros(P, dtype=torch.long, device=inputs_embeds.device), real])
        pos = pos.unsqueeze(0).expand(B, T)  # [B, P + L]
        types = torch.zeros(B, T, dtype=torch.long, device=inputs_embeds.device)
        out = self.bert(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=pos,
            token_type_ids=types,
            past_key_values=past_key_values,
            return_dict=True,
        )
        return BaseModelOutput(last_hidden_state=out.last_hidden_state[:, P:])  # [B, L, H]
