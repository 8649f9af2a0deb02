"""FsRecModel: shapes, padding and masking rules, losses, and the save/load round trip."""

from __future__ import annotations

import pytest
import torch

from fsrec_serve.errors import ConfigError
from fsrec_serve.model import MASK_VALUE, FsRecConfig, FsRecModel, pad_histories


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_save_load_round_trip_with_item_map(objective, tiny_model, tmp_path):
    model = tiny_model(objective, features=True)
    with torch.no_grad():  # make weights non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "item_map.json").exists() and (tmp_path / "config.json").exists()
    loaded = FsRecModel.from_pretrained(tmp_path).eval()
    assert loaded.config.objective == objective and loaded.config.num_item_features == 4
    assert loaded.item_map == model.item_map
    assert torch.equal(loaded.item_features, model.item_features)
    h = pad_histories([[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]], 12)
    assert torch.equal(loaded.next_item_scores(h), model.next_item_scores(h))
    items = torch.tensor([[1, 2], [3, 4], [5, 6]])
    assert torch.equal(loaded.predict_ratings(h, items), model.predict_ratings(h, items))


def test_auto_classes_load_the_model(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModel

    tiny_model("causal").save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "fsrec"
    assert isinstance(AutoModel.from_pretrained(tmp_path), FsRecModel)


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_scores_do_not_depend_on_padding(objective, tiny_model):
    model = tiny_model(objective)
    short = pad_histories([[3, 4, 5]], 6)
    long = pad_histories([[3, 4, 5]], 12)
    assert torch.allclose(model.next_item_scores(short), model.next_item_scores(long), atol=1e-5)


def test_score_layout(tiny_model):
    model = tiny_model("cloze")
    s = model.next_item_scores(pad_histories([[1, 2], [3]], 12))
    n = model.config.num_items
    assert s.shape == (2, n + 1)  # padding + items; [MASK] is never a column
    assert (s[:, 0] == MASK_VALUE).all()
    assert (s[:, 1:] > MASK_VALUE).all()


def test_pad_histories_keeps_the_newest():
    h = pad_histories([[1, 2, 3, 4, 5], [7]], 3)
    assert h.tolist() == [[3, 4, 5], [0, 0, 7]]


def test_forward_losses_and_candidate_mask(tiny_model):
    model = tiny_model("causal")
    model.train()
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    labels = torch.tensor([[-100, 2, 3, 4], [5, 6, 7, 8]])
    ratings = torch.tensor([[0.0, 4.0, 5.0, 1.0], [2.0, 0.0, 3.0, 3.0]])
    out = model(input_ids=x, attention_mask=(x != 0).long(), labels=labels, rating_labels=ratings)
    assert out.scores.shape == (7, model.config.num_items + 1)  # one row per labelled position
    assert out.rating.shape == (6,)  # rated labelled positions
    assert torch.isclose(out.loss, out.next_item_loss + model.config.rating_loss_weight * out.rating_loss)
    out.loss.backward()
    assert model.item_embeddings.weight.grad is not None
    cm = torch.ones(model.config.num_items + 1, dtype=torch.bool)
    cm[[0, 10, 11]] = False
    out = model(input_ids=x, labels=labels, candidate_mask=cm)
    assert (out.scores[:, [10, 11]] == MASK_VALUE).all()
    plain = model.eval()(input_ids=x)
    assert plain.loss is None and plain.scores.shape == (2, model.config.num_items + 1)


def test_cold_item_vector_comes_from_features(tiny_model):
    model = tiny_model("cloze", features=True)
    with torch.no_grad():
        model.item_embeddings.weight[5].zero_()
    v = model.item_vectors()[5]
    assert torch.allclose(v, model.feature_proj(model.item_features[5]))
    assert v.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ConfigError, match="objective"):
        FsRecConfig(num_items=5, objective="mlm")
    c = FsRecConfig(num_items=10)
    assert c.vocab_size == 12 and c.mask_token_id == 11


def test_rating_head_off(tiny_model):
    model = tiny_model("causal", rating_head=False)
    with pytest.raises(ValueError, match="rating_head"):
        model.predict_ratings(pad_histories([[1]], 4), torch.tensor([[2]]))
