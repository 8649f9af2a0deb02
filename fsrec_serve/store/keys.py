"""Keyed hashes of user ids: the store never sees a raw user id.

``UserKeyer.key(user_id)`` = the first 32 hex characters of HMAC-SHA256(secret, utf-8 user id).
The secret lives in a key file (``settings.user_key_path()``: $FSREC_USER_KEY_FILE, else
<state_dir>/user.key), created with mode 0600 on first use. Every process that writes or reads
state for the same users must use the same file (a new secret = every user starts afresh).

User ids are personal data: no error message here contains one (only its length).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from ..contract import user_id_text
from ..errors import ConfigError, InvalidEventError
from ..settings import user_key_path

KEY_HEX_CHARS = 32  # hex characters of the HMAC kept as the user key (128 bits)
SECRET_BYTES = 32  # random bytes of a new secret (written as 64 hex characters)


def check_user_id(user_id: str | bytes) -> str:
    """``user_id`` as text (the contract's rule, ``contract.user_id_text``): InvalidEventError
    naming the problem otherwise; the message never contains the id."""
    text, problem = user_id_text(user_id)
    if problem:
        raise InvalidEventError(problem)
    return text


def _read_secret(path: Path) -> bytes:
    """The secret in ``path``; refuses a file other users can read and an empty one."""
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise ConfigError(f"user key file {path}: {why}; make it readable by this user or set "
                          "FSREC_USER_KEY_FILE to another file") from None
    if mode & 0o077:
        raise ConfigError(f"user key file {path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`")
    if not text:
        raise ConfigError(f"user key file {path} is empty: restore the secret into it, or delete it to generate a "
                          "new one (every user's state then starts afresh)")
    return text.encode("utf-8")


def _create_secret(path: Path) -> bool:
    """Write a new secret to ``path`` atomically with mode 0600; False if the file already exists
    (another process made it first: read theirs)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise ConfigError(f"user key file {path}: cannot create it ({e.strerror or e}); set FSREC_USER_KEY_FILE "
                          "to a writable path") from None
    try:
        os.write(fd, (secrets.token_hex(SECRET_BYTES) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def load_or_create_secret(path: str | Path) -> bytes:
    """The secret in ``path``, created (0600) if there is no file yet."""
    p = Path(path).expanduser()
    if not p.exists():
        _create_secret(p)
    # a file another process created a moment ago may still be empty: give it a moment
    deadline = time.monotonic() + 2.0
    while True:
        try:
            st = p.stat()
        except OSError:
            break  # _read_secret names the problem
        fresh_and_empty = st.st_size == 0 and not st.st_mode & 0o077 and time.time() - st.st_mtime < 5
        if not fresh_and_empty or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return _read_secret(p)


class UserKeyer:
    """Keyed hash of user ids (HMAC-SHA256, hex, first KEY_HEX_CHARS characters)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else user_key_path()  # the key file
        self._secret = load_or_create_secret(self.path)

    @classmethod
    def from_secret(cls, secret: bytes) -> UserKeyer:
        """A keyer with an explicit secret (tests, tools): no key file."""
        if not isinstance(secret, (bytes, bytearray)) or not secret:
            raise ConfigError("UserKeyer.from_secret needs a non-empty bytes secret")
        keyer = cls.__new__(cls)
        keyer.path = None
        keyer._secret = bytes(secret)
        return keyer

    def key(self, user_id: str | bytes) -> str:
        """The user key of ``user_id`` (checked with check_user_id)."""
        text = check_user_id(user_id)
        return hmac.new(self._secret, text.encode("utf-8"), hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]

    def __repr__(self) -> str:  # never show the secret
        return f"UserKeyer(path={str(self.path)!r})"
