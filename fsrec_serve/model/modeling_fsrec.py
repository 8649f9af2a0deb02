"""FsRecModel: a small transformer sequential recommender on the transformers BERT encoder.

Shapes: B = batch, L = sequence length (<= max_seq_len), H = hidden size,
N = num_items + 1 score columns (column 0 = padding, always masked), V = num_items + 2 rows.

Histories are LEFT-padded with 0 and newest-last. Position ids are counted from the right,
so the newest item always sits at position ``max_seq_len - 1`` whatever the padded length:
the scores of a history do not depend on how much padding it carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers.utils import ModelOutput

from ..contract import ITEM_MAP_FILE, MASK_VALUE, PAD_INDEX
from ..idmap import IdMap, pad_left
from .configuration_fsrec import FsRecConfig


@dataclass
class FsRecOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None  # scalar multi-task loss (when labels are given)
    scores: Optional[torch.Tensor] = None  # [B, N] next-item scores, or [M, N] at labelled positions
    rating: Optional[torch.Tensor] = None  # [M] predicted ratings at rated labelled positions
    next_item_loss: Optional[torch.Tensor] = None  # scalar cross-entropy part
    rating_loss: Optional[torch.Tensor] = None  # scalar MSE part


class ItemBias(nn.Module):
    """Per-item output bias, a module so that PEFT's modules_to_save can train it."""

    def __init__(self, n: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self) -> torch.Tensor:
        return self.bias


class RatingHead(nn.Module):
    """Predicts a user's rating of a target item from (user state h, item vector e)."""

    def __init__(self, hidden: int, low: float, high: float):
        super().__init__()
        self.low, self.high = float(low), float(high)
        self.mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # h, e: [..., H] -> [...]
        x = torch.cat([h, e, h * e], dim=-1)
        return self.low + (self.high - self.low) * torch.sigmoid(self.mlp(x).squeeze(-1))


class FsRecPreTrainedModel(PreTrainedModel):
    config_class = FsRecConfig
    base_model_prefix = "fsrec"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)


class FsRecModel(FsRecPreTrainedModel):
    def __init__(self, config: FsRecConfig):
        super().__init__(config)
        H, V = config.hidden_size, config.vocab_size
        self.item_embeddings = nn.Embedding(V, H, padding_idx=PAD_INDEX)  # tied with the output layer
        if config.num_item_features > 0:
            # side features (e.g. genres, multi-hot) -> added to the item's id embedding, so a
            # new item has a useful vector before anyone interacts with it
            self.feature_proj = nn.Linear(config.num_item_features, H, bias=False)
            self.register_buffer("item_features", torch.zeros(V, config.num_item_features))
        else:
            self.feature_proj = None
        self.encoder = BertModel(config.to_bert_config(), add_pooling_layer=False)
        self.output_bias = ItemBias(config.num_items + 1)
        self.rating_head = (
            RatingHead(H, *config.rating_scale) if config.rating_head else None
        )
        self.item_map: IdMap | None = None  # raw id <-> index, saved with the model
        self.post_init()

    def _prune_heads(self, heads_to_prune: dict) -> None:
        """{layer: [head, ...]} -> those heads removed from the encoder (what
        ``PreTrainedModel.prune_heads`` calls; the config's ``pruned_heads`` records them, so
        ``from_pretrained`` rebuilds the pruned shapes)."""
        self.encoder._prune_heads(heads_to_prune)

    # -- item vectors --------------------------------------------------------------------------
    def item_vectors(self) -> torch.Tensor:
        """[V, H] id embedding + side-feature embedding of every row (pad, items, [MASK])."""
        w = self.item_embeddings.weight
        if self.feature_proj is not None:
            w = w + self.feature_proj(self.item_features)
        return w

    def set_item_features(self, features) -> None:
        """Copy a [num_items + 1, F] (or [V, F]) feature matrix into the model's buffer."""
        if self.feature_proj is None:
            raise ValueError("this model was built with num_item_features=0")
        f = torch.as_tensor(features, dtype=torch.float32)
        self.item_features.zero_()
        self.item_features[: f.shape[0]] = f

    # -- encoder -------------------------------------------------------------------------------
    def _position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> right-aligned position ids [B, L]: the newest item sits at max_seq_len - 1
        whatever L is, so a history scores the same at any padded (or unpadded) length."""
        B, L = input_ids.shape
        offset = self.config.max_seq_len - L
        return (torch.arange(L, device=input_ids.device) + offset).unsqueeze(0).expand(B, L)

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids [B, L] (left-padded, L <= max_seq_len) -> hidden states [B, L, H]."""
        if attention_mask is None:
            attention_mask = (input_ids != PAD_INDEX).long()
        embeds = F.embedding(input_ids, self.item_vectors())  # [B, L, H]
        out = self.encoder(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=self._position_ids(input_ids)
        )
        return out.last_hidden_state

    def _encode_last_position(self, x: torch.Tensor) -> torch.Tensor:
        """Model input [B, L] -> hidden state of the LAST position [B, H], the last block run for
        that position only: it needs keys/values of every position but the query, attention
        output and feed-forward of one position (BERT's own modules; the key/value projections
        fed through ``encoder_hidden_states``, the last row of the causal/padding mask).
        Mathematically ``encode(x)[:, -1]``, with fewer FLOPs (about 40 % for 2 blocks)."""
        B, L = x.shape
        mask = (x != PAD_INDEX).long()
        embeds = F.embedding(x, self.item_vectors())  # [B, L, H]
        bert = self.encoder
        h = bert.embeddings(inputs_embeds=embeds, position_ids=self._position_ids(x))  # [B, L, H]
        ext = bert.get_extended_attention_mask(mask, (B, L))  # [B, 1, 1|L, L] additive
        layers = bert.encoder.layer
        for layer in layers[:-1]:
            h = layer(h, attention_mask=ext)[0]
        last = layers[-1]
        q_in = h[:, -1:]  # [B, 1, H]
        ctx = last.attention.self(q_in, attention_mask=ext[:, :, -1:, :], encoder_hidden_states=h)[0]
        a = last.attention.output(ctx, q_in)  # [B, 1, H]
        return last.feed_forward_chunk(a)[:, 0]  # [B, H]

    def _scores(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """h [..., H] -> scores [..., N] over padding + items (padding masked)."""
        items = table[: self.config.num_items + 1]  # [N, H] (drop the [MASK] row)
        scores = h @ items.t() + self.output_bias()
        pad = torch.zeros_like(scores[..., :1]) + MASK_VALUE
        return torch.cat([pad, scores[..., 1:]], dim=-1)

    def score_state(self, state: torch.Tensor) -> torch.Tensor:
        """User state [B, H] -> next-item scores [B, N] (column 0 = padding, masked)."""
        return self._scores(state, self.item_vectors())

    def prepare_history(self, history_ids: torch.Tensor) -> torch.Tensor:
        """A left-padded (or unpadded) history [B, L] -> the model's inference input
        [B, min(L + 1, max_seq_len)] for cloze, [B, min(L, max_seq_len)] for causal.

        Cloze appends [MASK] and keeps the newest ``max_seq_len`` positions, so a history of its
        own length L < max_seq_len keeps all of its items, exactly as when it is padded to
        max_seq_len (where the dropped oldest slot is padding). Causal reads the history as is."""
        x = history_ids
        if self.config.objective != "causal":
            mask_col = torch.full_like(history_ids[:, :1], self.config.mask_token_id)
            x = torch.cat([history_ids, mask_col], dim=1)
        return x[:, -int(self.config.max_seq_len):]

    def user_state(self, history_ids: torch.Tensor, last_position_only: bool = False) -> torch.Tensor:
        """history [B, L] (left-padded, newest last, any L >= 1) -> the user's state [B, H] (the
        hidden state that predicts the next item). ``last_position_only`` computes the last
        block for that position only (same state, fewer FLOPs; what the exported graph runs)."""
        x = self.prepare_history(history_ids)
        if last_position_only:
            return self._encode_last_position(x)
        return self.encode(x, (x != PAD_INDEX).long())[:, -1]

    @staticmethod
    def apply_user_params(state: torch.Tensor, user_params: Optional[torch.Tensor]) -> torch.Tensor:
        """state [..., H] + per-user parameters [..., H] -> adapted state [..., H].

        The per-user parameter set is an offset of the user state, fitted on that user's own
        support (``fsrec_serve.adaptation``). ``None`` or zeros give the base model's zero-shot
        state exactly, so one base model serves every user (contract: ``user_params``)."""
        return state if user_params is None else state + user_params

    def next_item_scores(self, history_ids: torch.Tensor, user_params: Optional[torch.Tensor] = None,
                         last_position_only: bool = False) -> torch.Tensor:
        """history [B, L] (left-padded, newest last), optional user_params [B, H] -> scores [B, N]."""
        state = self.apply_user_params(self.user_state(history_ids, last_position_only), user_params)
        return self.score_state(state)

    def predict_ratings(self, history_ids: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """history [B, L], candidate items [B, C] -> predicted ratings [B, C]."""
        if self.rating_head is None:
            raise ValueError("this model was built with rating_head=False")
        h = self.user_state(history_ids)  # [B, H]
        e = F.embedding(items, self.item_vectors())  # [B, C, H]
        return self.rating_head(h.unsqueeze(1).expand_as(e), e)

    # -- training forward ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L] model input (cloze: with [MASK] tokens), left-padded
        attention_mask: Optional[torch.Tensor] = None,  # [B, L] 1 = real token
        labels: Optional[torch.Tensor] = None,  # [B, L] target item per position, -100 = none
        rating_labels: Optional[torch.Tensor] = None,  # [B, L] rating of the label item, 0 = none
        candidate_mask: Optional[torch.Tensor] = None,  # [N] bool, False = item left out of the softmax
        return_dict: bool = True,
    ) -> FsRecOutput:
        """With labels: loss and scores at the labelled positions. Without: next-item scores
        [B, N] read at the last position of ``input_ids``."""
        hidden = self.encode(input_ids, attention_mask)  # [B, L, H]
        table = self.item_vectors()
        if labels is None:
            return FsRecOutput(scores=self._scores(hidden[:, -1], table))
        sel = labels != -100  # [B, L]
        h = hidden[sel]  # [M, H]
        target = labels[sel]  # [M]
        logits = self._scores(h, table)  # [M, N]
        if candidate_mask is not None:
            logits = logits.masked_fill(~candidate_mask.to(logits.device), MASK_VALUE)
        ce = F.cross_entropy(logits, target) if target.numel() else hidden.sum() * 0.0
        loss, rating_pred, mse = ce, None, None
        if rating_labels is not None and self.rating_head is not None:
            r = rating_labels[sel]  # [M]
            rated = r > 0
            if rated.any():
                rating_pred = self.rating_head(h[rated], table[target[rated]])
                mse = F.mse_loss(rating_pred, r[rated])
                loss = loss + self.config.rating_loss_weight * mse
        return FsRecOutput(loss=loss, scores=logits, rating=rating_pred, next_item_loss=ce, rating_loss=mse)

    # -- persistence with the id map -------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.item_map is not None:
            self.item_map.save(Path(save_directory) / ITEM_MAP_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        path = Path(pretrained_model_name_or_path) / ITEM_MAP_FILE
        if path.exists():
            model.item_map = IdMap.load(path)
        return model


def pad_histories(histories, max_len: int, device=None) -> torch.Tensor:
    """list of index lists (newest last) -> LongTensor [B, max_len], left-padded, latest kept
    (:func:`fsrec_serve.idmap.pad_left` as a tensor)."""
    out = torch.from_numpy(pad_left(histories, max_len))
    return out.to(device) if device is not None else out
