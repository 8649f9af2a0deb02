"""Pretraining: batches, augmentation, schedule, optimiser groups, the loop (loss falls, early
stopping, best state restored, checkpoints), cold items, PEFT, and the train/evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsrec_serve.data import UserSequence
from fsrec_serve.errors import ConfigError, TrainingError
from fsrec_serve.evaluation import evaluate_next_item
from fsrec_serve.model import FsRecModel
from fsrec_serve.training import (
    TrainConfig, augment, build_model, default_model_config, default_train_config,
    linear_warmup_decay, make_training_batches, make_windows, parameter_groups, pretrain,
    pretrain_candidate_mask, recommended_config, train_loop, DataStats, data_stats, DEFAULT_OBJECTIVE,
)


def seq(items, ratings=None):
    return UserSequence("u", list(items), list(ratings or [1.0] * len(items)))


# -- windows and batches ---------------------------------------------------------------------
def test_windows_tail_random_chunks():
    rng = np.random.default_rng(0)
    s = [seq(range(1, 11))]  # 10 items
    assert [w.items for w in make_windows(s, 4, "tail", rng)] == [[7, 8, 9, 10]]
    tr = make_windows(s, 4, "tail+random", rng)
    assert tr[0].items == [7, 8, 9, 10] and len(tr) == 2
    assert tr[1].items[-1] <= 9 and tr[1].items == list(range(tr[1].items[0], tr[1].items[0] + 4))
    # chunks cover every item; causal chunks overlap by one so every transition is kept
    ch = make_windows(s, 4, "chunks", rng, overlap=1)
    assert [w.items for w in ch] == [[7, 8, 9, 10], [4, 5, 6, 7], [1, 2, 3, 4]]
    pairs = {(a, b) for w in ch for a, b in zip(w.items, w.items[1:])}
    assert pairs == {(i, i + 1) for i in range(1, 10)}
    assert [w.items for w in make_windows(s, 4, "chunks", rng, overlap=0)] == [
        [7, 8, 9, 10], [3, 4, 5, 6], [1, 2]]
    assert make_windows([seq([5])], 4, "tail", rng, min_len=2) == []  # too short


def test_prefix_windows_start_where_the_sequence_starts():
    rng = np.random.default_rng(0)
    s = [seq(range(1, 31)), seq([4, 5])]  # 30 items; a 2-item sequence has no shorter prefix
    prefixes = []
    for _ in range(400):
        ws = make_windows(s, 8, "tail", rng, prefix_prob=0.5)
        assert ws[-1].items == [4, 5]  # the short sequence: its own window only
        tails = [w for w in ws if w.items[-1] == 30]
        assert [w.items for w in tails] == [list(range(23, 31))]
        prefixes += [w.items for w in ws if w.items[0] == 1]
    assert 150 < len(prefixes) < 250  # about half of the epochs
    assert all(p == list(range(1, len(p) + 1)) and 2 <= len(p) < 8 for p in prefixes)
    assert {len(p) for p in prefixes} == set(range(2, 8))
    with pytest.raises(ConfigError, match="prefix_prob"):
        TrainConfig(prefix_prob=1.5)


def test_causal_batches_shift_labels(tiny_model_config):
    cfg = tiny_model_config(num_items=30, objective="causal", max_seq_len=5)
    tc = TrainConfig(batch_size=8, window="tail", progress=False)
    b = make_training_batches([seq([1, 2, 3]), seq(range(1, 11), [float(i) for i in range(1, 11)])],
                              cfg, tc, np.random.default_rng(0), use_ratings=True, shuffle=False)[0]
    assert b["input_ids"].shape == (2, 5)  # longest window (6 items) minus one
    assert b["input_ids"][0].tolist() == [0, 0, 0, 1, 2]  # left-padded, newest last
    assert b["labels"][0].tolist() == [-100, -100, -100, 2, 3]
    assert b["input_ids"][1].tolist() == [5, 6, 7, 8, 9]
    assert b["labels"][1].tolist() == [6, 7, 8, 9, 10]
    assert b["rating_labels"][1].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0]
    assert b["attention_mask"][0].tolist() == [0, 0, 0, 1, 1]


def test_cloze_batches_mask_and_last_item(tiny_model_config):
    cfg = tiny_model_config(num_items=300, objective="cloze", max_seq_len=6)
    mask_id = cfg.mask_token_id
    sequences = [seq(range(1 + i, 7 + i)) for i in range(200)]
    tc = TrainConfig(batch_size=1000, mask_prob=0.3, last_item_mask_ratio=0.0, progress=False)
    b = make_training_batches(sequences, cfg, tc, np.random.default_rng(0), shuffle=False)[0]
    masked = b["input_ids"] == mask_id
    assert torch.equal(masked, b["labels"] != -100)  # labels exactly at masked positions
    assert masked.any(1).all()  # at least one per window
    assert 0.25 < masked.float().mean() < 0.4
    orig = torch.tensor([list(range(1 + i, 7 + i)) for i in range(200)])
    assert torch.equal(b["labels"][masked], orig[masked])
    tc_last = TrainConfig(batch_size=1000, last_item_mask_ratio=1.0, progress=False)
    b = make_training_batches(sequences, cfg, tc_last, np.random.default_rng(0), shuffle=False)[0]
    assert (b["input_ids"][:, -1] == mask_id).all() and ((b["labels"] != -100).sum(1) == 1).all()


def test_batches_drop_labels_outside_the_candidate_mask(tiny_model_config):
    cfg = tiny_model_config(num_items=10, objective="causal", max_seq_len=4)
    cm = torch.ones(11, dtype=torch.bool)
    cm[[0, 3]] = False
    b = make_training_batches([seq([1, 2, 3, 4, 5])], cfg, TrainConfig(window="tail"),
                              np.random.default_rng(0), candidate_mask=cm)[0]
    assert b["labels"][0].tolist() == [2, -100, 4, 5]


def test_bucketing_keeps_every_window_once(tiny_model_config):
    cfg = tiny_model_config(num_items=500, objective="causal", max_seq_len=50)
    rng = np.random.default_rng(0)
    sequences = [seq(range(1, int(rng.integers(3, 60)))) for _ in range(300)]
    tc = TrainConfig(batch_size=32, window="tail", bucket_by_length=True)
    batches = make_training_batches(sequences, cfg, tc, np.random.default_rng(1))
    assert sum(b["input_ids"].shape[0] for b in batches) == 300
    total_pad = sum(int((b["input_ids"] == 0).sum()) for b in batches)
    tc2 = TrainConfig(batch_size=32, window="tail", bucket_by_length=False)
    pad2 = sum(int((b["input_ids"] == 0).sum())
               for b in make_training_batches(sequences, cfg, tc2, np.random.default_rng(1)))
    assert total_pad < pad2 / 2  # far less padding


# -- augmentation ----------------------------------------------------------------------------
def test_augmentations():
    rng = np.random.default_rng(0)
    items, ratings = list(range(1, 11)), [float(i) for i in range(1, 11)]
    c, cr = augment.crop(items, ratings, 0.6, rng)
    assert len(c) == 6 and c == list(range(c[0], c[0] + 6)) and cr == [float(x) for x in c]
    m = augment.mask_items(items, 0.3, 99, rng)
    assert m.count(99) == 3 and [x for x in m if x != 99] == [x for x in items if x in m]
    r, rr = augment.reorder(items, ratings, 0.5, rng)
    assert sorted(r) == items and rr == [float(x) for x in r]  # ratings move with their items
    diff = [i for i in range(10) if r[i] != items[i]]
    assert diff and max(diff) - min(diff) < 5  # only a contiguous part of 5 moved


def test_augmentation_probabilities_apply_in_batches(tiny_model_config):
    cfg = tiny_model_config(num_items=60, objective="causal", max_seq_len=20)
    sequences = [seq(range(1, 21)) for _ in range(50)]
    tc = TrainConfig(batch_size=100, crop_prob=1.0, crop_ratio=0.5, window="tail",
                     bucket_by_length=False)
    b = make_training_batches(sequences, cfg, tc, np.random.default_rng(0))[0]
    assert ((b["input_ids"] != 0).sum(1) == 9).all()  # 10 kept items -> 9 inputs
    tc = TrainConfig(batch_size=100, aug_mask_prob=1.0, aug_mask_ratio=0.25, window="tail")
    b = make_training_batches(sequences, cfg, tc, np.random.default_rng(0))[0]
    assert (b["input_ids"] == cfg.mask_token_id).sum(1).eq(5).all()  # 25% of 19 inputs
    assert (b["labels"] == cfg.mask_token_id).sum() == 0  # labels untouched


# -- config, schedule, optimiser groups --------------------------------------------------------
def test_train_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="crop_prob"):
        TrainConfig(crop_prob=1.5)
    with pytest.raises(ConfigError, match="window"):
        TrainConfig(window="everything")
    tc = TrainConfig(epochs=3, lr=2e-3, output_dir="x")
    tc.save(tmp_path / "t.json")
    assert TrainConfig.load(tmp_path / "t.json") == tc
    with pytest.raises(ConfigError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 1})


def _stats(users, median, q90, items=1000):
    return DataStats(users=users, items=items, interactions=int(users * median), length_median=median,
                     length_q90=q90)


def test_fitted_settings_follow_the_statistics_not_the_name():
    # by hand from the rule: q90 243 -> 250 -> capped 200; median 63 >= 20 -> 0.2;
    # 943 / 30 = 31.4 -> 16 -> at least 32; 943 < 5000 -> patience 10
    ml = recommended_config(_stats(943, 63, 243))
    assert ml.model["max_seq_len"] == 200 and ml.model["hidden_dropout_prob"] == 0.2
    assert (ml.train["batch_size"], ml.train["patience"], ml.model["objective"]) == (32, 10, "causal")
    # Beauty's shape: q90 12 -> 50; median 4 -> 0.5; 22363 / 30 = 745 -> 512 -> at most 128
    be = recommended_config(_stats(22363, 4, 12))
    assert (be.model["max_seq_len"], be.model["hidden_dropout_prob"]) == (50, 0.5)
    assert (be.train["batch_size"], be.train["patience"]) == (128, 5)
    mid = recommended_config(_stats(3000, 30, 120))  # 3000 / 30 = 100 -> 64; q90 120 -> 150
    assert (mid.model["max_seq_len"], mid.train["batch_size"]) == (150, 64)
    cl = recommended_config(_stats(943, 63, 243), "cloze")
    assert (cl.model["mask_prob"], cl.train["batch_size"], cl.train["lr"]) == (0.5, 16, 2e-3)
    assert len(ml.reasons) == 4 and ml.reasons[0].startswith("max_seq_len = 200")
    TrainConfig(**ml.train)  # valid fields
    with pytest.raises(ConfigError, match="objective"):
        recommended_config(_stats(943, 63, 243), "mlm")
    with pytest.raises(ConfigError, match="not to a name"):
        recommended_config("ml-100k")


def test_data_stats_of_sequences_and_one_default_objective():
    st = data_stats([seq(range(1, 11)), seq([1, 2]), seq([3, 4, 5, 6])], num_items=20)
    assert (st.users, st.items, st.interactions, st.length_median) == (3, 20, 16, 4.0)
    assert st.density == pytest.approx(16 / 60)
    with pytest.raises(ConfigError, match="no training sequences"):
        data_stats([], 5)
    import argparse

    from fsrec_serve.commands.train import add_parsers
    from fsrec_serve.model import FsRecConfig
    from fsrec_serve.pipeline import PipelineConfig

    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers())
    cli = p.parse_args(["train", "--output-dir", "x"]).objective
    assert cli == PipelineConfig().objective == FsRecConfig().objective == DEFAULT_OBJECTIVE == "causal"


def test_linear_warmup_then_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = linear_warmup_decay(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[9] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_no_weight_decay_on_biases_and_layernorm(tiny_model):
    model = tiny_model("causal")
    groups = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "item_embeddings.weight" in decayed
    assert "output_bias.bias" in plain
    assert all("LayerNorm" in n or n.endswith("bias") for n in plain)
    assert not any("LayerNorm" in n for n in decayed)
    only = parameter_groups(model, 0.1, lambda n, p: n.startswith("output_bias"))
    assert sum(p.numel() for g in only for p in g["params"]) == model.output_bias.bias.numel()
    with pytest.raises(TrainingError, match="no trainable"):
        parameter_groups(model, 0.1, [])


# -- the loop --------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_tiny_training_run_loss_falls(objective, tiny_model, tiny_loo, fast_train_config):
    model = tiny_model(objective)
    res = train_loop(model, tiny_loo.loo_train(), fast_train_config(epochs=20, lr=2e-2),
                     valid_examples=tiny_loo.loo_valid(), evaluate_fn=evaluate_next_item)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert res.best_valid["ndcg@10"] > 0.3  # the walk i -> i+1 is learnable
    assert "rating_loss" in res.history[0]  # ratings vary in the tiny log: multi-task
    assert not model.training  # left in eval mode


def test_early_stopping_and_best_state_restored(tiny_model, tiny_loo, fast_train_config):
    model = tiny_model("causal")
    # lr so small that validation never improves: stop after `patience` evaluations
    tc = fast_train_config(epochs=30, lr=1e-9, patience=2)
    res = train_loop(model, tiny_loo.loo_train(), tc, valid_examples=tiny_loo.loo_valid(),
                     evaluate_fn=evaluate_next_item)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1

    # a real run: the model returned is the best epoch's, not the last one's
    model = tiny_model("causal")
    tc = fast_train_config(epochs=8, lr=2e-2, patience=0)
    res = train_loop(model, tiny_loo.loo_train(), tc, valid_examples=tiny_loo.loo_valid(),
                     evaluate_fn=evaluate_next_item)
    again = evaluate_next_item(model, tiny_loo.loo_valid(), ks=(10,))
    assert again["ndcg@10"] == pytest.approx(res.best_valid["ndcg@10"])
    assert res.best_valid["ndcg@10"] == max(h["valid_ndcg@10"] for h in res.history)


def test_validation_without_a_metric_function_is_refused(tiny_model, tiny_loo, fast_train_config):
    with pytest.raises(TrainingError, match="evaluate_fn"):
        train_loop(tiny_model(), tiny_loo.loo_train(), fast_train_config(epochs=1),
                   valid_examples=tiny_loo.loo_valid())


def test_max_train_seconds_stops(tiny_model, tiny_loo, fast_train_config):
    res = train_loop(tiny_model(), tiny_loo.loo_train(),
                     fast_train_config(epochs=500, max_train_seconds=0.01),
                     valid_examples=tiny_loo.loo_valid(), evaluate_fn=evaluate_next_item)
    assert res.epochs_run == 1 and res.best_epoch == 1


def test_rating_loss_off_when_ratings_are_constant(tiny_model, tiny_loo, fast_train_config):
    sequences = [UserSequence(s.user, s.items, [1.0] * len(s)) for s in tiny_loo.loo_train()]
    res = train_loop(tiny_model("causal"), sequences, fast_train_config(epochs=1))
    assert "rating_loss" not in res.history[0]


def test_seeded_runs_are_identical(tiny_model, tiny_loo, fast_train_config):
    runs = []
    for _ in range(2):
        m = tiny_model("cloze", seed=5, hidden_dropout_prob=0.1)
        train_loop(m, tiny_loo.loo_train(), fast_train_config(epochs=2, seed=3))
        runs.append(m.item_embeddings.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_train_loop_with_a_peft_wrapped_model(tiny_model, tiny_loo, fast_train_config):
    from peft import LoraConfig, get_peft_model

    model = tiny_model("causal")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    res = train_loop(peft_model, tiny_loo.loo_train(), fast_train_config(epochs=2),
                     valid_examples=tiny_loo.loo_valid(), evaluate_fn=evaluate_next_item)
    assert res.epochs_run == 2 and "valid_ndcg@10" in res.history[0]
    changed = [n for n, p in peft_model.named_parameters() if "lora_" in n
               and not torch.equal(p, torch.zeros_like(p))]
    assert changed
    for n, p in peft_model.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n.replace(".base_layer", "")]), n  # frozen


def test_diverging_loss_is_a_training_error(tiny_model, tiny_loo, fast_train_config):
    model = tiny_model("causal")
    with torch.no_grad():
        model.item_embeddings.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="lower lr"):
        train_loop(model, tiny_loo.loo_train(), fast_train_config(epochs=1))


# -- pretrain: cold items, defaults, checkpoints ------------------------------------------------
def test_pretrain_never_trains_cold_items_and_writes_a_checkpoint(tiny_splits, fast_train_config,
                                                                   tmp_path):
    cfg = default_model_config(tiny_splits, "causal", hidden_size=16, num_hidden_layers=1,
                               intermediate_size=32, max_seq_len=10)
    assert cfg.num_items == len(tiny_splits.item_map) and cfg.num_item_features == 4
    assert cfg.rating_head  # tiny ratings vary
    cold = torch.as_tensor(tiny_splits.cold_items)
    assert cold.numel() > 0
    res = pretrain(tiny_splits, cfg, fast_train_config(epochs=3, output_dir=str(tmp_path / "run")))
    model = res.model
    assert model.item_map == tiny_splits.item_map
    assert torch.count_nonzero(model.item_embeddings.weight[cold]) == 0  # never trained
    assert torch.count_nonzero(model.output_bias.bias[cold]) == 0
    assert torch.equal(model.item_features, torch.as_tensor(tiny_splits.item_features)[: len(
        model.item_features)].float()) or model.item_features.shape[0] == cfg.vocab_size
    # a cold item still has a vector: its side features
    assert torch.count_nonzero(model.item_vectors()[cold]) > 0
    out = tmp_path / "run"
    for f in ("config.json", "model.safetensors", "item_map.json", "train_config.json",
              "metrics.jsonl", "fsrec_run.json"):
        assert (out / f).exists(), f
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {"loss", "valid_ndcg@10", "valid_hr@10", "lr", "seconds"} <= set(lines[0])
    info = json.loads((out / "fsrec_run.json").read_text())
    assert info["dataset"] == "tiny" and info["best_epoch"] == res.best_epoch
    assert info["split_config"]["cold_item_frac"] == 0.1
    assert TrainConfig.load(out / "train_config.json").epochs == 3
    loaded = FsRecModel.from_pretrained(out).eval()
    h = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10]])
    assert torch.allclose(loaded.next_item_scores(h), model.eval().next_item_scores(h), atol=1e-6)


def test_pretrain_candidate_mask(tiny_splits):
    m = pretrain_candidate_mask(tiny_splits)
    assert m.shape == (len(tiny_splits.item_map) + 1,)
    assert not m[0] and not m[torch.as_tensor(tiny_splits.cold_items)].any()
    assert int(m.sum()) == len(tiny_splits.item_map) - len(tiny_splits.cold_items)


def test_build_model_refuses_a_mismatched_config(tiny_splits, tiny_model_config):
    with pytest.raises(ConfigError, match="num_items"):
        build_model(tiny_splits, tiny_model_config(num_items=5))
    with pytest.raises(ConfigError, match="num_item_features"):
        build_model(tiny_splits, tiny_model_config(num_items=len(tiny_splits.item_map), features=7))


def test_default_train_config_overrides(tiny_splits):
    tc = default_train_config(tiny_splits, "cloze", epochs=2)
    assert tc.epochs == 2
    with pytest.raises(TypeError):
        default_train_config(tiny_splits, "cloze", epoch=2)


# -- CLI on real data (one short epoch) -----------------------------------------------------------
def test_cli_train_then_evaluate(data_dir, tmp_path, capsys):
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K missing")
    from fsrec_serve.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--objective", "causal",
               "--epochs", "1", "--max-seq-len", "10", "--hidden-size", "16", "--layers", "1",
               "--full-loo", "--output-dir", str(out), "--no-progress", "--num-threads", "1"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] == 1 and summary["split"]["warm_users"] == 943
    rc = main(["evaluate", "--model", str(out), "--data-dir", str(data_dir), "--popularity",
               "--ks", "10"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["dataset"] == "ml-100k" and ev["model"]["n"] == 943
    assert 0 <= ev["model"]["ndcg@10"] <= ev["model"]["hr@10"] <= 1
    assert "rmse" in ev["model"] and ev["popularity"]["ndcg@10"] > 0.02
    assert main(["evaluate", "--model", str(tmp_path / "nothing"), "--dataset", "ml-100k"]) == 2


@pytest.mark.parametrize("cmd", [["train", "--help"], ["evaluate", "--help"]])
def test_cli_help(cmd, capsys):
    from fsrec_serve.cli import main

    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 0 and "usage: fsrec" in capsys.readouterr().out
