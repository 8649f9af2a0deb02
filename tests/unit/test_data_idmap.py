"""IdMap: raw id <-> index 1..n (0 = padding), persistence and errors; ``pad_left``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- pad_left: the one left-padding of index histories ---------------------------------------------
@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(st.integers(1, 10**6), max_size=12), max_size=6), width=st.integers(0, 9),
       kind=st.sampled_from(["list", "tuple", "numpy", "torch"]))
def test_pad_left_keeps_the_newest_items_right_aligned(rows, width, kind):
    import numpy as np
    import torch

    from fsrec_serve.idmap import pad_left
    from fsrec_serve.model import pad_histories

    as_kind = {"list": list, "tuple": tuple, "numpy": lambda r: np.asarray(r, np.int64),
               "torch": lambda r: torch.as_tensor(r, dtype=torch.long)}[kind]
    x = pad_left([as_kind(r) for r in rows], width)
    assert x.shape == (len(rows), width) and x.dtype == np.int64
    for r, got in zip(rows, x):
        kept = r[max(0, len(r) - width):]  # the newest `width` items, oldest first
        assert got[width - len(kept):].tolist() == kept
        assert (got[:width - len(kept)] == PAD_INDEX).all()
    assert torch.equal(pad_histories(rows, width), torch.from_numpy(x))  # the model's tensor view of it
