"""Shared fixtures for every test.

- ``data_dir``: the real data sets (env ``FSREC_DATA_DIR`` or ``../shared/data`` next to the repo);
  tests that need it are skipped with the reason when it is absent.
- ``ml100k`` / ``ml100k_loo``: real MovieLens-100K interactions and its every-user LOO split.
- ``tiny_interactions`` / ``tiny_splits``: a synthetic log (60 users, 30 items, genres, ratings)
  whose users walk the catalogue in order, so a model can learn it in seconds. Default split:
  cold users and cold items held out.
- ``tiny_model_config`` / ``tiny_model``: a 1-layer, hidden-16 model for ``tiny_splits``
  (factory fixture: ``tiny_model(objective="causal")``).
- ``redis_server`` / ``redis_url``: a real redis-server for the session (tests/redis_server.py),
  flushed for each test that takes ``redis_url``; skipped with the reason when it is not installed.

Per-user state (the admin key ``fsrec serve`` generates) goes to a temp folder for the whole
run (``FSREC_STATE_DIR``), never to the real ``~/.local/state/fsrec``; ``FSREC_ADMIN_KEY`` /
``FSREC_ADMIN_KEY_FILE`` / ``FSREC_USER_KEY_FILE`` / ``FSREC_STORE`` from the caller's shell are ignored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # the machine is shared: with 2 threads OpenMP spin-waits under load

os.environ["FSREC_STATE_DIR"] = tempfile.mkdtemp(prefix="fsrec-test-state-")
for _name in ("FSREC_ADMIN_KEY", "FSREC_ADMIN_KEY_FILE", "FSREC_USER_KEY_FILE", "FSREC_STORE"):
    os.environ.pop(_name, None)


def find_data_dir() -> Path:
    env = os.environ.get("FSREC_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = find_data_dir()
    if not d.exists():
        pytest.skip(f"real data not found at {d}: set FSREC_DATA_DIR to the folder with ml-100k/")
    return d


@pytest.fixture(scope="session")
def ml100k(data_dir):
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip(f"ML-100K not found under {data_dir} (set FSREC_DATA_DIR)")
    from fsrec_serve.data import load_dataset

    return load_dataset("ml-100k", data_dir)


@pytest.fixture(scope="session")
def ml100k_loo(ml100k):
    """ML-100K leave-one-out over every user (no cold users or items)."""
    from fsrec_serve.data import SplitConfig, make_splits

    return make_splits(ml100k, SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))


TINY_USERS, TINY_ITEMS, TINY_FEATURES = 60, 30, 4


def make_tiny_interactions(n_users: int = TINY_USERS, n_items: int = TINY_ITEMS, seed: int = 0):
    """Synthetic log: user u starts at a random item and walks i -> i+1 (mod n) for 12-20
    steps; ratings 1-5; 4 multi-hot "genres" per item (item i has genre i % 4)."""
    from fsrec_serve.data import Interactions

    rng = np.random.default_rng(seed)
    users, items, ratings, ts = [], [], [], []
    for u in range(1, n_users + 1):
        start, n = int(rng.integers(n_items)), int(rng.integers(12, 21))
        for j in range(n):
            users.append(str(u))
            items.append(str(100 + (start + j) % n_items))  # raw ids 100.. (not the indices)
            ratings.append(float(rng.integers(1, 6)))
            ts.append(1_000_000 + 1000 * u + j)
    feats = {}
    for i in range(n_items):
        v = np.zeros(TINY_FEATURES, dtype=np.float32)
        v[i % TINY_FEATURES] = 1.0
        feats[str(100 + i)] = v
    return Interactions(
        name="tiny", users=np.array(users, dtype=object), items=np.array(items, dtype=object),
        ratings=np.array(ratings, dtype=np.float32), timestamps=np.array(ts, dtype=np.int64),
        has_timestamps=True, item_features=feats, feature_names=[f"g{k}" for k in range(TINY_FEATURES)],
    )


@pytest.fixture(scope="session")
def tiny_interactions():
    return make_tiny_interactions()


@pytest.fixture(scope="session")
def tiny_splits(tiny_interactions):
    """Default-protocol split of the tiny log (cold users 10%, cold items ~10%)."""
    from fsrec_serve.data import SplitConfig, make_splits

    return make_splits(tiny_interactions, SplitConfig(seed=0, cold_user_frac=0.1, cold_item_frac=0.1))


@pytest.fixture(scope="session")
def tiny_loo(tiny_interactions):
    """Leave-one-out over every tiny user (no cold users or items)."""
    from fsrec_serve.data import SplitConfig, make_splits

    return make_splits(tiny_interactions, SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))


def tiny_config(num_items: int = TINY_ITEMS, objective: str = "cloze", features: int = 0, **kw):
    from fsrec_serve.model import FsRecConfig

    base = dict(num_items=num_items, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_seq_len=12, objective=objective, num_item_features=features,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return FsRecConfig(**base)


@pytest.fixture(scope="session")
def tiny_model_config():
    """Factory: ``tiny_model_config(objective="causal", features=4, max_seq_len=8)``."""
    return tiny_config


@pytest.fixture
def tiny_model(tiny_splits):
    """Factory of fresh tiny models for ``tiny_splits`` (item map set, seeded):
    ``tiny_model(objective="causal", features=True)``."""
    from fsrec_serve.model import FsRecModel

    def make(objective: str = "cloze", features: bool = False, seed: int = 0, **kw) -> FsRecModel:
        torch.manual_seed(seed)
        nf = tiny_splits.item_features.shape[1] if features else 0
        m = FsRecModel(tiny_config(len(tiny_splits.item_map), objective, nf, **kw))
        m.item_map = tiny_splits.item_map
        if nf:
            m.set_item_features(tiny_splits.item_features)
        m.eval()
        return m

    return make


@pytest.fixture
def fast_train_config():
    """Factory of a TrainConfig for seconds-long unit-test runs."""
    from fsrec_serve.training import TrainConfig

    def make(**kw) -> TrainConfig:
        base = dict(epochs=5, batch_size=16, lr=5e-3, warmup_ratio=0.0, patience=0, progress=False,
                    device="cpu", seed=0)
        base.update(kw)
        return TrainConfig(**base)

    return make


# -- a real redis-server (tests/redis_server.py) ------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (loopback, free port, append-only file in a temp folder)."""
    from redis_server import redis_server_binary, running_redis

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server (scripts/setup.sh does it as root)")
    with running_redis(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def redis_url(redis_server):
    """The URL of the session's redis-server, emptied (FLUSHALL) for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
