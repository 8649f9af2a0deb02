"""The README's main job (``fsrec pipeline``) end to end on real ML-100K.

1. Bring your own data: ML-100K's u.data rewritten three ways (CSV with a header and other column
   names, Parquet, gzipped JSON Lines) gives, through ``--data ... --user-col ...``, the same item
   map, the same splits and the same first-epoch loss as the ``ml-100k`` preset (a small model,
   one epoch, ``--stop-after pretrain``).
2. The whole job on your own CSV log plus an item metadata file: pretraining, LoRA adaptation,
   Optimum export, the repository, a real tritonserver, queries; the printed recommendations
   carry the titles of the metadata file.
"""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest

from fsrec_serve.cli import main as fsrec_main

SMALL = ["--epochs", "1", "--max-seq-len", "20", "--hidden-size", "16", "--batch-size", "128",
         "--no-features", "--stop-after", "pretrain"]


@pytest.fixture(scope="module")
def udata(data_dir):
    path = data_dir / "ml-100k" / "u.data"
    if not path.exists():
        pytest.skip(f"ML-100K not found under {data_dir}")
    opts = pv.ReadOptions(column_names=["user", "item", "rating", "ts"])
    return pv.read_csv(path, read_options=opts, parse_options=pv.ParseOptions(delimiter="\t"),
                       convert_options=pv.ConvertOptions(column_types={"user": pa.string(), "item": pa.string()}))


def _own_formats(udata, folder):
    """u.data as CSV (header, other names), Parquet (ints), gzipped JSON Lines (ints)."""
    renamed = udata.rename_columns(["customer", "movie", "stars", "when"])
    pv.write_csv(renamed, folder / "ratings.csv")
    ints = pa.table({"uid": udata["user"].cast(pa.int64()), "iid": udata["item"].cast(pa.int64()),
                     "r": udata["rating"], "t": udata["ts"]})
    pq.write_table(ints, folder / "ratings.parquet")
    lines = "".join(json.dumps(row) + "\n" for row in ints.to_pylist())
    (folder / "ratings.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    cols = ["--user-col", "uid", "--item-col", "iid", "--time-col", "t", "--rating-col", "r"]
    return {
        "csv": ["--data", str(folder / "ratings.csv"), "--user-col", "customer", "--item-col", "movie",
                "--time-col", "when", "--rating-col", "stars"],
        "parquet": ["--data", str(folder / "ratings.parquet"), *cols],
        "jsonl.gz": ["--data", str(folder / "ratings.jsonl.gz"), *cols],
    }


def _run(argv, work, capsys):
    rc = fsrec_main(["pipeline", "--work-dir", str(work), "--repository", str(work / "repo"), *argv])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads((work / "summary.json").read_text()), out


def test_three_formats_match_the_preset(data_dir, udata, tmp_path, capsys):
    ref, ref_out = _run(["--dataset", "ml-100k", "--data-dir", str(data_dir), *SMALL], tmp_path / "preset", capsys)
    assert "titles for 1682 items" in ref_out  # the preset reads u.item
    loss = ref["pretrain"]["first_epoch_loss"]
    assert 5.0 < loss < 8.0  # ~ln(1682) = 7.4 at the start
    for fmt, argv in _own_formats(udata, tmp_path).items():
        # --name ml-100k: the same recommended hyperparameters as the preset
        got, out = _run([*argv, "--name", "ml-100k", *SMALL], tmp_path / fmt, capsys)
        assert "titles for" not in out  # no metadata file: no titles
        assert got["data"]["item_map"] == ref["data"]["item_map"], fmt
        for key in ("items", "warm_users", "cold_users", "cold_items", "pretraining_interactions"):
            assert got["data"][key] == ref["data"][key], (fmt, key)
        assert got["data"]["cleaning"]["rows"] == 100_000
        assert got["pretrain"]["first_epoch_loss"] == pytest.approx(loss, abs=1e-6), fmt
        assert got["pretrain"]["test"] == ref["pretrain"]["test"], fmt  # same splits, same model
    assert not (tmp_path / "preset" / "repo").exists()  # stopped after pretraining


def test_pipeline_on_own_log_with_item_metadata_serves_titles(data_dir, udata, tmp_path, capsys):
    uitem = data_dir / "ml-100k" / "u.item"
    if not uitem.exists():
        pytest.skip("u.item missing")
    from fsrec_serve.data.metadata import read_item_metadata
    from fsrec_serve.data.spec import ml100k_spec

    meta = read_item_metadata(ml100k_spec(data_dir / "ml-100k").item_metadata)
    items = pa.table({"item_id": list(meta.titles), "title": list(meta.titles.values()),
                      "categories": ["|".join(g for g, on in zip(meta.feature_names, meta.features[i]) if on)
                                     for i in meta.titles]})
    pv.write_csv(items, tmp_path / "items.csv")
    argv = _own_formats(udata, tmp_path)["csv"]
    work, repo = tmp_path / "run", tmp_path / "repo"
    rc = fsrec_main([
        "pipeline", *argv, "--item-metadata", str(tmp_path / "items.csv"), "--work-dir", str(work),
        "--repository", str(repo), "--epochs", "1", "--max-train-seconds", "20", "--max-seq-len", "20",
        "--hidden-size", "16", "--strategy", "lora", "--no-quantize", "--show-users", "2", "--protocol", "http",
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tritonserver ready" in out and "tritonserver stopped" in out
    summary = json.loads((work / "summary.json").read_text())
    # the export reproduced PyTorch and the served version is the one the pipeline wrote
    assert summary["export"]["max_abs_diff"] < 1e-4 and summary["export"]["top10_overlap"] == 1.0
    assert (repo / "fsrec" / "1" / "model.onnx").exists() and (repo / "fsrec" / "config.pbtxt").exists()
    assert summary["data"]["cleaning"]["item_categories"] == 19  # genres -> side features
    users = summary["served"]["users"]
    assert len(users) == 2
    for u in users:
        assert len(u["items"]) == 10 and len(set(u["items"])) == 10
        assert not set(u["items"]) & set(u["history"])  # own history masked inside the graph
        assert all(isinstance(i, str) for i in u["items"])  # raw ids out
        assert u["scores"] == sorted(u["scores"], reverse=True)
        assert u["titles"] == [meta.titles[i] for i in u["items"]]  # titles from the metadata file
        for item, title in zip(u["items"], u["titles"]):
            assert f"{item:>5} {title}" in out  # printed next to the id
    # the adapted cohort was evaluated on its query items, never trained on them
    assert summary["adapt"]["strategy"] in ("lora", "zero_shot")
    assert 0.0 <= summary["adapt"]["adapted_ndcg@10"] <= 1.0
