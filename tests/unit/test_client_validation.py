"""The client's request checks, decoding and repository side files (pure functions, no server)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fsrec_serve.client import decode_top, encode_history, load_repository_info, pad_batch, validate_k
from fsrec_serve.client.validation import (
    ModelSpec,
    as_history_batch,
    coerce_item_map,
    model_counts,
    normalize_statistics,
    spec_from_model_config,
)
from fsrec_serve.data import IdMap
from fsrec_serve.errors import ConfigError, DataFormatError, InvalidRequestError

ROOT = Path(__file__).resolve().parents[2]
IM = IdMap(["a", "b", "c", "242", "302"])  # a=1 b=2 c=3 242=4 302=5


# -- k -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 7, 100, np.int64(3)])
def test_valid_k(k):
    assert validate_k(k, 100) == int(k)


@pytest.mark.parametrize("k", [0, -1, 101, 10**9])
def test_k_out_of_range(k):
    with pytest.raises(InvalidRequestError, match=r"out of range 1\.\.100"):
        validate_k(k, 100)


@pytest.mark.parametrize("k", [True, 2.0, "5", None, [3]])
def test_k_wrong_type(k):
    with pytest.raises(InvalidRequestError, match="must be an integer"):
        validate_k(k, 100)


# -- histories -----------------------------------------------------------------------------
def enc(h, **kw):
    kw.setdefault("item_map", IM)
    kw.setdefault("max_seq_len", 4)
    return encode_history(h, **kw)


def test_raw_ids_are_mapped_and_ints_match_string_ids():
    assert enc(["a", "c"]).indices == [1, 3]
    assert enc([242, "302"]).indices == [4, 5]
    assert enc(np.array(["b", "a"])).indices == [2, 1]
    assert enc((x for x in ["c"])).indices == [3]


@pytest.mark.parametrize("h", [[], (), np.array([], dtype=str)])
def test_empty_history_is_refused(h):
    with pytest.raises(InvalidRequestError, match="history is empty"):
        enc(h)


@pytest.mark.parametrize("h", ["abc", b"ab", None, {"a": 1}, 5, np.zeros((2, 2))])
def test_history_of_the_wrong_type_is_refused(h):
    with pytest.raises(InvalidRequestError, match="history must be"):
        enc(h)


@pytest.mark.parametrize("item", [1.5, None, True, ("a",), b"a"])
def test_item_of_the_wrong_type_is_refused(item):
    with pytest.raises(InvalidRequestError, match="neither a string nor an integer"):
        enc(["a", item])


def test_unknown_ids_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fsrec_serve.client"):
        e = enc(["a", "zz", "b", 999])
    assert e.indices == [1, 2] and e.dropped == ("zz", 999)
    assert "dropped 2 unknown item id(s)" in caplog.text and "'zz'" in caplog.text


def test_unknown_ids_refused_with_on_unknown_error():
    with pytest.raises(InvalidRequestError, match="on_unknown='drop'") as ei:
        enc(["a", "zz"], on_unknown="error")
    assert ei.value.unknown_ids == ["zz"]


def test_history_of_only_unknown_ids_is_refused_even_when_dropping():
    with pytest.raises(InvalidRequestError, match="none of the history's 2 item id"):
        enc(["x", "y"])


def test_long_history_keeps_the_latest_items():
    e = enc(["a", "b", "c", "242", "302", "a"], max_seq_len=4)
    assert e.indices == [3, 4, 5, 1] and e.truncated == 2


def test_unknown_ids_are_dropped_before_truncation():
    e = enc(["a", "b", "zz", "c", "242"], max_seq_len=3)
    assert e.indices == [2, 3, 4] and e.dropped == ("zz",)


def test_index_mode_without_an_id_map():
    e = enc([1, "2", 7, 0, -1, "x"], item_map=None, num_items=5)
    assert e.indices == [1, 2] and e.dropped == (7, 0, -1, "x")
    assert enc([10**6], item_map=None, num_items=None).indices == [10**6]  # range unknown: server checks


def test_pad_batch_left_pads_newest_last():
    batch = pad_batch([enc(["a"]), enc(["b", "c", "242"])], 4)
    assert batch.dtype == np.int64 and batch.tolist() == [[0, 0, 0, 1], [0, 2, 3, 4]]


def test_as_history_batch():
    assert as_history_batch((["a"], ["b"])) == [["a"], ["b"]]
    assert as_history_batch([]) == []
    for bad in ("ab", None, {"a": ["b"]}, 3):
        with pytest.raises(InvalidRequestError, match="histories must be"):
            as_history_batch(bad)


# -- decoding ------------------------------------------------------------------------------
def test_decode_maps_indices_back_and_truncates_to_k():
    items = np.array([[4, 1, 5, 2], [2, 3, 1, 4]], np.int64)
    scores = np.array([[0.9, 0.5, 0.4, 0.1], [3, 2, 1, 0]], np.float32)
    out = decode_top(items, scores, 3, item_map=IM)
    assert out[0] == (["242", "a", "302"], pytest.approx([0.9, 0.5, 0.4]))
    assert out[1][0] == ["b", "c", "a"]
    assert all(isinstance(s, float) for s in out[0][1])


def test_decode_skips_padding_and_out_of_range_indices():
    items = np.array([[0, 9, 3, -1, 2]], np.int64)
    scores = np.arange(5, dtype=np.float32)[None]
    assert decode_top(items, scores, 5, item_map=IM) == [(["c", "b"], [2.0, 4.0])]
    assert decode_top(items, scores, 5, item_map=None, num_items=5) == [(["3", "2"], [2.0, 4.0])]


def test_decode_refuses_mismatched_outputs():
    with pytest.raises(InvalidRequestError, match="expected two"):
        decode_top(np.zeros((2, 3), np.int64), np.zeros((2, 4), np.float32), 1, item_map=IM)


# -- repository side files -----------------------------------------------------------------
def _repo(tmp_path, versions=(1, 3), meta=None, with_map=True):
    model = tmp_path / "repo" / "fsrec"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "fsrec"\nmax_batch_size: 32\n')
    for v in versions:
        d = model / str(v)
        d.mkdir()
        m = {"max_seq_len": 10 + v, "max_top_k": 20, "num_items": 5, "objective": "cloze", "precision": "fp32"}
        m.update(meta or {})
        (d / "fsrec_meta.json").write_text(json.dumps(m))
        if with_map:
            IM.save(d / "item_map.json")
    return tmp_path / "repo"


def test_repository_info_reads_the_newest_version(tmp_path):
    item_map, spec, version = load_repository_info(_repo(tmp_path), "fsrec")
    # the client reads item_map.json itself (no data package): same ids at the same indices
    assert version == "3" and item_map.raws(range(1, 6)) == ["a", "b", "c", "242", "302"] and len(item_map) == 5
    assert (spec.max_seq_len, spec.max_top_k, spec.num_items, spec.max_batch_size) == (13, 20, 5, 32)
    assert spec.extra["objective"] == "cloze"


def test_repository_info_for_a_chosen_version(tmp_path):
    repo = _repo(tmp_path)
    assert load_repository_info(repo, "fsrec", "1")[1].max_seq_len == 11
    with pytest.raises(ConfigError, match=r"version 2 is not in .* \(it has: 1, 3\)"):
        load_repository_info(repo, "fsrec", "2")


def test_repository_info_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_repository_info(tmp_path, "fsrec")
    repo = _repo(tmp_path, meta={"max_top_k": None})
    with pytest.raises(ConfigError, match="invalid value"):
        load_repository_info(repo, "fsrec")
    (repo / "fsrec" / "3" / "fsrec_meta.json").unlink()
    with pytest.raises(ConfigError, match="fsrec_meta.json is missing"):
        load_repository_info(repo, "fsrec")


def test_repository_without_id_map_means_index_mode(tmp_path):
    item_map, spec, _ = load_repository_info(_repo(tmp_path, with_map=False), "fsrec")
    assert item_map is None and spec.num_items == 5


def test_coerce_item_map(tmp_path):
    IM.save(tmp_path / "item_map.json")
    for loaded in (coerce_item_map(tmp_path), coerce_item_map(tmp_path / "item_map.json")):
        assert loaded.raws(range(1, 6)) == IM.raw_ids and loaded.index("242") == IM.index("242") == 4
    assert coerce_item_map(None) is None and coerce_item_map(IM) is IM
    with pytest.raises(DataFormatError):
        coerce_item_map(tmp_path / "missing.json")


def test_spec_from_model_config_http_and_grpc_forms():
    http = {"max_batch_size": 64, "input": [{"name": "item_ids", "dims": [50]}],
            "output": [{"name": "top_items", "dims": [100]}, {"name": "top_scores", "dims": [100]}]}  # fmt: skip
    grpc = {"config": {"max_batch_size": 64, "input": [{"name": "item_ids", "dims": ["50"]}],
                       "output": [{"name": "top_scores", "dims": ["100"]}, {"name": "top_items", "dims": ["100"]}]}}  # fmt: skip
    assert spec_from_model_config(http) == spec_from_model_config(grpc) == ModelSpec(50, 100, None, 64)
    with pytest.raises(ConfigError, match="not an fsrec export"):
        spec_from_model_config({"input": [{"name": "x", "dims": [4]}], "output": []})


def test_model_spec_validates():
    with pytest.raises(ConfigError):
        ModelSpec(0, 10)


# -- statistics ----------------------------------------------------------------------------
def test_grpc_statistics_are_normalized_to_ints():
    grpc_json = {"model_stats": [{"name": "fsrec", "version": "1", "inference_count": "12", "execution_count": "5",
                                  "inference_stats": {"success": {"count": "5", "ns": "100"}, "fail": {}, "queue": {}},
                                  "batch_stats": [{"batch_size": "4", "compute_infer": {"count": "2", "ns": "9"}}]}]}  # fmt: skip
    s = normalize_statistics(grpc_json)
    m = s["model_stats"][0]
    assert m["version"] == "1"  # ids stay strings
    assert m["inference_count"] == 12 and m["inference_stats"]["fail"] == {"count": 0, "ns": 0}
    assert m["batch_stats"][0]["batch_size"] == 4
    assert model_counts(s, "fsrec") == {"inference_count": 12, "execution_count": 5, "success": 5, "fail": 0}
    assert model_counts(s, "fsrec", "2")["inference_count"] == 0


def test_client_package_does_not_import_torch():
    code = (
        "import sys; import fsrec_serve.client, fsrec_serve.serving, tritonclient.grpc, tritonclient.http; "
        "bad = [m for m in ('torch', 'transformers', 'optimum', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_the_client_takes_tensor_names_types_and_files_from_the_contract():
    """No module of the client spells a tensor name, a Triton/numpy data type or a file name of
    the contract itself: a renamed tensor in fsrec_serve.contract reaches the client unchanged."""
    import ast

    from fsrec_serve import contract

    values = {v for k, v in vars(contract).items() if isinstance(v, str)
              and (k.startswith(("INPUT_", "OUTPUT_")) or k.endswith(("_FILE", "_DTYPE")))}
    assert {"item_ids", "top_items", "FP32", "INT64", "BYTES", "item_map.json", "config.pbtxt"} <= values
    for path in sorted((ROOT / "fsrec_serve" / "client").glob("*.py")):
        literals = {n.value for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not literals & values, f"{path.name} spells {sorted(literals & values)}: import them from the contract"
