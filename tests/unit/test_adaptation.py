"""Few-shot adaptation on tiny random models: what each strategy trains, merging, artifacts,
auto's inner validation, and support-set errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from fsrec_serve.adaptation import (AdaptArtifact, AdaptConfig, adapt, adapt_each_user, inner_split,
                                    load_adapted, merge)
from fsrec_serve.adaptation.fitting import train_strategy
from fsrec_serve.data import Example, UserSequence
from fsrec_serve.errors import AdaptationError, SupportSetError
from fsrec_serve.evaluation import evaluate_next_item
from fsrec_serve.model import FsRecConfig, FsRecModel, pad_histories

warnings.filterwarnings("ignore", message=".*[Pp]osition ids.*")

N_ITEMS = 40
L = 10


def tiny_model(objective="cloze", seed=0, features=0) -> FsRecModel:
    torch.manual_seed(seed)
    cfg = FsRecConfig(num_items=N_ITEMS, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_seq_len=L, objective=objective,
                      num_item_features=features, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    return FsRecModel(cfg).eval()


COHORT_ITEMS = list(range(1, 9))  # the cohort only ever interacts with items 1..8


def pattern_support(n_users=40, k=6, seed=0) -> list[UserSequence]:
    """A learnable cohort: every user's support is k distinct items out of 1..8 in random order,
    so the next item is always one of the few cohort items not yet in the history."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        items = [int(i) for i in rng.choice(COHORT_ITEMS, size=k, replace=False)]
        out.append(UserSequence(f"u{u}", items, [float(rng.integers(1, 6)) for _ in items]))
    return out


def fast(**kw) -> AdaptConfig:
    base = dict(epochs=4, patience=2, lr=1e-2)
    base.update(kw)
    return AdaptConfig(**base)


def histories():
    return pad_histories([[1, 2, 3], [7, 8], [20, 21, 22, 23]], L)  # [3, L]


def sd(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- which parameters each strategy changes ---------------------------------------------------------
ADAPTER_MARKERS = ("lora_", "ranknum", "ia3_l", "prompt_encoder", "modules_to_save")


def _normalise(name: str) -> str:
    """Adapted-model parameter name -> the base model's name for the same frozen tensor."""
    n = name
    for pre in ("base_model.model.",):
        if n.startswith(pre):
            n = n[len(pre):]
    n = n.replace("encoder.base_model.bert.", "encoder.")  # prefix/prompt wrapper
    n = n.replace("encoder.word_embeddings.", "encoder.embeddings.word_embeddings.")  # PEFT's alias
    n = n.replace(".base_layer", "").replace(".original_module", "")
    return n


@pytest.mark.parametrize("strategy", ["head_only", "full", "lora", "adalora", "ia3", "prefix", "prompt"])
def test_strategy_trains_only_its_parameters(strategy):
    model = tiny_model()
    before = sd(model)
    res = adapt(model, pattern_support(), strategy, fast())
    # the caller's model is never modified
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"adapt() modified the caller's model ({k})"
    assert res.strategy == strategy
    adapted = res.model.state_dict()
    changed, frozen_same = set(), set()
    for name, t in adapted.items():
        if any(m in name for m in ADAPTER_MARKERS):
            continue
        base_name = _normalise(name)
        assert base_name in before, f"unexpected tensor {name} ({base_name})"
        if torch.equal(t, before[base_name]):
            frozen_same.add(base_name)
        else:
            changed.add(base_name)
    params = {n for n, _ in model.named_parameters()}
    if strategy == "head_only":
        assert changed and changed <= {n for n in params if n.startswith(("output_bias", "rating_head"))}
        assert "output_bias.bias" in changed
    elif strategy == "full":
        assert any(n.startswith("encoder.") for n in changed)
        assert "item_embeddings.weight" in changed
    elif strategy in ("lora", "adalora", "ia3"):
        # PEFT: every base tensor is still there, bit-identical; the trained copies of
        # modules_to_save (output_bias, rating_head) live beside the untouched originals
        assert not changed, f"{strategy} changed frozen base tensors {sorted(changed)}"
        assert params <= frozen_same
        trained = [k for k in adapted if any(m in k for m in ("lora_", "ia3_l"))]
        assert trained
        copies = [k for k in adapted if "modules_to_save" in k and "output_bias" in k]
        assert copies and not torch.equal(adapted[copies[0]], before["output_bias.bias"])
    else:  # prefix / prompt: BERT and the item table frozen; virtual tokens + output bias trained
        assert changed == {"output_bias.bias"}, sorted(changed)
        assert any("prompt_encoder" in k for k in adapted)
    # scores actually moved
    s0 = model.next_item_scores(histories())
    s1 = res.model.next_item_scores(histories())
    assert (s1 - s0).abs().max() > 1e-4


def test_zero_shot_is_the_base_model():
    model = tiny_model()
    res = adapt(model, pattern_support(), "zero_shot")
    assert res.strategy == "zero_shot" and res.info["trainable_params"] == 0
    assert torch.equal(res.model.next_item_scores(histories()), model.next_item_scores(histories()))
    assert res.model is not model


@pytest.mark.parametrize("strategy", ["lora", "adalora", "ia3"])
def test_merged_adapter_gives_the_same_scores(strategy):
    model = tiny_model()
    res = adapt(model, pattern_support(), strategy, fast(epochs=6, lr=3e-2, refit=False))
    h = histories()
    unmerged = res.model.next_item_scores(h)
    # the adapter really changed the encoder (not only the output bias)
    # (LoRA's B and IA3's scales start at 0 and 1: they moved away from their init)
    moved = [float((p.detach() - (1.0 if "ia3_l" in n else 0.0)).abs().max())
             for n, p in res.model.named_parameters() if "lora_B" in n or "ia3_l" in n]
    assert moved and max(moved) > 1e-3
    merged = res.merged_model()
    assert type(merged) is FsRecModel
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged.next_item_scores(h), unmerged, atol=1e-5, rtol=1e-5)
    assert (unmerged - model.next_item_scores(h)).abs().max() > 1e-3


def test_prefix_and_prompt_cannot_be_merged():
    res = adapt(tiny_model(), pattern_support(), "prompt", fast(epochs=1))
    with pytest.raises(AdaptationError, match="cannot be merged"):
        res.merged_model()


def test_plain_peft_prompt_learning_fails_and_the_wrapper_is_exact():
    """The documented reason for PromptableEncoder: PEFT's prompt learning on our model as is."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from fsrec_serve.adaptation import PromptableEncoder

    model = tiny_model()
    h = histories()
    pm = get_peft_model(copy.deepcopy(model), PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                                                  num_virtual_tokens=2))
    with pytest.raises(TypeError, match="inputs_embeds"):
        pm(input_ids=model.prepare_history(h))
    m2 = copy.deepcopy(model)
    m2.encoder = get_peft_model(m2.encoder, PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                                               num_virtual_tokens=2))
    with pytest.raises(IndexError):
        m2.next_item_scores(pad_histories([list(range(1, L + 1))], L))
    m3 = copy.deepcopy(model)
    m3.encoder = get_peft_model(m3.encoder, PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                                               num_virtual_tokens=2))
    with pytest.raises(RuntimeError):
        m3.next_item_scores(pad_histories([list(range(1, L + 1))], L))
    # the wrapper without virtual tokens is BertModel, bit for bit
    m4 = copy.deepcopy(model)
    m4.encoder = PromptableEncoder(m4.encoder, L)
    assert torch.equal(m4.next_item_scores(h), model.next_item_scores(h))


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_prefix_prompt_on_both_objectives(objective):
    model = tiny_model(objective)
    for strategy in ("prefix", "prompt"):
        res = adapt(model, pattern_support(), strategy, fast(epochs=2))
        s = res.model.next_item_scores(histories())
        assert s.shape == (3, N_ITEMS + 1) and torch.isfinite(s).all()


# -- auto -----------------------------------------------------------------------------------------
def test_auto_picks_the_best_inner_candidate():
    model = tiny_model()
    support = pattern_support(n_users=40, k=6)
    cands = [{"strategy": "head_only", "lr": 1e-5, "epochs": 2},
             {"strategy": "full", "lr": 1e-2, "epochs": 8, "patience": 8}]
    cfg = AdaptConfig(auto_candidates=cands, auto_folds=2, seed=3)
    res = adapt(model, support, "auto", cfg)
    recs = res.info["candidates"]
    assert [r["strategy"] for r in recs] == ["zero_shot", "head_only", "full"]
    scores = [r["inner_ndcg@10"] for r in recs]
    assert len(set(np.round(scores, 6))) > 1, "the candidates should score differently"
    best = int(np.argmax(scores))
    assert res.strategy == recs[best]["strategy"] == res.info["chosen"]["strategy"]
    assert res.strategy == "full", scores  # the learnable cohort pattern: full fine-tuning wins
    assert scores[2] > scores[0] + 0.05
    # the zero_shot record is the base model's NDCG@10 on the same inner folds
    folds = [inner_split(support, seed=3, fold=f, folds=2)[1] for f in range(2)]
    zs = [evaluate_next_item(model, v, ks=(10,))["ndcg@10"] for v in folds]
    assert recs[0]["fold_scores"] == pytest.approx(zs)
    # ... and adapting really helps on a held-out user of the same pattern (not in the support)
    q = [Example("new", [1, 2, 3], 4), Example("new2", [8, 6], 5)]
    assert (evaluate_next_item(res.model, q, ks=(10,))["ndcg@10"]
            >= evaluate_next_item(model, q, ks=(10,))["ndcg@10"])


def test_auto_falls_back_to_zero_shot_when_nothing_helps():
    model = tiny_model()
    cands = [{"strategy": "head_only", "lr": 1e-9, "epochs": 1},
             {"strategy": "lora", "lr": 1e-9, "epochs": 1, "train_output_bias": False}]
    res = adapt(model, pattern_support(), "auto", AdaptConfig(auto_candidates=cands))
    recs = res.info["candidates"]
    assert res.strategy == "zero_shot"
    assert recs[0]["inner_ndcg@10"] >= max(r["inner_ndcg@10"] for r in recs[1:])
    assert torch.equal(res.model.next_item_scores(histories()), model.next_item_scores(histories()))


# -- support-set handling ------------------------------------------------------------------------
def test_empty_support_is_refused_with_a_clear_message():
    with pytest.raises(SupportSetError, match="support set is empty"):
        adapt(tiny_model(), [], "lora")
    with pytest.raises(SupportSetError, match="empty support set"):
        adapt(tiny_model(), [UserSequence("u", [], [])], "lora")
    with pytest.raises(SupportSetError, match="outside 1..40"):
        adapt(tiny_model(), [UserSequence("u", [1, 99], [1.0, 1.0])], "lora")


@pytest.mark.parametrize("strategy", ["lora", "full", "auto"])
def test_one_item_supports_on_a_causal_model_degrade_to_zero_shot(strategy):
    model = tiny_model("causal")
    support = [UserSequence(f"u{i}", [i + 1], [4.0]) for i in range(5)]
    res = adapt(model, support, strategy, fast())
    assert res.strategy == "zero_shot"
    assert "2 or more support items" in res.info["degraded"]
    assert torch.equal(res.model.next_item_scores(histories()), model.next_item_scores(histories()))


def test_one_item_supports_on_a_cloze_model_learn_the_first_item():
    """k = 1 with a cloze model: each support item is predicted from [MASK] alone (an empty
    history) and the inner validation holds out whole single-item users."""
    model = tiny_model("cloze")
    support = [UserSequence(f"u{i}", [1 + i % 3], [4.0]) for i in range(30)]  # cohort items 1..3
    res = adapt(model, support, "head_only", fast(epochs=6, lr=0.3, patience=6))
    assert res.strategy == "head_only" and "degraded" not in res.info
    inner = res.info["inner"]
    assert inner["n_valid"] == 15 and inner["ndcg@10"] > inner["zero_shot_ndcg@10"]
    # the cohort's items now lead the ranking for an unseen user's first history item
    s = res.model.next_item_scores(pad_histories([[20]], L))[0]
    top3 = set(torch.topk(s, 3).indices.tolist())
    assert top3 == {1, 2, 3}


def test_a_single_user_with_one_item_is_handled():
    res = adapt(tiny_model("cloze"), [UserSequence("u", [5], [1.0])], "lora", fast())
    assert res.strategy == "zero_shot" and "too few support items" in res.info["degraded"]


def test_inner_split_holds_out_last_support_items_only():
    support = pattern_support(n_users=10, k=4)
    train, valid = inner_split(support, frac=0.5, seed=1)
    assert len(valid) == 5 and len(train) == 10
    by_user = {s.user: s for s in support}
    tr = {s.user: s for s in train}
    for e in valid:
        full = by_user[e.user]
        assert e.target == full.items[-1] and e.history == full.items[:-1]
        assert tr[e.user].items == full.items[:-1]  # the held-out target is not trained on
    a = {e.user for e in inner_split(support, seed=1, fold=0, folds=2)[1]}
    b = {e.user for e in inner_split(support, seed=1, fold=1, folds=2)[1]}
    assert a and b and not (a & b) and len(a | b) == 10


def test_per_user_micro_tuning_yields_one_model_per_user():
    support = pattern_support(n_users=3, k=5)
    out = dict(adapt_each_user(tiny_model(), support, "lora", fast(epochs=2)))
    assert set(out) == {"u0", "u1", "u2"}
    assert all(r.strategy == "lora" for r in out.values())


# -- artifacts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["zero_shot", "head_only", "full", "lora", "adalora", "ia3",
                                      "prefix", "prompt"])
def test_artifact_save_load_round_trip(tmp_path, strategy):
    model = tiny_model(features=3)
    model.set_item_features(torch.rand(N_ITEMS + 1, 3))
    model.save_pretrained(tmp_path / "base")
    res = adapt(model, pattern_support(), strategy, fast(epochs=2))
    path = res.save(tmp_path / "art")
    assert (path / "fsrec_adapt.json").exists()
    if strategy in ("lora", "adalora", "ia3", "prefix", "prompt"):
        assert (path / "adapter" / "adapter_config.json").exists()
        assert (path / "adapter" / "adapter_model.safetensors").exists()
    kb = res.artifact.size_kb()
    assert (kb == 0) if strategy == "zero_shot" else (kb > 0)
    loaded = load_adapted(tmp_path / "base", path)
    h = histories()
    torch.testing.assert_close(loaded.next_item_scores(h), res.model.next_item_scores(h), atol=1e-6, rtol=0)
    art = AdaptArtifact.load(path)
    assert art.strategy == strategy
    if strategy in ("lora", "ia3"):
        merged = load_adapted(tmp_path / "base", path, merged=True)
        torch.testing.assert_close(merged.next_item_scores(h), res.model.next_item_scores(h),
                                   atol=1e-5, rtol=1e-5)


def test_adalora_with_pruned_ranks_round_trips(tmp_path):
    """AdaLoRA can prune a layer's rank to 0 (zero-sized tensors); save + reload still works."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "base")
    res = adapt(model, pattern_support(), "adalora",
                fast(epochs=8, patience=8, lora_r=1, adalora_init_r=4, refit=False))
    ranks = {n: p.shape for n, p in res.model.named_parameters() if "lora_E" in n}
    assert ranks
    path = res.save(tmp_path / "art")
    loaded = load_adapted(tmp_path / "base", path)
    h = histories()
    torch.testing.assert_close(loaded.next_item_scores(h), res.model.next_item_scores(h), atol=1e-6, rtol=0)


def test_artifact_refuses_another_base_model(tmp_path):
    res = adapt(tiny_model(seed=0), pattern_support(), "lora", fast(epochs=1))
    path = res.save(tmp_path / "art")
    other = tiny_model(seed=1)
    with pytest.raises(AdaptationError, match="another base model"):
        AdaptArtifact.load(path).apply(other)


def test_full_artifact_is_larger_than_lora(tmp_path):
    model = tiny_model()
    lora = adapt(model, pattern_support(), "lora", fast(epochs=1)).artifact.size_kb()
    full = adapt(model, pattern_support(), "full", fast(epochs=1)).artifact.size_kb()
    assert full > lora > 0


def test_train_strategy_restores_the_best_inner_pass():
    model = tiny_model()
    support = pattern_support()
    train, valid = inner_split(support, seed=0)
    prep, res = train_strategy(model, "full", fast(epochs=5, patience=5), train, valid)
    assert 1 <= res.best_epoch <= 5
    got = evaluate_next_item(prep.model, valid, ks=(10,))["ndcg@10"]
    assert got == pytest.approx(res.best_valid["ndcg@10"])


def test_merge_of_unmergeable_strategy_names_the_reason():
    with pytest.raises(AdaptationError, match="virtual tokens"):
        merge(tiny_model(), "prefix")
