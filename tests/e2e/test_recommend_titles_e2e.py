"""`fsrec recommend --item-metadata FILE` prints titles next to the ids a real tritonserver returns
(issue 11, item 3, "E2E test, metadata"), and a missing or malformed item file is a clear error."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from fsrec_serve.cli import main


@pytest.fixture(scope="module")
def ml100k_titles(e2e_splits) -> dict[str, str]:
    """raw id -> title, parsed here straight from ML-100K's u.item (latin-1, '|'-separated)."""
    env = os.environ.get("FSREC_DATA_DIR")  # as conftest's e2e_splits, which skips without the data
    data_dir = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    titles = {}
    with open(data_dir / "ml-100k" / "u.item", encoding="latin-1") as f:
        for line in f:
            fields = line.rstrip("\n").split("|")
            if len(fields) > 1 and fields[1]:
                titles[fields[0]] = fields[1]
    assert titles["1"] == "Toy Story (1995)" and len(titles) >= 1680
    return titles


def _write_items(path, titles: dict[str, str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:  # csv quotes "American President, The (1995)"
        w = csv.writer(f)
        w.writerow(["item_id", "title"])
        w.writerows(sorted(titles.items()))


def _rows(out: str) -> list[tuple[str, str]]:
    """(id, title or '') of each ranked line of the table."""
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s*\d+\s+(\S+)\s+-?\d+\.\d{4}(?:  (.*))?$", line)
        if m:
            rows.append((m.group(1), m.group(2) or ""))
    return rows


def test_recommend_prints_titles_from_item_metadata(triton_server, fsrec_repository, user_histories,
                                                    ml100k_titles, tmp_path, capsys):
    base = ["recommend", "--url", triton_server.url_grpc, "--repository", str(fsrec_repository),
            "--history", *user_histories[0], "--k", "8"]
    assert main([*base, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    items = plain["items"]
    assert len(items) == 8 and "titles" not in plain  # no metadata file: no titles
    # the top item has no title in the file: it must print alone
    meta = tmp_path / "items.csv"
    _write_items(meta, {i: t for i, t in ml100k_titles.items() if i != items[0]})

    assert main([*base, "--item-metadata", str(meta)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [i for i, _ in rows] == items  # same server answer, now with titles
    assert rows[0] == (items[0], "")
    for item, title in rows[1:]:
        assert title == ml100k_titles[item], (item, title)

    assert main([*base, "--item-metadata", str(meta), "--json"]) == 0
    with_titles = json.loads(capsys.readouterr().out)
    assert with_titles["items"] == items
    assert with_titles["titles"] == [None] + [ml100k_titles[i] for i in items[1:]]


def test_missing_item_metadata_file_is_a_clear_error_before_any_request(tmp_path, capsys):
    missing = tmp_path / "no-such-items.csv"
    # port 9 (discard) has no server: the error must come before any request is tried
    rc = main(["recommend", "--url", "grpc://127.0.0.1:9", "--history", "1", "--item-metadata", str(missing),
               "--retries", "0", "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--item-metadata" in err and str(missing) in err and "no such file" in err


def test_item_metadata_without_the_id_column_names_the_option(tmp_path, capsys):
    meta = tmp_path / "items.csv"
    meta.write_text("movie,name\n1,Toy Story (1995)\n")
    rc = main(["recommend", "--url", "grpc://127.0.0.1:9", "--history", "1", "--item-metadata", str(meta),
               "--retries", "0", "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'item_id'" in err and "'movie'" in err and "--item-id-col" in err
