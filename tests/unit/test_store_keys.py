"""Keyed hashes of user ids: the key file, the HMAC, and user-id checks that never echo the id."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading

import pytest

from fsrec_serve.errors import ConfigError, InvalidEventError
from fsrec_serve.store import MAX_USER_ID_BYTES, UserKeyer, check_user_id


def test_the_key_is_a_truncated_hmac_sha256():
    secret = b"s3cret"
    keyer = UserKeyer.from_secret(secret)
    want = hmac.new(secret, b"alice", hashlib.sha256).hexdigest()[:32]
    assert keyer.key("alice") == keyer.key(b"alice") == want
    assert keyer.key("alicé") == hmac.new(secret, "alicé".encode(), hashlib.sha256).hexdigest()[:32]
    assert UserKeyer.from_secret(b"other").key("alice") != want
    assert "s3cret" not in repr(keyer)


def test_the_key_file_is_created_0600_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "user.key"
    monkeypatch.setenv("FSREC_USER_KEY_FILE", str(path))
    a = UserKeyer()  # settings.user_key_path()
    assert a.path == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert a.key("alice") == hmac.new(secret.encode(), b"alice", hashlib.sha256).hexdigest()[:32]
    assert UserKeyer(path).key("alice") == a.key("alice")  # another process reads the same secret


def test_concurrent_first_use_agrees_on_one_secret(tmp_path):
    path = tmp_path / "user.key"
    barrier, keys = threading.Barrier(8), []

    def work():
        barrier.wait()
        keys.append(UserKeyer(path).key("bob"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_a_key_file_others_can_read_or_an_empty_one_is_refused(tmp_path):
    path = tmp_path / "user.key"
    path.write_text("ab" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        UserKeyer(path)
    os.chmod(path, 0o600)
    UserKeyer(path)
    path.write_text("  \n")
    os.utime(path, (1, 1))  # an old empty file, not one being written right now
    with pytest.raises(ConfigError, match="is empty"):
        UserKeyer(path)


SECRET_ID = "jane.doe@example.com"


@pytest.mark.parametrize("bad, problem", [
    ("", "empty"),
    ("   \t", "empty"),
    (SECRET_ID * 500, f"at most {MAX_USER_ID_BYTES}"),  # 10 kB
    (b"\xff\xfe" + SECRET_ID.encode(), "not UTF-8"),
    (SECRET_ID + "\ud800", "not UTF-8"),
    (12.5, "must be text"),  # an int is str()-ed (the client sends ints), a float is refused
])
def test_bad_user_ids_are_refused_without_echoing_them(bad, problem):
    keyer = UserKeyer.from_secret(b"k")
    with pytest.raises(InvalidEventError, match=problem) as ei:
        keyer.key(bad)
    msg = str(ei.value)
    assert SECRET_ID not in msg and "jane" not in msg
    assert "send" in msg or "convert" in msg  # the fix


def test_the_length_limit_is_in_utf8_bytes():
    assert check_user_id("é" * (MAX_USER_ID_BYTES // 2)) == "é" * (MAX_USER_ID_BYTES // 2)
    with pytest.raises(InvalidEventError, match=f"{MAX_USER_ID_BYTES + 2} bytes"):
        check_user_id("é" * (MAX_USER_ID_BYTES // 2 + 1))
    assert check_user_id(b"x" * MAX_USER_ID_BYTES) == "x" * MAX_USER_ID_BYTES
