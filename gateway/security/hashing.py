"""Keyed hashes of ID numbers (HMAC-SHA256): how people are indexed, never by clear ID (D19)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from gateway.domain.identity import normalise_id_number
from gateway.security.files import create_once


class HmacPersonHasher:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the ID hash secret must be at least 32 bytes")
        self._secret = secret

    def ref(self, id_number: str) -> bytes:
        return hmac.new(self._secret, normalise_id_number(id_number).encode("ascii"), hashlib.sha256).digest()


def load_or_create_secret(path: Path) -> bytes:
    """Read a hex secret; create a random one (mode 0600) if the file does not exist yet."""
    create_once(path, secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())
