"""``RunRecord`` (fsrec_run.json): a saved record rebuilds the exact splits of its run, for an own
log and for a preset; older folders (data_spec.json beside a record without the new fields) still
load; a missing or corrupt record is a clear error naming the folder and the fix."""

from __future__ import annotations

import json

import pytest

from fsrec_serve.data import DataSpec, RunRecord, SplitConfig, load_interactions, make_splits, preset_spec
from fsrec_serve.errors import ConfigError, DataNotFoundError


def write_log(path, n_users: int = 40, n_items: int = 25) -> DataSpec:
    """A ';'-separated log: user u walks the catalogue from item u % n_items, 12 steps."""
    rows = ["customer;sku;when"]
    for u in range(n_users):
        rows += [f"c{u};p{(u + k) % n_items:03d};{1000 * u + k}" for k in range(12)]
    path.write_text("\n".join(rows) + "\n")
    return DataSpec(path=str(path), sep=";", user_col="customer", item_col="sku", time_col="when")


def same_splits(a, b) -> bool:
    return (a.item_map.raw_ids == b.item_map.raw_ids
            and [(s.user, s.items) for s in a.warm] == [(s.user, s.items) for s in b.warm]
            and [s.user for s in a.cold_users] == [s.user for s in b.cold_users]
            and a.cold_items.tolist() == b.cold_items.tolist())


def test_a_saved_record_rebuilds_the_same_splits_of_an_own_log(tmp_path):
    spec = write_log(tmp_path / "log.txt")
    splits = make_splits(load_interactions(spec), SplitConfig(seed=3, cold_item_frac=0.1))
    RunRecord.for_splits(splits, objective="causal", best_epoch=2).save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "fsrec_run.json").read_text())
    assert saved["dataset"] == "log" and saved["data_spec"]["path"] == str((tmp_path / "log.txt").resolve())
    assert saved["split_config"]["seed"] == 3 and saved["best_epoch"] == 2  # the keys readers know
    record = RunRecord.load(tmp_path / "model")
    assert record.data_spec == spec and record.split_config == splits.config
    rebuilt = record.splits()
    assert same_splits(rebuilt, splits)
    assert not same_splits(record.with_split(seed=4).splits(), splits)  # the seed is what is rebuilt


def test_a_preset_is_recorded_by_name_and_found_under_the_data_dir(tmp_path):
    beauty = tmp_path / "data" / "amazon-beauty"
    beauty.mkdir(parents=True)
    (beauty / "Beauty.txt").write_text("".join(f"u{u} " + " ".join(f"i{(u + k) % 30}" for k in range(12)) + "\n"
                                               for u in range(50)))
    splits = make_splits(load_interactions(preset_spec("beauty", tmp_path / "data")), SplitConfig(seed=1))
    record = RunRecord.for_splits(splits)
    assert (record.dataset, record.data_spec) == ("beauty", None)  # portable: no absolute path
    record.save(tmp_path / "model")
    assert "data_spec" not in json.loads((tmp_path / "model" / "fsrec_run.json").read_text())
    assert same_splits(RunRecord.load(tmp_path / "model").splits(tmp_path / "data"), splits)


def test_an_older_folder_with_data_spec_json_and_few_keys_still_loads(tmp_path):
    spec = write_log(tmp_path / "log.txt")
    model = tmp_path / "model"
    model.mkdir()
    (model / "fsrec_run.json").write_text(json.dumps({
        "dataset": "log", "split_config": {"seed": 2}, "best_epoch": 1, "world_size": 2}))
    spec.save(model / "data_spec.json")
    record = RunRecord.load(model)
    assert record.data_spec.user_col == "customer" and record.split_config.seed == 2
    assert record.objective is None and record.extra == {"world_size": 2}  # unknown keys kept
    assert record.to_dict()["world_size"] == 2
    want = make_splits(load_interactions(spec), SplitConfig(seed=2))
    assert same_splits(record.splits(), want)


def test_missing_or_corrupt_records_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)empty.*fsrec_run\.json.*--dataset"):
        RunRecord.load(tmp_path / "empty")
    assert RunRecord.find(tmp_path / "empty") is None
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fsrec_run.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"(?s)bad.fsrec_run\.json.*--dataset"):
        RunRecord.load(bad)
    (bad / "fsrec_run.json").write_text(json.dumps({"dataset": "x", "split_config": {"sed": 1}}))
    with pytest.raises(ConfigError, match="split config"):
        RunRecord.load(bad)
    with pytest.raises(ConfigError, match="--dataset"):
        RunRecord.from_dict({"best_epoch": 1}, "the export")
