"""RedisStore on a real redis-server: a server that is down, kill -9 between append and apply,
partitions owned by several learners."""

from __future__ import annotations

import pytest
from redis_server import free_port, redis_server_binary, running_redis

from fsrec_serve.errors import StoreUnavailableError
from fsrec_serve.store import Event, UserKeyer
from fsrec_serve.store.redis import RedisStore

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed "
                                "(apt-get install redis-server; scripts/setup.sh does it as root)")


def events(n, prefix="e", users=4):
    keyer = UserKeyer.from_secret(b"test")
    return [Event(f"{prefix}{i}", keyer.key(f"user{i % users}"), 1 + i % 9, 1000.0 + i) for i in range(n)]


def test_a_server_that_is_down_is_unavailable_and_named():
    port = free_port()  # nothing listens there
    s = RedisStore(f"redis://:pw-secret@127.0.0.1:{port}/0")
    for call in (s.ping, lambda: s.append(events(1)), lambda: s.pending("learner")):
        with pytest.raises(StoreUnavailableError) as ei:
            call()
        msg = str(ei.value)
        assert f"redis://:***@127.0.0.1:{port}/0" in msg and "start redis-server" in msg and "pw-secret" not in msg


def test_kill_9_between_append_and_apply_loses_nothing_and_applies_once(tmp_path):
    with running_redis(tmp_path) as srv:
        s = RedisStore(srv.url)
        evs = events(40)
        assert s.append(evs[:25]) == [True] * 25
        delivered = s.pending("learner", limit=10)  # delivered, not applied, when the server dies
        assert len(delivered) == 10
        srv.kill()
        with pytest.raises(StoreUnavailableError):
            s.append(evs[25:])
        srv.restart()
        assert s.append(evs) == [False] * 25 + [True] * 15  # the ids survived the crash
        batch = s.pending("learner", limit=1000)
        assert [e.event_id for _, e in batch] == [e.event_id for e in evs]  # the delivered ones come back first
        s.apply("learner", batch[:30])
        srv.kill()  # after an apply: it is durable
        srv.restart()
        assert s.apply("learner", batch[:30] + delivered) == set()  # never twice
        rest = s.pending("learner")
        assert [e.event_id for _, e in rest] == [e.event_id for e in evs[30:]]
        s.apply("learner", rest)
        st = s.states({e.user for e in evs})
        assert sum(x.event_count for x in st.values()) == 40 and sum(len(x.history) for x in st.values()) == 40
        assert s.counts()["events"] == 40 and s.counts()["duplicates"] == 25
        assert s.pending("learner") == [] and s.lag("learner") == (0, 0.0)
        s.close()


def test_partitions_split_the_events_between_learners(redis_url):
    writer = RedisStore(redis_url, partitions=3)
    learners = [RedisStore(redis_url, partitions=3, owned_partitions=[0]),
                RedisStore(redis_url, partitions=3, owned_partitions=[1, 2])]
    evs = events(60, users=12)
    writer.append(evs)
    parts = {writer.partition(e.user) for e in evs}
    assert len(parts) > 1  # the users do spread over the partitions
    seen = []
    for learner in learners:
        assert learner.lag("learner")[0] == sum(writer.partition(e.user) in learner.owned for e in evs)
        batch = learner.pending("learner")
        assert all(writer.partition(e.user) in learner.owned for _, e in batch)
        learner.apply("learner", batch)
        seen += [e.event_id for _, e in batch]
    assert sorted(seen) == sorted(e.event_id for e in evs)
    assert writer.lag("learner") == (0, 0.0)
    st = writer.states({e.user for e in evs})
    assert len(st) == 12 and all(x.event_count == 5 for x in st.values())
    # a user's events stay in order in its partition
    assert all(x.times == sorted(x.times) for x in st.values())


def test_prefixes_keep_deployments_apart(redis_url):
    a, b = RedisStore(redis_url, prefix="blue"), RedisStore(redis_url, prefix="green")
    a.append(events(3))
    assert b.append(events(3)) == [True] * 3  # the same ids, another namespace
    a.apply("learner", a.pending("learner"))
    assert b.users() == [] and len(a.users()) == 3 and b.lag("learner")[0] == 3
