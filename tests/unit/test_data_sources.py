"""One data source for every command: the same small log written as CSV, TSV, Parquet (file and
Spark-style shard folder), JSON Lines and one-user-a-line, gzipped or not, gives the same
interactions; data-spec files (YAML/TOML) and the CLI options build the same DataSpec; presets
are specs of the same mechanism; cleaning counts are checked against hand-computed values."""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fsrec_serve.data import (
    DataSpec,
    SplitConfig,
    add_data_arguments,
    data_source_from_args,
    load_dataset,
    load_interactions,
    load_spec_file,
    make_splits,
    preset_spec,
    read_item_metadata,
)

# user, item, rating, time: u1 has 3 events, u2 has 2, u3 has 1 (dropped: too short), item "007"
ROWS = [("u1", "007", 5.0, 30), ("u1", "12", 3.0, 10), ("u2", "12", 4.0, 5), ("u1", "x9", 1.0, 20),
        ("u2", "007", 2.0, 7), ("u3", "12", 5.0, 1)]


def _seqs(data):
    return {u: [(i, r, t) for i, r, t in ev] for u, ev in data.sequences().items()}


EXPECTED = {
    "u1": [("12", 3.0, 10), ("x9", 1.0, 20), ("007", 5.0, 30)],
    "u2": [("12", 4.0, 5), ("007", 2.0, 7)],
}


def _write_all(tmp_path):
    csv = "uid,sku,stars,ts\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS)
    files = {}
    (tmp_path / "log.csv").write_text(csv)
    files["csv"] = (tmp_path / "log.csv", {})
    (tmp_path / "log.tsv").write_text(csv.replace(",", "\t"))
    files["tsv"] = (tmp_path / "log.tsv", {})
    (tmp_path / "log.txt").write_text(csv.replace(",", ";"))
    files["semicolon"] = (tmp_path / "log.txt", {"sep": ";"})
    (tmp_path / "log.csv.gz").write_bytes(gzip.compress(csv.encode()))
    files["csv.gz"] = (tmp_path / "log.csv.gz", {})
    table = pa.table({"uid": [r[0] for r in ROWS], "sku": [r[1] for r in ROWS],
                      "stars": [r[2] for r in ROWS], "ts": [r[3] for r in ROWS]})
    pq.write_table(table, tmp_path / "log.parquet")
    files["parquet"] = (tmp_path / "log.parquet", {})
    shards = tmp_path / "spark_out"
    (shards / "day=1").mkdir(parents=True)
    pq.write_table(table.slice(0, 3), shards / "day=1" / "part-00000.parquet")
    pq.write_table(table.slice(3), shards / "part-00001.parquet")
    (shards / "_SUCCESS").write_text("")
    (shards / ".part-00001.parquet.crc").write_text("junk")
    files["parquet shards"] = (shards, {})
    lines = "".join(json.dumps({"uid": u, "sku": i, "stars": r, "ts": t}) + "\n" for u, i, r, t in ROWS)
    (tmp_path / "log.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    files["jsonl.gz"] = (tmp_path / "log.jsonl.gz", {})
    return files


def test_every_format_gives_the_same_interactions(tmp_path):
    for fmt, (path, extra) in _write_all(tmp_path).items():
        spec = DataSpec(path=str(path), user_col="uid", item_col="sku", time_col="ts", rating_col="stars", **extra)
        data = load_interactions(spec)
        assert _seqs(data) == EXPECTED, fmt
        assert data.stats["rows_read"] == 6 and data.stats["short_users_dropped"] == 1, fmt
        assert data.stats["short_user_rows_dropped"] == 1 and (data.n_users, data.n_items) == (2, 3), fmt


def test_ids_stay_strings_leading_zeros_and_mixed_types(tmp_path):
    p = tmp_path / "mixed.csv"
    p.write_text("user_id,item_id\n1,007\n1,abc\nA,1.0\nA,007\n")
    data = load_interactions(DataSpec(path=str(p)))
    assert sorted(data.item_vocab.tolist()) == ["007", "1.0", "abc"]  # never 7 or 1
    assert sorted(data.user_vocab.tolist()) == ["1", "A"]
    # JSON Lines whose ids mix numbers and strings (pyarrow refuses it; read as text)
    j = tmp_path / "mixed.jsonl"
    j.write_text('{"user_id": 1, "item_id": "a"}\n{"user_id": "x", "item_id": 5}\n'
                 '{"user_id": 1, "item_id": 5}\n{"user_id": "x", "item_id": "a"}\n')
    data = load_interactions(DataSpec(path=str(j)))
    assert {u: [i for i, _, _ in ev] for u, ev in data.sequences().items()} == {"1": ["a", "5"], "x": ["5", "a"]}


def test_bom_and_crlf_simply_work(tmp_path):
    p = tmp_path / "win.csv"
    p.write_bytes(b"\xef\xbb\xbfuser_id,item_id,time\r\n1,a,2\r\n1,b,1\r\n")
    data = load_interactions(DataSpec(path=str(p), time_col="time"))
    assert _seqs(data) == {"1": [("b", 1.0, 1), ("a", 1.0, 2)]}


def test_dates_and_stable_time_ties(tmp_path):
    p = tmp_path / "dates.csv"
    # u1: two events at the same time keep file order (b before a); dates become unix seconds
    p.write_text("user_id,item_id,when\nu1,c,2021-01-02 00:00:00\nu1,b,2021-01-01 00:00:00\n"
                 "u1,a,2021-01-01 00:00:00\n")
    data = load_interactions(DataSpec(path=str(p), time_col="when"))
    assert _seqs(data) == {"u1": [("b", 1.0, 1609459200), ("a", 1.0, 1609459200), ("c", 1.0, 1609545600)]}
    p2 = tmp_path / "eu.csv"
    p2.write_text("user_id,item_id,when\nu1,a,02/01/2021\nu1,b,01/01/2021\n")
    data = load_interactions(DataSpec(path=str(p2), time_col="when", time_format="%d/%m/%Y"))
    assert [i for i, _, _ in data.sequences()["u1"]] == ["b", "a"]


def test_cleaning_steps_are_counted(tmp_path):
    p = tmp_path / "log.csv"
    # u1: i1 twice (t=1 r=5, t=3 r=2), i2 (r=4); u2: i1 (r=5), i3 (r=1); u3: i2 (r=5), i1 (r=4)
    p.write_text("user_id,item_id,rating,time\nu1,i1,5,1\nu1,i2,4,2\nu1,i1,2,3\nu2,i1,5,1\nu2,i3,1,2\n"
                 "u3,i2,5,1\nu3,i1,4,2\n")
    base = {"path": str(p), "time_col": "time", "rating_col": "rating", "min_user_interactions": 1}
    first = load_interactions(DataSpec(**base, duplicates="first"))
    assert [(i, r) for i, r, _ in first.sequences()["u1"]] == [("i1", 5.0), ("i2", 4.0)]
    assert first.stats["duplicate_rows_removed"] == 1
    last = load_interactions(DataSpec(**base, duplicates="last"))
    assert [(i, r) for i, r, _ in last.sequences()["u1"]] == [("i2", 4.0), ("i1", 2.0)]
    drop = load_interactions(DataSpec(**base, duplicates="drop"))
    assert [i for i, _, _ in drop.sequences()["u1"]] == ["i2"] and drop.stats["duplicate_rows_removed"] == 2
    # implicit threshold 4: drops (u1,i1,2) and (u2,i3,1); ratings become 1.0
    imp = load_interactions(DataSpec(**base, implicit_threshold=4))
    assert imp.stats["rows_below_threshold"] == 2 and set(imp.ratings.tolist()) == {1.0}
    # 2-core on users and items after the threshold: u2 keeps only i1 -> dropped; i3 gone
    core = load_interactions(DataSpec(**base, implicit_threshold=4, user_core=2, item_core=2))
    assert set(core.sequences()) == {"u1", "u3"}
    assert core.stats["k_core"]["users_removed"] == 1 and core.stats["k_core"]["rows_removed"] == 1
    assert (core.stats["rows"], core.stats["users"], core.stats["items"]) == (4, 2, 2)


def test_spec_files_and_cli_options_build_the_same_spec(tmp_path):
    (tmp_path / "log.csv").write_text("uid,sku,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, _, t in ROWS))
    (tmp_path / "items.csv").write_text("item_id,title,categories\n007,Bond,Action|Spy\n12,Twelve,Drama\n")
    (tmp_path / "spec.yaml").write_text(
        "path: log.csv\nuser_col: uid\nitem_col: sku\ntime_col: ts\nduplicates: first\n"
        "item_metadata: items.csv\n")
    (tmp_path / "spec.toml").write_text(
        'path = "log.csv"\nuser_col = "uid"\nitem_col = "sku"\ntime_col = "ts"\nduplicates = "first"\n'
        '[item_metadata]\npath = "items.csv"\n')
    y, t = load_spec_file(tmp_path / "spec.yaml"), load_spec_file(tmp_path / "spec.toml")
    assert y == t and y.path == str(tmp_path / "log.csv")
    ap = argparse.ArgumentParser()
    add_data_arguments(ap, presets=True)
    args = ap.parse_args(["--data", str(tmp_path / "log.csv"), "--user-col", "uid", "--item-col", "sku",
                          "--time-col", "ts", "--duplicates", "first", "--item-metadata", str(tmp_path / "items.csv")])
    assert data_source_from_args(args) == y
    # CLI options override a spec file's fields
    args = ap.parse_args(["--data", str(tmp_path / "spec.yaml"), "--duplicates", "drop"])
    assert data_source_from_args(args).duplicates == "drop"
    data = load_dataset(tmp_path / "spec.yaml")  # a spec file wherever a data set name goes
    assert data.item_names == {"007": "Bond", "12": "Twelve"}
    assert data.feature_names == ["Action", "Drama", "Spy"]
    assert data.item_features["007"].tolist() == [1.0, 0.0, 1.0]
    sp = make_splits(data, SplitConfig(cold_user_frac=0, cold_item_frac=0, min_warm_len=1))
    assert sp.item_features.shape == (4, 3)  # padding + 3 items; x9 has no metadata -> zeros
    assert sp.item_features[sp.item_map.index("x9")].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(Exception, match="did you mean 'user_col'"):
        (tmp_path / "bad.yaml").write_text("path: log.csv\nusr_col: uid\n")
        load_spec_file(tmp_path / "bad.yaml")


def test_presets_are_specs_of_the_same_mechanism(data_dir, ml100k):
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K missing")
    spec = preset_spec("ml-100k", data_dir)
    assert spec.format == "csv" and spec.sep == "\t" and spec.item_metadata.one_hot_cols[1] == "Action"
    via_spec = load_interactions(spec)
    a, b = make_splits(via_spec, SplitConfig(seed=0)), make_splits(ml100k, SplitConfig(seed=0))
    assert a.item_map == b.item_map
    assert [s.items for s in a.warm] == [s.items for s in b.warm]
    assert np.array_equal(a.cold_items, b.cold_items) and np.array_equal(a.item_features, b.item_features)
    assert via_spec.item_names["1"] == "Toy Story (1995)"


def test_item_metadata_file_alone(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"item_id": 7, "title": "Seven", "categories": ["b", "a"]}\n'
                 '{"item_id": 8, "title": "Eight", "categories": []}\n')
    meta = read_item_metadata(p)
    assert meta.titles == {"7": "Seven", "8": "Eight"} and meta.feature_names == ["a", "b"]
    assert meta.features["7"].tolist() == [1.0, 1.0] and meta.features["8"].tolist() == [0.0, 0.0]


def test_parquet_dictionary_ids_and_integer_ids(tmp_path):
    # ids stored as Parquet dictionaries (what Spark writes), with a dictionary wider than the rows
    users = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1, 1], pa.int32()), pa.array(["a", "b", "unused"]))
    items = pa.array([10, 7, 10, 3], pa.int64())  # integer ids become their decimal text
    pq.write_table(pa.table({"user_id": users, "item_id": items}), tmp_path / "d.parquet")
    data = load_interactions(DataSpec(path=str(tmp_path / "d.parquet")))
    assert {u: [i for i, _, _ in ev] for u, ev in data.sequences().items()} == {"a": ["10", "7"], "b": ["10", "3"]}
    assert (data.stats["users_read"], data.stats["items_read"], data.stats["users"]) == (2, 3, 2)
