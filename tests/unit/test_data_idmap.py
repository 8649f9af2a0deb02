"""IdMap: raw id <-> index 1..n (0 = padding), persistence and errors."""

from __future__ import annotations

import pytest

from fsrec_serve.data import PAD_INDEX, IdMap
from fsrec_serve.errors import DataFormatError, UnknownItemError


def test_indices_start_at_one_and_round_trip():
    m = IdMap(["b", "a", "c", "a"])
    assert PAD_INDEX == 0
    assert len(m) == 3 and m.vocab_size == 4
    assert m.indices(["b", "a", "c"]) == [1, 2, 3]
    assert m.raws([3, 1]) == ["c", "b"]
    assert all(m.raw(m.index(r)) == r for r in m.raw_ids)
    assert m.add("5") == 4 and m.index(5) == 4  # ints are raw ids as strings
    assert 5 in m and "zz" not in m


def test_unknown_ids_and_out_of_range_indices():
    m = IdMap(["x"])
    with pytest.raises(UnknownItemError, match="unknown id 'y'"):
        m.index("y")
    with pytest.raises(UnknownItemError, match="out of range"):
        m.raw(0)  # padding is not an item
    with pytest.raises(UnknownItemError):
        m.raw(2)


def test_save_load_round_trip(tmp_path):
    m = IdMap([str(i) for i in range(100, 0, -3)])
    m.save(tmp_path / "item_map.json")
    back = IdMap.load(tmp_path / "item_map.json")
    assert back == m and back.raw_ids == m.raw_ids
    assert IdMap.from_dict(m.to_dict()) == m


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(DataFormatError, match="missing"):
        IdMap.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        IdMap.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"ids": []}')
    with pytest.raises(DataFormatError, match="raw_ids"):
        IdMap.load(tmp_path / "odd.json")
