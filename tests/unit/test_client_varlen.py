"""Client side of real-length serving and per-user parameters (fsrec_serve/client/validation.py):
the request width picked from the served config (own length / strict bucket / fixed width),
the spec read back from every generated target, and the user_params checks (FsRecError)."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format

from exporters.triton_config import RepositorySpec, model_config, render_config
from fsrec_serve.client.validation import (
    EncodedHistory,
    ModelSpec,
    encode_user_params,
    load_repository_info,
    pad_batch,
    spec_from_model_config,
)
from fsrec_serve.errors import FsRecError, InvalidRequestError

SPEC = RepositorySpec(max_seq_len=50, user_params_dim=8, length_buckets=[8, 16, 32])


def _spec(target: str) -> ModelSpec:
    return spec_from_model_config(json_format.MessageToDict(model_config(SPEC, target), preserving_proto_field_name=True))


@pytest.mark.parametrize("target", ["cpu", "gpu", "gpu-python"])
def test_spec_from_every_generated_target(target):
    s = _spec(target)
    assert (s.max_seq_len, s.max_top_k, s.variable_length, s.length_buckets) == (50, 100, True, (8, 16, 32, 50))
    assert s.strict_buckets == (target == "gpu") and s.user_params_dim == 8
    assert s.user_params_required == (target == "gpu")


def test_request_width_own_length_strict_bucket_or_fixed():
    enc = [EncodedHistory([3, 4, 5]), EncodedHistory(list(range(1, 13)))]  # longest: 12
    x = pad_batch(enc, _spec("cpu"))
    assert x.shape == (2, 12) and x[0].tolist() == [0] * 9 + [3, 4, 5]
    assert pad_batch(enc, _spec("gpu")).shape == (2, 16)  # the next bucket
    assert pad_batch([EncodedHistory([1] * 50)], _spec("gpu")).shape == (1, 50)
    fixed = ModelSpec(max_seq_len=20, max_top_k=5)  # an older fixed-width model
    assert pad_batch(enc, fixed).shape == (2, 20) and pad_batch(enc, 20).shape == (2, 20)


def test_repository_folder_gives_the_same_spec(tmp_path):
    d = tmp_path / "fsrec"
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(render_config(SPEC, "gpu"))
    (d / "1" / "fsrec_meta.json").write_text('{"max_seq_len": 50, "max_top_k": 100, "num_items": 9, "user_params_dim": 8}')
    _, s, _ = load_repository_info(tmp_path, "fsrec")
    assert (s.variable_length, s.length_buckets, s.strict_buckets, s.user_params_dim, s.user_params_required) == (
        True, (8, 16, 32, 50), True, 8, True)
    (d / "config.pbtxt").write_text(render_config(SPEC, "cpu"))
    _, s, _ = load_repository_info(tmp_path, "fsrec")
    assert s.variable_length and not s.strict_buckets and not s.user_params_required


def test_user_params_checks_name_the_problem():
    s = _spec("cpu")
    assert encode_user_params(None, 2, s) is None  # the server fills zeros
    np.testing.assert_array_equal(encode_user_params(None, 2, _spec("gpu")), np.zeros((2, 8), np.float32))
    ok = encode_user_params([[0.5] * 8, [0.0] * 8], 2, s)
    assert ok.dtype == np.float32 and ok.shape == (2, 8)
    assert encode_user_params(np.ones(8), 1, s).shape == (1, 8)
    bad = {
        "shape [2, 7]": np.ones((2, 7)),
        "NaN": np.full((2, 8), np.nan),
        "dtype <U1": np.full((2, 8), "a"),
    }
    for want, arr in bad.items():
        with pytest.raises(InvalidRequestError, match=want.replace("[", r"\[").replace("]", r"\]")):
            encode_user_params(arr, 2, s)
    with pytest.raises(FsRecError, match="no per-user parameter input"):
        encode_user_params(np.ones((1, 8)), 1, ModelSpec(max_seq_len=5, max_top_k=5))
