"""``fsrec data stats``, ``train``, ``evaluate`` and ``export`` on your own log (a tiny CSV written
here): the cleaning counts are printed, the model folder's run record remembers the data spec, and
evaluate and export find the log again without being told."""

from __future__ import annotations

import json

from fsrec_serve.cli import main as fsrec_main


def _write_log(path, n_users=40, n_items=25):
    # user u walks the catalogue from item u % n_items, 12 steps; user "lonely" has 1 event
    rows = ["customer;sku;when"]
    for u in range(n_users):
        rows += [f"c{u};p{(u + k) % n_items:03d};{1000 * u + k}" for k in range(12)]
    rows.append("lonely;p000;5")
    path.write_text("\n".join(rows) + "\n")


def test_stats_train_evaluate_on_own_csv(tmp_path, capsys):
    log = tmp_path / "log.txt"
    _write_log(log)
    cols = ["--data", str(log), "--sep", ";", "--user-col", "customer", "--item-col", "sku", "--time-col", "when"]
    assert fsrec_main(["data", "stats", *cols]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["cleaning"]["rows_read"] == 40 * 12 + 1
    assert stats["cleaning"]["short_users_dropped"] == 1  # "lonely"
    assert (stats["users"], stats["items"], stats["interactions"]) == (40, 25, 480)
    assert stats["dataset"] == "log"  # the file stem unless --name

    out = tmp_path / "model"
    assert fsrec_main(["train", *cols, "--output-dir", str(out), "--epochs", "1", "--hidden-size", "16",
                       "--layers", "1", "--max-seq-len", "8", "--no-progress", "--objective", "causal",
                       "--split-seed", "2"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["split"]["items"] == 25
    spec = json.loads((out / "fsrec_run.json").read_text())["data_spec"]
    assert not (out / "data_spec.json").exists()  # folded into the run record
    assert spec["user_col"] == "customer" and spec["sep"] == ";" and spec["path"] == str(log.resolve())
    item_map = json.loads((out / "item_map.json").read_text())["raw_ids"]
    assert item_map[:3] == ["p000", "p001", "p002"]  # ids kept as strings, leading zeros included

    assert fsrec_main(["evaluate", "--model", str(out), "--ks", "10"]) == 0  # finds the log itself
    ev = json.loads(capsys.readouterr().out)
    assert ev["dataset"] == "log" and 0.0 <= ev["model"]["ndcg@10"] <= 1.0
    assert ev["split_config"]["seed"] == 2  # the recorded split, not a default one

    exp = tmp_path / "export"  # validated on the recorded split's test users, no --data again
    assert fsrec_main(["export", str(out), "--output", str(exp), "--max-top-k", "10", "--validate-users", "8"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["validation"]["n_users"] == 8
    meta = json.loads((exp / "fsrec_meta.json").read_text())
    assert meta["extra"]["data_spec"]["path"] == str(log.resolve()) and meta["extra"]["dataset"] == "log"

    # fsrec adapt: the cold users of the recorded split (seed 2), not of a split made with --seed
    from fsrec_serve.cli import build_parser
    from fsrec_serve.commands.adapt import _cohort_splits
    from fsrec_serve.data import RunRecord

    args = build_parser().parse_args(["adapt", "run", "--base", str(out), "--out", str(tmp_path / "a")])
    cohort = [s.user for s in _cohort_splits(args, "fsrec adapt run").cold_users]
    record = RunRecord.load(out)
    assert cohort == [s.user for s in record.splits().cold_users]
    assert cohort != [s.user for s in record.with_split(seed=args.seed).splits().cold_users]
