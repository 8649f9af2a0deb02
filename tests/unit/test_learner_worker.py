"""The learner on a real SQLite store and a tiny model: events -> histories -> parameters with
the model's fingerprint, exactly once across restarts, and its re-fine-tune outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from fsrec_serve.adaptation.online import RefineConfig
from fsrec_serve.errors import ConfigError
from fsrec_serve.learner import Learner, LearnerConfig
from fsrec_serve.model import model_fingerprint
from fsrec_serve.store import Event, UserKeyer, open_store


@pytest.fixture
def served(tiny_model, tmp_path):
    model = tiny_model(objective="causal")
    model.save_pretrained(tmp_path / "served")
    return tmp_path / "served", model_fingerprint(model)


def _events(keyer, user: str, items, t0: float = 0.0, prefix: str = "e"):
    return [Event(f"{prefix}-{user}-{j}", keyer.key(user), int(i), t0 + j) for j, i in enumerate(items)]


def test_events_become_histories_and_parameters_of_the_served_fingerprint(served, tmp_path):
    model_dir, fp = served
    keyer = UserKeyer.from_secret(b"k" * 32)
    store_url = str(tmp_path / "s.sqlite3")
    with open_store(store_url) as store:
        store.append(_events(keyer, "ann", [1, 2, 3, 4, 5, 6]) + _events(keyer, "bob", [7]))
        learner = Learner(LearnerConfig(model_dir=model_dir, store=store_url, fit_interval_s=0.0))
        stats = learner.run(until_idle=True, max_seconds=60)
        assert stats.events == 7 and stats.fits == 1 and stats.users_refit == 2
        st = store.states([keyer.key("ann"), keyer.key("bob")])
        ann, bob = st[keyer.key("ann")], st[keyer.key("bob")]
        assert ann.history == [1, 2, 3, 4, 5, 6] and ann.fingerprint == fp and ann.params.shape == (16,)
        assert bob.fingerprint == fp and not bob.params.any()  # one item: nothing to fit, zeros (zero-shot)
        assert ann.params_for("another-model") is None
        learner.close()


def test_a_restarted_learner_applies_nothing_twice(served, tmp_path):
    model_dir, _ = served
    keyer = UserKeyer.from_secret(b"k" * 32)
    store_url = str(tmp_path / "s.sqlite3")
    cfg = LearnerConfig(model_dir=model_dir, store=store_url, fit_interval_s=0.0, batch_events=3)
    with open_store(store_url) as store:
        store.append(_events(keyer, "cy", range(1, 8)))
        first = Learner(cfg)
        first.apply_pending()  # one batch of 3, then "crash"
        first.close()
        store.append(_events(keyer, "cy", range(1, 8)))  # the client resends everything: duplicates
        second = Learner(cfg)
        assert second.run(until_idle=True, max_seconds=60).events == 4
        assert store.states([keyer.key("cy")])[keyer.key("cy")].event_count == 7
        assert store.lag("learner") == (0, 0.0) or store.lag("learner")[0] == 0
        second.close()


def test_refine_outcomes_are_counted_and_a_failed_rollout_keeps_the_served_model(served, tmp_path):
    model_dir, fp = served
    keyer = UserKeyer.from_secret(b"k" * 32)
    store_url = str(tmp_path / "s.sqlite3")
    rng = np.random.default_rng(0)
    with open_store(store_url) as store:
        for u in range(12):
            store.append(_events(keyer, f"u{u}", rng.integers(1, 30, size=8), prefix="a"))

        def broken_publish(model):
            raise RuntimeError("no server")

        cfg = LearnerConfig(model_dir=model_dir, store=store_url, fit_interval_s=0.0, min_refine_users=5,
                            refine=RefineConfig(epochs=1, tolerance=1.0, min_forgetting=0.0, forgetting_users=4))
        learner = Learner(cfg, publish=broken_publish)
        learner.run(until_idle=True, max_seconds=60)
        res = learner.refine()
        assert res.accepted and learner.stats.refines[-1]["outcome"] == "failed"
        assert learner.fingerprint == fp  # the served model is kept
        assert learner.metrics.refines.labels("failed")._value.get() == 1
        strict = LearnerConfig(model_dir=model_dir, store=store_url, min_refine_users=5,
                               refine=RefineConfig(epochs=1, lr=50.0, min_forgetting=0.999))
        refused = Learner(strict, publish=broken_publish)
        refused.active = set(store.users())
        assert not refused.refine().accepted and refused.stats.refines[-1]["outcome"] == "refused"
        learner.close()
        refused.close()


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="save_pretrained"):
        LearnerConfig(model_dir=tmp_path)


def test_the_learner_backs_off_while_redis_is_down_and_resumes_without_loss(served, tmp_path):
    import threading
    import time

    from redis_server import redis_server_binary, running_redis

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it as root)")
    model_dir, fp = served
    keyer = UserKeyer.from_secret(b"k" * 32)
    with running_redis(tmp_path / "redis") as rs:
        with open_store(rs.url) as store:
            store.append(_events(keyer, "dee", [1, 2, 3, 4]))
        learner = Learner(LearnerConfig(model_dir=model_dir, store=rs.url, fit_interval_s=0.0, max_backoff_s=0.2))
        rs.kill()
        stop = threading.Event()
        worker = threading.Thread(target=learner.run, args=(stop,), daemon=True)
        worker.start()
        time.sleep(1.5)
        assert learner.stats.store_errors >= 2 and learner.stats.events == 0 and worker.is_alive()
        rs.restart()
        deadline = time.monotonic() + 30
        while learner.stats.users_refit < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        worker.join(10)
        with open_store(rs.url) as store:
            st = store.states([keyer.key("dee")])[keyer.key("dee")]
        assert st.event_count == 4 and st.history == [1, 2, 3, 4] and st.fingerprint == fp
        learner.close()
