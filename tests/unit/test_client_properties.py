"""Property-based tests (hypothesis) of the client's input checks, as written in
``fsrec_serve.client``: whatever a caller passes, the checks either accept it and produce a
request that respects the model's contract, or refuse it with an ``InvalidRequestError`` (or a
``ConfigError`` for options) that says what is wrong. Never another exception, never a hang.

Everything here runs before a request is sent (no server needed): ``validate_k``,
``encode_history``, ``as_history_batch``, ``pad_batch``, ``decode_top``, ``parse_url`` and the
client's own ``_encode`` (what ``recommend``/``recommend_batch`` run before the network call).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fsrec_serve.client import (
    IdMap,
    ModelSpec,
    RecommenderClient,
    decode_top,
    encode_history,
    pad_batch,
    parse_url,
    validate_k,
)
from fsrec_serve.client.validation import as_history_batch
from fsrec_serve.errors import ConfigError, InvalidRequestError

FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# raw item ids as users send them, plus everything a caller might send by mistake
raw_ids = st.one_of(st.text(max_size=6), st.integers(-10, 10**6))
junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.binary(max_size=4),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                 st.complex_numbers(allow_nan=False))
history_items = st.one_of(raw_ids, junk)
histories = st.one_of(
    st.lists(raw_ids, max_size=40),
    st.lists(history_items, max_size=12),
    st.text(max_size=8), st.binary(max_size=8), st.none(), st.integers(), st.floats(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    hnp.arrays(st.sampled_from([np.int64, np.int32, np.float64, np.bool_, np.dtype("U3")]),
               hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
    st.tuples(raw_ids, raw_ids), st.frozensets(st.integers(0, 50), max_size=5),
)


@st.composite
def id_maps(draw):
    raws = draw(st.lists(st.one_of(st.text(min_size=1, max_size=5), st.integers(0, 10**5).map(str)),
                         min_size=1, max_size=60, unique=True))
    return IdMap(raws)


def _clear(err: Exception) -> None:
    msg = str(err)
    assert len(msg) > 15 and msg[0].isalnum() or msg.startswith(("'", '"')), msg


# -- validate_k -------------------------------------------------------------------------------------
@FAST
@given(k=st.one_of(st.integers(-1000, 1000), junk, st.text(max_size=3), st.just(np.int64(5)), st.just(np.int8(-3))),
       max_top_k=st.integers(1, 200))
def test_validate_k(k, max_top_k):
    ok = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= int(k) <= max_top_k
    if ok:
        assert validate_k(k, max_top_k) == int(k)
        return
    with pytest.raises(InvalidRequestError) as e:
        validate_k(k, max_top_k)
    assert "k" in str(e.value) and str(max_top_k) in str(e.value)


# -- encode_history with an id map -------------------------------------------------------------------
@FAST
@given(item_map=id_maps(), history=histories, max_seq_len=st.integers(1, 30),
       on_unknown=st.sampled_from(["drop", "error"]), data=st.data())
def test_encode_history_with_id_map(item_map, history, max_seq_len, on_unknown, data):
    # mix real ids of the map into list histories, so that acceptance is exercised too
    if isinstance(history, list) and len(item_map) and data.draw(st.booleans()):
        known = [item_map.raw(i) for i in data.draw(st.lists(st.integers(1, len(item_map)), max_size=40))]
        history = data.draw(st.permutations(known + history))
    try:
        enc = encode_history(history, item_map=item_map, max_seq_len=max_seq_len, on_unknown=on_unknown)
    except InvalidRequestError as e:
        _clear(e)
        return
    items = list(history.tolist() if isinstance(history, np.ndarray) else history)
    # accepted: only str/int ids; each known one mapped, in order, the latest max_seq_len kept
    assert all(isinstance(x, (str, int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in items)
    mapped = [item_map._to_index[str(x)] for x in items if str(x) in item_map]
    unknown = [x for x in items if str(x) not in item_map]
    assert enc.indices == mapped[-max_seq_len:]
    assert 1 <= len(enc.indices) <= max_seq_len and all(1 <= i <= len(item_map) for i in enc.indices)
    assert enc.truncated == max(0, len(mapped) - max_seq_len)
    assert list(enc.dropped) == unknown
    assert not unknown or on_unknown == "drop"


# -- encode_history in index mode (no id map) ---------------------------------------------------------
@FAST
@given(history=histories, max_seq_len=st.integers(1, 30), num_items=st.one_of(st.none(), st.integers(1, 500)),
       on_unknown=st.sampled_from(["drop", "error"]))
def test_encode_history_index_mode(history, max_seq_len, num_items, on_unknown):
    try:
        enc = encode_history(history, item_map=None, max_seq_len=max_seq_len, num_items=num_items,
                             on_unknown=on_unknown)
    except InvalidRequestError as e:
        _clear(e)
        return
    assert 1 <= len(enc.indices) <= max_seq_len
    assert all(i >= 1 and (num_items is None or i <= num_items) for i in enc.indices)


# -- batches and padding --------------------------------------------------------------------------------
@FAST
@given(batch=st.one_of(st.lists(st.lists(st.integers(1, 99), min_size=1, max_size=12), max_size=6), histories),
       max_seq_len=st.integers(1, 16), k=st.one_of(st.integers(-2, 30), junk))
def test_client_encode_is_all_or_nothing(batch, max_seq_len, k):
    """What recommend_batch runs before sending: every history and k checked, then one int64
    [B, max_seq_len] left-padded batch with ids in 0..num_items."""
    spec = ModelSpec(max_seq_len=max_seq_len, max_top_k=20, num_items=99, max_batch_size=4)
    client = RecommenderClient("127.0.0.1:1", protocol="grpc", spec=spec, on_unknown="error")  # never connects
    try:
        hs = as_history_batch(batch)
        k2, encoded, x, _ = client._encode(hs, k)
    except InvalidRequestError as e:
        _clear(e)
        return
    finally:
        client.close()
    assert 1 <= k2 <= 20 and len(encoded) == len(hs)
    assert x.dtype == np.int64 and x.shape == (len(hs), max_seq_len)
    assert x.min(initial=0) >= 0 and x.max(initial=0) <= 99
    for row, e in zip(x, encoded):
        n = len(e.indices)
        assert (row[: max_seq_len - n] == 0).all() and row[max_seq_len - n:].tolist() == e.indices


@FAST
@given(rows=st.lists(st.lists(st.integers(1, 10**6), min_size=1, max_size=20), max_size=8), max_seq_len=st.integers(1, 20))
def test_pad_batch_left_pads_and_keeps_the_newest(rows, max_seq_len):
    enc = [encode_history(r, item_map=None, max_seq_len=max_seq_len) for r in rows]
    x = pad_batch(enc, max_seq_len)
    assert x.shape == (len(rows), max_seq_len) and x.dtype == np.int64
    for r, row in zip(rows, x):
        keep = r[-max_seq_len:]
        assert row[max_seq_len - len(keep):].tolist() == keep and not row[: max_seq_len - len(keep)].any()


# -- decoding what the server returns ----------------------------------------------------------------
@FAST
@given(item_map=id_maps(), data=st.data(), k=st.integers(1, 30))
def test_decode_top_returns_only_valid_raw_ids(item_map, data, k):
    n = len(item_map)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=8))
    items = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-5, n + 5)))
    scores_shape = shape if data.draw(st.integers(0, 4)) else data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=8))
    scores = data.draw(hnp.arrays(np.float32, scores_shape, elements=st.floats(-1e4, 1e4, width=32)))
    try:
        out = decode_top(items, scores, k, item_map=item_map)
    except InvalidRequestError as e:
        assert items.ndim != 2 or items.shape != scores.shape
        _clear(e)
        return
    assert items.ndim == 2 and items.shape == scores.shape and len(out) == items.shape[0]
    for (raws, sc), row in zip(out, items):
        valid = [int(i) for i in row if 1 <= i <= n][:k]
        assert raws == [item_map.raw(i) for i in valid] and len(sc) == len(raws) <= k


# -- addresses ---------------------------------------------------------------------------------------
@FAST
@given(url=st.one_of(st.none(), st.text(max_size=30),
                     st.builds(lambda s, h, p: f"{s}{h}:{p}", st.sampled_from(["", "http://", "grpc://", "https://", "ftp://"]),
                               st.sampled_from(["127.0.0.1", "localhost", "[::1]", "a.b"]), st.integers(-5, 70000))),
       protocol=st.one_of(st.none(), st.sampled_from(["grpc", "http", "tcp", ""])))
def test_parse_url_accepts_or_says_why(url, protocol):
    try:
        address, proto, tls = parse_url(url, protocol)
    except ConfigError as e:
        _clear(e)
        return
    assert proto in ("grpc", "http") and isinstance(tls, bool)
    assume(address)
    assert ":" in address
