"""Adversarial training on item embeddings: the step, its undo, and training with it."""

from __future__ import annotations

import pytest
import torch

from fsrec_serve.data import UserSequence
from fsrec_serve.errors import ConfigError
from fsrec_serve.training import TrainConfig, train_loop
from fsrec_serve.training.adversarial import EmbeddingAdversary


def test_each_row_moves_by_eps_of_its_norm_along_its_gradient_and_comes_back():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]))
    clean = w.detach().clone()
    adv = EmbeddingAdversary(w, eps=0.1)
    w.grad = torch.tensor([[0.0, 2.0], [0.0, 0.0], [-1.0, 0.0]])  # row 1: no gradient
    assert adv.perturb()
    # by hand: row 0 norm 5 -> 0.5 along (0, 1); row 1 unchanged; row 2 norm 2 -> 0.2 along (-1, 0)
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.5], [1.0, 0.0], [-0.2, 2.0]]))
    adv.restore()
    assert torch.equal(w.detach(), clean)
    with pytest.raises(ConfigError, match="eps"):
        EmbeddingAdversary(w, eps=0.0)
    with pytest.raises(ConfigError, match="adversarial_eps"):
        TrainConfig(adversarial_eps=-1)


def test_the_step_raises_the_loss(tiny_model, tiny_splits):
    model = tiny_model(objective="causal")
    ids = torch.tensor([[0, 3, 5, 7, 2], [4, 6, 8, 1, 9]])
    batch = {"input_ids": ids[:, :-1], "attention_mask": (ids[:, :-1] > 0).long(), "labels": ids[:, 1:]}
    model.train(False)
    clean = model(**batch).loss
    clean.backward()
    adv = EmbeddingAdversary(model.item_embeddings.weight, eps=0.05)
    adv.perturb()
    with torch.no_grad():
        assert float(model(**batch).loss) > float(clean)  # the gradient direction, per row
    adv.close()
    with torch.no_grad():
        assert float(model(**batch).loss) == pytest.approx(float(clean), abs=1e-5)


def test_training_with_a_table_left_out_leaves_it_unchanged(tiny_model, tiny_splits):
    model = tiny_model(objective="causal")
    table = model.item_embeddings.weight.detach().clone()
    seqs = [UserSequence(f"u{i}", [1 + (i + j) % 9 for j in range(6)], [1.0] * 6) for i in range(12)]
    tc = TrainConfig(epochs=2, batch_size=4, adversarial_eps=0.1, progress=False, patience=0)
    res = train_loop(model, seqs, tc, trainable_parameters=lambda n, p: "item_embeddings" not in n)
    assert torch.equal(model.item_embeddings.weight.detach(), table)
    assert model.item_embeddings.weight.grad is None  # nothing left behind
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    free = tiny_model(objective="causal")
    train_loop(free, seqs, tc)  # a trainable table moves and keeps its flag
    assert free.item_embeddings.weight.requires_grad
    assert not torch.equal(free.item_embeddings.weight.detach(), table)
    frozen = tiny_model(objective="causal")
    frozen.item_embeddings.weight.requires_grad_(False)
    train_loop(frozen, seqs, tc)
    assert not frozen.item_embeddings.weight.requires_grad  # its flag is given back
    assert torch.equal(frozen.item_embeddings.weight.detach(), table)
