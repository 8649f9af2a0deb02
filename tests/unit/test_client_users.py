"""Requests by user id and event records, checked before anything is sent; and the CLI that
feeds a log into the store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fsrec_serve.client.users import EventRecord, as_events, check_user_id, encode_recent
from fsrec_serve.errors import InvalidRequestError
from fsrec_serve.idmap import IdMap


@pytest.mark.parametrize("bad,why", [("", "empty"), ("   ", "empty"), ("x" * 257, "at most 256"),
                                     (b"\xff\xfe", "UTF-8"), (None, "must be text"), (True, "must be text")])
def test_bad_user_ids_are_refused_without_echoing_them(bad, why):
    with pytest.raises(InvalidRequestError, match=why) as err:
        check_user_id(bad)
    assert "x" * 20 not in str(err.value)


def test_user_ids_as_utf8_bytes():
    assert check_user_id("zoë") == "zoë".encode()
    assert check_user_id(42) == b"42"
    assert check_user_id("x" * 256) == b"x" * 256


def test_recent_items_map_to_left_padded_indices_and_drop_unknown_ids():
    m = IdMap(["a", "b", "c"])
    out = encode_recent([["a", "zz", "c"], [], ["b"]], 3, m, 3)
    assert out.dtype == np.int64 and out.tolist() == [[1, 3], [0, 0], [0, 2]]
    with pytest.raises(InvalidRequestError, match="at most 1024"):
        encode_recent([["a"] * 1025], 1, m, 3)
    with pytest.raises(InvalidRequestError, match="2 lists for 1 users"):
        encode_recent([["a"], ["b"]], 1, m, 3)


def test_events_from_tuples_dicts_and_records():
    evs = as_events([("u", "i"), {"user_id": "v", "item_id": "j", "timestamp": 5.0}, EventRecord("w", "k", None, "e1")])
    assert [e.user_id for e in evs] == ["u", "v", "w"] and evs[1].timestamp == 5.0 and evs[2].event_id == "e1"
    for bad in ([], [("u", "i", math.nan)], [("u", "i", math.inf)]):
        with pytest.raises(InvalidRequestError):
            as_events(bad)


def test_cli_events_ingest_is_idempotent_and_counts_unknown_items(tmp_path, capsys, monkeypatch):
    from fsrec_serve.cli import main

    vdir = tmp_path / "repo" / "fsrec" / "1"
    vdir.mkdir(parents=True)
    IdMap(["i1", "i2"]).save(vdir / "item_map.json")
    (vdir / "fsrec_meta.json").write_text(json.dumps({"max_seq_len": 50, "max_top_k": 10, "num_items": 2}))
    (vdir / "model.onnx").write_bytes(b"")
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nalice,i1,10\nalice,i2,20\nbob,new,30\nbob,i1,40\n")
    args = ["events", "ingest", "--data", str(log), "--time-col", "timestamp", "--min-user-interactions", "1",
            "--store", str(tmp_path / "s.sqlite3"), "--repository", str(tmp_path / "repo"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (first["stored"], first["new_item_events"], first["users"]) == (4, 1, 2)
    assert (again["stored"], again["duplicates"]) == (0, 4)
    assert main(args[:-5] + ["--repository", str(tmp_path / "nowhere")]) == 2
    assert "build the repository first" in capsys.readouterr().err
