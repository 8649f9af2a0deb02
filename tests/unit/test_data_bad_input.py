"""Bad input: each case is a clear DataError naming the file, the line/row, the column and the
fix; nothing is written into the work dir when the data is refused."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fsrec_serve.cli import main as fsrec_main
from fsrec_serve.data import DataSpec, load_interactions
from fsrec_serve.errors import DataFormatError, FsRecError


def _load(path, **kw):
    return load_interactions(DataSpec(path=str(path), **kw))


def _refused(path, text: str, pattern: str, **kw) -> None:
    """Writing ``text`` to ``path`` and reading it with ``kw`` fails with ``pattern``."""
    path.write_text(text)
    with pytest.raises(DataFormatError, match=pattern):
        _load(path, **kw)


def test_missing_column_and_typo_suggest_the_closest_name(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,timestamp\n1,a,1\n1,b,2\n")
    with pytest.raises(DataFormatError, match=r"log\.csv: no column 'timestmp' \(--time-col\).*"
                                              r"did you mean 'timestamp'\? Fix: pass --time-col"):
        _load(p, time_col="timestmp")
    with pytest.raises(DataFormatError, match=r"no column 'user' \(--user-col\); the file has 'user_id'"):
        _load(p, user_col="user")
    q = tmp_path / "log.parquet"
    pq.write_table(pa.table({"uid": ["1"], "iid": ["a"]}), q)
    with pytest.raises(DataFormatError, match=r"log\.parquet: no column 'user_id'.*did you mean 'uid'"):
        _load(q)


def test_unparsable_and_mixed_timestamps_name_the_line(tmp_path):
    _refused(tmp_path / "t.csv", "user_id,item_id,t\n1,a,2021-01-01\n1,b,yesterday\n",
             r"t\.csv:3: column 't' \(--time-col\) holds 'yesterday'.*--time-format", time_col="t")
    _refused(tmp_path / "mixed.csv", "user_id,item_id,t\n1,a,1609459200\n1,b,2021-01-02\n",
             r"mixed\.csv:3: .*'2021-01-02'.*mixes unix times \(ints\) and dates", time_col="t")


def test_mixed_timestamps_across_streamed_blocks(tmp_path, monkeypatch):
    from fsrec_serve.data import tables

    monkeypatch.setattr(tables, "BLOCK_BYTES", 64)  # first block all ints, a date later
    p = tmp_path / "late.csv"
    p.write_text("user_id,item_id,t\n" + "".join(f"1,i{k},{1000 + k}\n" for k in range(20)) + "1,z,2021-01-02\n")
    with pytest.raises(DataFormatError, match=r"late\.csv:22: .*column 't' holds '2021-01-02'.*mix unix times and dates"):
        _load(p, time_col="t")


def test_empty_file_and_empty_gz(tmp_path):
    for name in ("empty.csv", "empty.csv.gz", "empty.parquet", "empty.jsonl"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataFormatError, match=rf"{name.replace('.', r'[.]')}: the file is empty \(0 bytes\)"):
            _load(tmp_path / name)
    (tmp_path / "nothing.csv.gz").write_bytes(gzip.compress(b""))  # valid gzip, no content
    with pytest.raises(DataFormatError, match=r"nothing\.csv\.gz: the file is empty"):
        _load(tmp_path / "nothing.csv.gz")


def test_header_only(tmp_path):
    p = tmp_path / "head.csv"
    p.write_text("user_id,item_id,rating\n")
    with pytest.raises(DataFormatError, match=r"head\.csv: the file has a header but no rows"):
        _load(p, rating_col="rating")


def test_float_ids_in_parquet_are_refused(tmp_path):
    p = tmp_path / "f.parquet"
    pq.write_table(pa.table({"user_id": [1.0, 2.0], "item_id": ["a", "b"]}), p)
    with pytest.raises(DataFormatError, match=r"f\.parquet: id column 'user_id' is stored as floating point"):
        _load(p)


def test_nan_and_out_of_range_ratings(tmp_path):
    p, head = tmp_path / "r.csv", "user_id,item_id,rating\n1,a,4\n"
    _refused(p, head + "1,b,\n", r"r\.csv:3: column 'rating' \(--rating-col\) is empty or NaN", rating_col="rating")
    _refused(p, head + "1,b,NaN\n", r"r\.csv:3: column 'rating' .*NaN", rating_col="rating")
    _refused(p, head + "1,b,5\n2,a,7\n", r"r\.csv:4: column 'rating' \(--rating-col\) is 7, outside rating_range "
             r"\[1, 5\]", rating_col="rating", rating_range=[1, 5])
    _refused(p, head + "1,b,five\n", r"r\.csv:3: rating and time must be numbers.*'five'", rating_col="rating")


def test_one_interaction_user_is_dropped_and_counted(tmp_path):
    p = tmp_path / "one.csv"
    p.write_text("user_id,item_id\n1,a\n1,b\n2,a\n")
    data = _load(p)
    assert set(data.sequences()) == {"1"}
    assert data.stats["short_users_dropped"] == 1 and data.stats["short_user_rows_dropped"] == 1


def test_conflicting_parquet_shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    pq.write_table(pa.table({"user_id": ["1"], "item_id": ["a"]}), d / "part-0.parquet")
    pq.write_table(pa.table({"user_id": [1], "item_id": ["b"]}), d / "part-1.parquet")
    with pytest.raises(DataFormatError, match=r"shards disagree on column 'user_id': part-0\.parquet has string, "
                                              r"part-1\.parquet has int64\. Fix: rewrite the shards with one schema"):
        _load(d)


def test_wrong_field_count_names_the_line(tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("user_id,item_id,t\n1,a,1\n1,b\n")
    with pytest.raises(DataFormatError, match=r"short\.csv:3: expected 3 comma-separated fields, got 2"):
        _load(p, time_col="t")


def test_cli_refuses_bad_data_before_writing_anything(tmp_path, capsys):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id\n1,a\n")
    work, repo, out = tmp_path / "work", tmp_path / "repo", tmp_path / "model"
    assert fsrec_main(["pipeline", "--data", str(p), "--time-col", "when", "--work-dir", str(work),
                       "--repository", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "no column 'when' (--time-col)" in err and "log.csv" in err
    assert fsrec_main(["train", "--data", str(p), "--item-col", "itm", "--output-dir", str(out)]) == 2
    assert "did you mean 'item_id'" in capsys.readouterr().err
    assert fsrec_main(["data", "stats", "--data", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv does not exist" in capsys.readouterr().err
    assert not work.exists() and not repo.exists() and not out.exists()
    with pytest.raises(FsRecError):
        _load(p, duplicates="sometimes")


def test_text_in_another_encoding_names_the_fix(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("user_id,item_id\nJosé,a\nJosé,b\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin\.csv: column 'user_id' holds text that is not valid utf-8; "
                                              r"set the file's encoding"):
        _load(p)
    assert list(_load(p, encoding="latin-1").sequences()) == ["José"]
