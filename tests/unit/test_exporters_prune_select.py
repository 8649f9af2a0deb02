"""The pruning chain (``exporters.prune_select``) and ``fsrec prune``: candidate names are parsed
strictly, a catalogue-pruned export is guarded in the reference's ids (it passes when it keeps
what users get, it is refused when its NDCG@10 drops more than the tolerance), and the command runs
end to end on a tiny trained model without touching its checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from exporters import prune as P
from exporters.export import export_onnx, torch_topk
from exporters.guard import check_guard
from exporters.prune_select import PrunedCandidate, export_candidate, parse_candidate
from fsrec_serve.cli import main as fsrec_main
from fsrec_serve.contract import GUARD_FILE, ITEM_MAP_FILE
from fsrec_serve.data import Example
from fsrec_serve.errors import ConfigError
from fsrec_serve.idmap import IdMap, pad_left
from fsrec_serve.model import FsRecConfig, FsRecModel

NUM_ITEMS, SEQ, K = 60, 12, 20


def test_candidate_names_are_parsed_strictly():
    assert parse_candidate("heads-2+ffn-64+catalogue-4000") == [("heads", 2), ("ffn", 64), ("catalogue", 4000)]
    for bad in ("catalogue", "heads-0", "layers-1", "ffn-8+ffn-4", "catalogue-1e3"):
        with pytest.raises(ConfigError, match="candidate"):
            parse_candidate(bad)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = FsRecModel(FsRecConfig(num_items=NUM_ITEMS, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_seq_len=SEQ)).eval()
    model.item_map = IdMap([f"sku{i}" for i in range(NUM_ITEMS)])
    with torch.no_grad():
        model.item_embeddings.weight.normal_(0, 1.0)
    out = export_onnx(model, tmp_path_factory.mktemp("prune") / "fp32", max_top_k=K).output_dir
    hist = [[1 + (u * 7 + j) % NUM_ITEMS for j in range(2 + u % 9)] for u in range(64)]
    top, _, _ = torch_topk(model, pad_left(hist, SEQ), max_top_k=K)
    valid = [Example(f"u{i}", h, int(t[0])) for i, (h, t) in enumerate(zip(hist, top))]  # NDCG@10 = 1
    return model, out, valid, top


def _catalogue_candidate(model, keep_items, tmp_path, name, ref_dir, valid):
    # popularity = the items to keep, so prune_catalogue keeps exactly them
    pc = P.prune_catalogue(model, [sorted(keep_items)], keep=len(keep_items), half_life=float("inf"))
    cand = PrunedCandidate(name=name, model=pc.model, catalogue=pc)
    return export_candidate(cand, tmp_path / name, ref_dir, valid), pc


def test_guard_passes_a_catalogue_that_keeps_what_users_get(reference, tmp_path):
    model, ref_dir, valid, top = reference
    valid, top = valid[:6], top[:6]  # few users: their top-10s and histories leave items to prune
    keep = set(top[:, :10].ravel().tolist())  # every item these users get in a top-10
    keep |= {i for e in valid for i in e.history}  # and their histories (masked in both graphs)
    cand_dir, _ = _catalogue_candidate(model, keep, tmp_path, "catalogue-keep", ref_dir, valid)
    assert len(IdMap.load(cand_dir / ITEM_MAP_FILE)) == len(keep) < NUM_ITEMS
    rep = check_guard(cand_dir, ref_dir, valid, raise_on_fail=False, batch_size=16, invariance_users=8)
    assert rep.passed, rep.reasons
    assert rep.ndcg_candidate == pytest.approx(rep.ndcg_reference) and rep.top10_overlap >= 0.9


def test_guard_refuses_a_catalogue_whose_ndcg_drops_more_than_the_tolerance(reference, tmp_path):
    model, ref_dir, valid, _ = reference
    targets = {e.target for e in valid}
    keep = set(range(1, NUM_ITEMS + 1)) - set(sorted(targets)[: max(2, len(targets) // 10)])  # ~10 % of hits gone
    cand_dir, _ = _catalogue_candidate(model, keep, tmp_path, "catalogue-drop", ref_dir, valid)
    rep = check_guard(cand_dir, ref_dir, valid, raise_on_fail=False, batch_size=16, invariance_users=8)
    assert not rep.passed and rep.ndcg_drop_rel > 0.01
    assert any("NDCG@10" in r and "limit" in r for r in rep.reasons)
    # a looser tolerance lets the same candidate through: the drop is what refused it
    loose = check_guard(cand_dir, ref_dir, valid, raise_on_fail=False, batch_size=16, invariance_users=8,
                        max_ndcg_drop=0.9, min_top10_overlap=0.0)
    assert loose.passed, loose.reasons


def _write_log(path, n_users=40, n_items=25):
    rows = ["customer;sku;when"]
    for u in range(n_users):
        rows += [f"c{u};p{(u + k) % n_items:03d};{1000 * u + k}" for k in range(12)]
    path.write_text("\n".join(rows) + "\n")


def test_fsrec_prune_end_to_end_on_a_tiny_trained_model(tmp_path, capsys):
    log = tmp_path / "log.txt"
    _write_log(log)
    cols = ["--data", str(log), "--sep", ";", "--user-col", "customer", "--item-col", "sku", "--time-col", "when"]
    model = tmp_path / "model"
    assert fsrec_main(["train", *cols, "--output-dir", str(model), "--epochs", "1", "--hidden-size", "16",
                       "--layers", "1", "--max-seq-len", "8", "--no-progress", "--objective", "causal"]) == 0
    capsys.readouterr()
    weights = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    out = tmp_path / "pruned"
    assert fsrec_main(["prune", str(model), "--output", str(out), "--candidates", "catalogue-15", "heads-1",
                       "--recover-epochs", "1", "--min-top10-overlap", "0", "--max-ndcg-drop", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["guard_results"]) == {"catalogue-15", "heads-1"}
    assert (out / "reference" / "model.onnx").exists() and (out / "heads-1" / "model.onnx").exists()
    assert len(IdMap.load(out / "catalogue-15" / ITEM_MAP_FILE)) == 15
    assert json.loads((out / "catalogue-15" / "fsrec_meta.json").read_text())["extra"]["pruning"] == "catalogue-15"
    decision = json.loads((out / report["chosen"] / GUARD_FILE).read_text())
    assert set(decision["candidates"]) == {"reference", "catalogue-15", "heads-1"}
    assert hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest() == weights  # never overwritten
    # bad input: a clear error naming the fix, before any work
    assert fsrec_main(["prune", str(model), "--output", str(out), "--candidates", "layers-1"]) == 2
    assert "catalogue-<n>, heads-<n>, ffn-<n>" in capsys.readouterr().err
    assert fsrec_main(["prune", str(tmp_path / "nowhere"), "--output", str(out), "--candidates", "heads-1"]) == 2
    assert "--output-dir of `fsrec train`" in capsys.readouterr().err
