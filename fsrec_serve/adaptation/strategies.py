"""What each strategy trains: build the trainable model from a (copied) pretrained FsRecModel.

=============  ===========================================================================
strategy       trained parameters (everything else frozen, bit-identical)
=============  ===========================================================================
zero_shot      nothing: the support items are only the history
head_only      ``output_bias`` (per-item score bias), + ``rating_head`` with train_rating_head;
               the tied item table, the encoder and the side-feature projection stay frozen
full           every parameter (small learning rate)
lora           PEFT LoRA on BERT's ``query``/``value`` (``lora_targets``), plus
               ``modules_to_save`` = ``output_bias`` (+ ``rating_head`` with train_rating_head)
adalora        PEFT AdaLoRA on the same layers (rank budget pruned from ``adalora_init_r`` to
               ``lora_r`` during training), same ``modules_to_save``
ia3            PEFT IA3: learned rescaling of ``key``, ``value`` and the feed-forward output
               layer's input, same ``modules_to_save``
prefix         PEFT prefix tuning: ``num_virtual_tokens`` trained key/value vectors per layer
               (BERT wrapped by :class:`PromptableEncoder`), plus ``output_bias``
prompt         PEFT prompt tuning: ``num_virtual_tokens`` trained input vectors in front of the
               history (BERT wrapped by :class:`PromptableEncoder`), plus ``output_bias``
=============  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import AdaptationError
from .config import AdaptConfig
from .prompt_encoder import PromptableEncoder

# IA3: keys, values and the input of each block's feed-forward output layer
# (``encoder.layer.N.output.dense``; the attention's ``attention.output.dense`` is not included)
IA3_TARGETS = r".*\.(key|value|layer\.\d+\.output\.dense)$"
IA3_FEEDFORWARD = r".*\.layer\.\d+\.output\.dense$"


@dataclass
class Prepared:
    model: Any  # what train_loop trains and what scores: FsRecModel or PeftModel(FsRecModel)
    trainable: Optional[Callable[[str, torch.nn.Parameter], bool]]  # train_loop's filter (None = requires_grad)
    peft_model: Any = None  # the PeftModel holding the adapter (None for zero_shot/head_only/full)
    on_epoch_end: Optional[Callable[[dict], None]] = None  # AdaLoRA's rank allocation hook
    extra_modules: tuple = ()  # FsRecModel attributes trained outside PEFT (saved as tensors)


def fsrec_of(model: Any) -> Any:
    """The FsRecModel inside ``model`` (a PeftModel, a LoraModel, or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _modules_to_save(model, cfg: AdaptConfig) -> list[str]:
    mods = []
    if cfg.train_output_bias:
        mods.append("output_bias")
    if cfg.train_rating_head and getattr(model, "rating_head", None) is not None:
        mods.append("rating_head")
    return mods


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def steps_per_epoch(n_sequences: int, batch_size: int) -> int:
    return max(1, math.ceil(n_sequences / batch_size))


def prepare(model, strategy: str, cfg: AdaptConfig, total_steps: int = 100) -> Prepared:
    """Turn ``model`` (a private copy: it is modified in place) into the trainable form of
    ``strategy``. ``total_steps`` is only used by AdaLoRA's rank schedule."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig, get_peft_model

    if strategy == "zero_shot":
        _freeze(model)
        return Prepared(model=model, trainable=None)
    if strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return Prepared(model=model, trainable=None)
    if strategy == "head_only":
        _freeze(model)
        mods = ["output_bias"]
        if getattr(model, "rating_head", None) is not None and cfg.train_rating_head:
            mods.append("rating_head")
        for m in mods:
            for p in getattr(model, m).parameters():
                p.requires_grad_(True)
        return Prepared(model=model, trainable=None, extra_modules=tuple(mods))

    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r
    mts = _modules_to_save(model, cfg) or None
    if strategy == "lora":
        pc = LoraConfig(r=cfg.lora_r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=list(cfg.lora_targets), modules_to_save=mts)
    elif strategy == "adalora":
        total = max(int(total_steps), 4)
        tinit = max(1, int(0.1 * total))
        tfinal = max(1, int(0.3 * total))
        if tinit >= total - tfinal:
            tinit, tfinal = 0, 0
        pc = AdaLoraConfig(init_r=max(cfg.adalora_init_r, cfg.lora_r), target_r=cfg.lora_r, lora_alpha=alpha,
                           lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets),
                           modules_to_save=mts, total_step=total, tinit=tinit, tfinal=tfinal,
                           deltaT=1)
    elif strategy == "ia3":
        pc = IA3Config(target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD,
                       modules_to_save=mts)
    elif strategy in ("prefix", "prompt"):
        return _prepare_prompt_learning(model, strategy, cfg)
    else:
        raise AdaptationError(f"prepare() does not know strategy {strategy!r}")
    pm = get_peft_model(model, pc)
    hook = None
    if strategy == "adalora":
        state = {"step": 0}

        def hook(rec: dict) -> None:
            # train_loop calls this after each pass; the last step's gradients are still there
            state["step"] += int(rec.get("steps", 1))
            pm.base_model.update_and_allocate(state["step"])

    return Prepared(model=pm, trainable=None, peft_model=pm, on_epoch_end=hook)


def _prepare_prompt_learning(model, strategy: str, cfg: AdaptConfig) -> Prepared:
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    _freeze(model)
    enc = PromptableEncoder(model.encoder, model.config.max_seq_len)
    if strategy == "prefix":
        pc = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                num_virtual_tokens=cfg.num_virtual_tokens)
    else:
        pc = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                num_virtual_tokens=cfg.num_virtual_tokens)
        enc.num_prompt_tokens = cfg.num_virtual_tokens
    pm = get_peft_model(enc, pc)
    _init_virtual_tokens(model, pm, strategy, cfg.seed)
    model.encoder = pm
    extra = []
    if cfg.train_output_bias:
        for p in model.output_bias.parameters():
            p.requires_grad_(True)
        extra.append("output_bias")
    return Prepared(model=model, trainable=None, peft_model=pm, extra_modules=tuple(extra))


@torch.no_grad()
def _init_virtual_tokens(model, pm, strategy: str, seed: int) -> None:
    """Start the virtual tokens as the model's own view of real items instead of PEFT's N(0, 1)
    (which, at this model's scale, wrecks the first passes): the P items with the highest output
    bias (the model's most popular items) act as a pseudo-history.

    prompt: their item vectors; prefix: the keys and values every layer computes for them (PEFT's
    prefix row layout: for each layer l, key then value: index 2 * l + {0, 1})."""
    emb = pm.prompt_encoder["default"].embedding.weight  # prompt: [P, H]; prefix: [P, layers * 2 * H]
    P = emb.shape[0]
    n = model.config.num_items
    bias = model.output_bias.bias.detach()[1: n + 1]
    top = torch.topk(bias + 1e-6 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)).to(bias.device),
                     min(P, n)).indices + 1  # [P] item indices
    table = model.item_vectors().detach()
    if strategy == "prompt":
        emb.copy_(table[top].to(emb.dtype))
        return
    bert = pm.base_model.bert  # the wrapped BertModel
    x = table[top].unsqueeze(0)  # [1, P, H] the items as a (right-aligned) history
    L = model.config.max_seq_len
    pos = (torch.arange(P) + (L - P)).clamp(min=0).unsqueeze(0)
    out = bert(inputs_embeds=x, position_ids=pos, token_type_ids=torch.zeros_like(pos),
               output_hidden_states=True, return_dict=True)
    rows = []
    for layer, h in zip(bert.encoder.layer, out.hidden_states[:-1]):  # input of each layer
        att = layer.attention.self
        rows += [att.key(h)[0], att.value(h)[0]]  # each [P, H]
    emb.copy_(torch.cat(rows, dim=-1).to(emb.dtype))  # [P, layers * 2 * H]


def attach_adapter(model, strategy: str, adapter_dir: str, cfg: AdaptConfig):
    """Re-create the trained form of ``strategy`` on a fresh base model from a saved PEFT adapter
    (inference mode). Returns the scorer (PeftModel for LoRA-family, FsRecModel otherwise)."""
    from peft import PeftModel

    if strategy in ("lora", "adalora", "ia3"):
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    if strategy in ("prefix", "prompt"):
        enc = PromptableEncoder(model.encoder, model.config.max_seq_len)
        if strategy == "prompt":
            enc.num_prompt_tokens = cfg.num_virtual_tokens
        model.encoder = PeftModel.from_pretrained(enc, adapter_dir, is_trainable=False)
        return model
    raise AdaptationError(f"strategy {strategy!r} has no PEFT adapter")


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_trainable(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
