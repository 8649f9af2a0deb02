"""FsRecConfig: the Hugging Face configuration of the sequential recommender."""

from __future__ import annotations

from transformers import PretrainedConfig

from ..contract import PAD_INDEX


class FsRecConfig(PretrainedConfig):
    r"""Configuration of :class:`FsRecModel` (BERT4Rec / SASRec-style sequential recommender).

    Item index 0 is padding, ``1..num_items`` are real items and ``num_items + 1`` is the
    ``[MASK]`` token used by the cloze objective, so the embedding table has ``num_items + 2`` rows.
    """

    model_type = "fsrec"

    def __init__(
        self,
        num_items: int = 100,  # real items in the catalogue (padding and [MASK] not counted)
        hidden_size: int = 64,  # width of item embeddings and of the transformer
        num_hidden_layers: int = 2,  # transformer blocks
        num_attention_heads: int = 2,  # attention heads per block
        intermediate_size: int = 256,  # width of the feed-forward layer
        max_seq_len: int = 50,  # longest history the model reads (older items are dropped)
        hidden_dropout_prob: float = 0.2,  # dropout on embeddings and hidden states
        attention_probs_dropout_prob: float = 0.2,  # dropout on attention weights
        objective: str = "causal",  # "causal" (SASRec, the library default) or "cloze" (BERT4Rec)
        mask_prob: float = 0.2,  # cloze: share of positions replaced by [MASK] in training
        num_item_features: int = 0,  # side features per item (e.g. 19 genres); 0 = off
        rating_head: bool = True,  # add the rating head (predicts a user's rating of an item)
        rating_loss_weight: float = 0.1,  # weight of the rating MSE in the multi-task loss
        rating_scale: tuple = (1.0, 5.0),  # ratings are predicted in this range
        initializer_range: float = 0.02,  # std of the normal weight init
        layer_norm_eps: float = 1e-12,  # LayerNorm epsilon (as BERT)
        **kwargs,
    ):
        if objective not in ("cloze", "causal"):
            from ..errors import ConfigError

            raise ConfigError(f"objective must be 'cloze' or 'causal', got {objective!r}")
        self.num_items = num_items
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_seq_len = max_seq_len
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.objective = objective
        self.mask_prob = mask_prob
        self.num_item_features = num_item_features
        self.rating_head = rating_head
        self.rating_loss_weight = rating_loss_weight
        self.rating_scale = tuple(rating_scale)
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        """Rows of the item table: padding + items + [MASK]."""
        return self.num_items + 2

    @property
    def mask_token_id(self) -> int:
        return self.num_items + 1

    def to_bert_config(self):
        """The ``transformers.BertConfig`` of the encoder inside :class:`FsRecModel`.

        The one place a BERT config is derived from an FsRecConfig: the model builds its encoder
        from it and ONNX Runtime's transformer optimizer reads the heads / hidden size from it
        (ORT knows ``bert``, not ``fsrec``)."""
        from transformers import BertConfig

        cfg = BertConfig(
            vocab_size=1,  # ids never reach BERT's own table: the model passes inputs_embeds
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_seq_len,
            type_vocab_size=1,
            layer_norm_eps=self.layer_norm_eps,
            initializer_range=self.initializer_range,
            is_decoder=self.objective == "causal",  # causal mask for SASRec-style
            use_cache=False,
            pad_token_id=PAD_INDEX,
        )
        cfg._attn_implementation = "eager"  # exportable and fusable by ONNX Runtime
        return cfg
