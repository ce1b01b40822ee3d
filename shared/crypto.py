"""Secrets at rest: keys derived from NEWSROOM_SECRET_KEY, partner secrets sealed with Fernet.

Each use gets its own key, derived with HKDF-SHA256 from the one secret key and a purpose
("partner-secret", "desk-session" …), so no two uses ever share a key. When the operator
sets no key, one is generated into the data directory on first use (mode 0600); every
process of one installation must see the same key, so at scale it is set explicitly.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.config import get_settings
from shared.errors import PermanentError

KEY_FILE = "secret.key"
PARTNER_SECRET = "partner-secret"  # noqa: S105  # a key purpose, not a secret
# A sealed value says how it was sealed, so another scheme can follow without guessing.
SEALED_PREFIX = "fernet:"

_lock = threading.Lock()


def _key_file(data_dir: Path) -> bytes:
    """The generated key under the data dir, created once, readable by its owner only."""
    path = data_dir / KEY_FILE
    with _lock:
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            # Written whole under another name, then linked into place: a process starting
            # at the same moment sees either no file or the complete key, never half of one.
            draft = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(descriptor, secrets.token_urlsafe(48).encode())
            finally:
                os.close(descriptor)
            try:
                os.link(draft, path)
            except FileExistsError:
                pass  # another process was first; its key wins
            finally:
                draft.unlink()
        return path.read_bytes().strip()


def secret_key() -> bytes:
    """NEWSROOM_SECRET_KEY, or the key generated into the data dir."""
    settings = get_settings()
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    return _key_file(settings.data_dir.resolve())


@lru_cache(maxsize=16)
def _derive(key: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"newsroom:{purpose}".encode()).derive(
        key
    )


def derive_key(purpose: str) -> bytes:
    """32 bytes for one purpose, derived from the secret key."""
    return _derive(secret_key(), purpose)


@lru_cache(maxsize=16)
def _fernet(key: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(key))


def seal(value: str, *, purpose: str = PARTNER_SECRET) -> str:
    """Encrypt and authenticate a secret for storage."""
    return SEALED_PREFIX + _fernet(derive_key(purpose)).encrypt(value.encode()).decode()


def unseal(sealed: str, *, purpose: str = PARTNER_SECRET) -> str:
    """The secret a ``seal`` produced; PermanentError when it was sealed with another key."""
    if not sealed.startswith(SEALED_PREFIX):
        raise PermanentError("a stored secret is not sealed (run `newsroom db upgrade`)")
    try:
        return _fernet(derive_key(purpose)).decrypt(sealed.removeprefix(SEALED_PREFIX).encode()).decode()
    except InvalidToken as error:
        raise PermanentError(
            "a stored secret cannot be decrypted: NEWSROOM_SECRET_KEY is not the key it was sealed with"
        ) from error
