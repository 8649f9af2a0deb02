"""Readers on the real files, bad input with clear errors, and the checksum-verifying downloader
(on zips built here in a temp folder: no network)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fsrec_serve.data import load_dataset, read_movielens_100k, read_sequences
from fsrec_serve.data.download import (
    ML100K_SHA256, download_ml100k, extract_ml100k_zip, sha256_of, verify_ml100k,
)
from fsrec_serve.errors import (
    ChecksumError, DataFormatError, DataNotFoundError, EmptyUserError, UnknownDatasetError,
)


# -- real files ---------------------------------------------------------------------------
def test_movielens_100k_counts(ml100k):
    assert len(ml100k) == 100_000
    assert ml100k.n_users == 943
    assert ml100k.n_items == 1682
    assert set(np.unique(ml100k.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ml100k.has_timestamps and ml100k.timestamps.min() > 8e8  # 1997-1998 unix times
    # genres of every movie (19 columns, multi-hot) and demographics of every user
    assert len(ml100k.item_features) == 1682 and len(ml100k.feature_names) == 19
    assert ml100k.item_features["1"].tolist()[3:6] == [1.0, 1.0, 1.0]  # Toy Story: Anim/Child/Comedy
    assert len(ml100k.user_features) == 943
    assert ml100k.user_features["1"] == {"age": 24, "gender": "M", "occupation": "technician",
                                         "zip": "85711"}


def test_movielens_sequences_are_chronological(ml100k):
    seqs = ml100k.sequences()
    assert len(seqs) == 943
    for events in list(seqs.values())[:50]:
        ts = [t for _, _, t in events]
        assert ts == sorted(ts)
    assert sum(len(v) for v in seqs.values()) == 100_000


def test_beauty_counts(data_dir):
    if not (data_dir / "amazon-beauty" / "Beauty.txt").exists():
        pytest.skip(f"Beauty.txt not found under {data_dir}")
    b = load_dataset("beauty", data_dir)
    assert (b.n_users, b.n_items, len(b)) == (22363, 12101, 198502)
    assert not b.has_timestamps and (b.ratings == 1.0).all()
    first = b.sequences()["1"]
    assert [i for i, _, _ in first] == ["1", "2", "3", "4", "5"]  # file order kept


# -- bad input -------------------------------------------------------------------------------
def test_malformed_movielens_line_names_file_and_line(tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("1\t2\t3\t881250949\n1\t5\t4\n")
    with pytest.raises(DataFormatError, match=r"u\.data:2: expected 4 tab-separated fields"):
        read_movielens_100k(d)
    (d / "u.data").write_text("1\t2\tfive\t881250949\n")
    with pytest.raises(DataFormatError, match=r"u\.data:1: rating and time must be numbers"):
        read_movielens_100k(d)


def test_malformed_item_file_names_file_and_line(tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("1\t2\t3\t881250949\n")
    (d / "u.item").write_text("2|GoldenEye (1995)|01-Jan-1995||http://x|0|1\n", encoding="latin-1")
    with pytest.raises(DataFormatError, match=r"u\.item:1: expected 24"):
        read_movielens_100k(d)


def test_empty_user_line_names_file_and_line(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_text("1 10 11 12\n2\n3 13 14\n")
    with pytest.raises(EmptyUserError, match=r"seq\.txt:2: user '2' has no items"):
        read_sequences(p)


def test_empty_sequence_file(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no interactions"):
        read_sequences(p)


def test_sequence_reader_keeps_order(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_text("7 30 10 20\n8 10\n")
    it = read_sequences(p, name="x")
    assert it.name == "x" and it.n_users == 2 and len(it) == 4
    assert [i for i, _, _ in it.sequences()["7"]] == ["30", "10", "20"]


def test_unknown_dataset(tmp_path):
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'netflix'.*beauty, ml-100k"):
        load_dataset("netflix", tmp_path)


def test_missing_data_dir_names_the_setting(tmp_path):
    with pytest.raises(DataNotFoundError, match="FSREC_DATA_DIR.*--data-dir"):
        load_dataset("ml-100k", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="FSREC_DATA_DIR"):
        load_dataset("ml-100k", tmp_path)  # exists, but holds no ml-100k/


def test_data_dir_from_environment(monkeypatch, data_dir):
    monkeypatch.setenv("FSREC_DATA_DIR", str(data_dir))
    if not (data_dir / "ml-100k").exists():
        pytest.skip("ML-100K missing")
    assert load_dataset("ml-100k").n_users == 943  # no data_dir argument: the env is used


def test_cli_data_errors_name_the_setting(tmp_path, capsys):
    from fsrec_serve.cli import main

    assert main(["data", "stats", "ml-100k", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "FSREC_DATA_DIR" in capsys.readouterr().err


# -- downloader: checksums ------------------------------------------------------------------------
def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in files.items():
            z.writestr(f"ml-100k/{name}", blob)
    return buf.getvalue()


def test_real_files_match_the_published_checksums(data_dir):
    if not (data_dir / "ml-100k").exists():
        pytest.skip("ML-100K missing")
    verify_ml100k(data_dir / "ml-100k")


def test_extract_verifies_checksums_of_a_built_zip(data_dir, tmp_path):
    src = data_dir / "ml-100k"
    if not src.exists():
        pytest.skip("ML-100K missing")
    # a zip of the genuine files (built in a temp folder, deleted after the test) extracts
    blob = _zip({n: (src / n).read_bytes() for n in ML100K_SHA256})
    out = extract_ml100k_zip(blob, tmp_path / "good")
    assert sha256_of(out / "u.data") == ML100K_SHA256["u.data"]
    # one byte changed in u.data: refused, with the file and both hashes named
    files = {n: (src / n).read_bytes() for n in ML100K_SHA256}
    files["u.data"] = files["u.data"].replace(b"\t", b" ", 1)
    with pytest.raises(ChecksumError, match=r"u\.data has SHA-256 [0-9a-f]{64}, expected"):
        extract_ml100k_zip(_zip(files), tmp_path / "bad")
    # a file missing from the archive
    del files["u.genre"]
    files["u.data"] = (src / "u.data").read_bytes()
    with pytest.raises(ChecksumError, match=r"u\.genre is missing"):
        extract_ml100k_zip(_zip(files), tmp_path / "short")


def test_download_through_a_file_url(data_dir, tmp_path):
    src = data_dir / "ml-100k"
    if not src.exists():
        pytest.skip("ML-100K missing")
    z = tmp_path / "ml-100k.zip"
    z.write_bytes(_zip({n: (src / n).read_bytes() for n in ML100K_SHA256}))
    target = download_ml100k(tmp_path / "data", url=z.as_uri())
    verify_ml100k(target)
    assert read_movielens_100k(target).n_users == 943
    # corrupt archive content behind the URL -> ChecksumError, not a silent success
    z.write_bytes(_zip({n: b"junk" for n in ML100K_SHA256}))
    with pytest.raises(ChecksumError):
        download_ml100k(tmp_path / "data2", url=z.as_uri())


def test_download_failure_names_the_fix(tmp_path):
    from fsrec_serve.errors import DataError

    with pytest.raises(DataError, match="FSREC_DATA_DIR"):
        download_ml100k(tmp_path, url=(tmp_path / "absent.zip").as_uri())
