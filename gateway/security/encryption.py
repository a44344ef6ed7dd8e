"""Encryption at rest of stored payloads that hold personal data (ID numbers, names): AES-256-GCM.

A sealed value names the key that sealed it, so keys rotate: a new key seals from then on, and the
old ones stay in the key file to open what they sealed. The associated data binds each value to its
place (table, column, row id), so a ciphertext copied onto another row does not open.

Sealed value: b"g1" | key-id length (1 byte) | key id (ASCII) | 12-byte nonce | ciphertext+tag.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.security.files import create_once

MAGIC = b"g1"
NONCE_BYTES = 12
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


class SealedValueError(ValueError):
    """A stored value does not open: wrong place, unknown key, or altered bytes."""


class FieldCipher:
    """Seals with the current key; opens with whichever known key sealed the value."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError("the current key must be one of the keys")
        for key_id, key in keys.items():
            if not KEY_ID_PATTERN.fullmatch(key_id) or len(key) != 32:
                raise ValueError(f"key {key_id!r}: ids are 1-64 of [A-Za-z0-9._-], keys 32 bytes")
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current = current

    @classmethod
    def generate(cls, key_id: str = "test") -> FieldCipher:
        return cls({key_id: AESGCM.generate_key(bit_length=256)}, key_id)

    def seal(self, plaintext: bytes, place: bytes) -> bytes:
        key_id = self.current.encode("ascii")
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + bytes([len(key_id)]) + key_id + nonce + self._aead[self.current].encrypt(nonce, plaintext, place)

    def open(self, sealed: bytes, place: bytes) -> bytes:
        if not sealed.startswith(MAGIC) or len(sealed) < 3:
            raise SealedValueError("not a sealed value")
        length = sealed[2]
        key_id = sealed[3:3 + length].decode("ascii", "replace")
        nonce = sealed[3 + length:3 + length + NONCE_BYTES]
        aead = self._aead.get(key_id)
        if aead is None:
            raise SealedValueError(f"sealed with key {key_id!r}, which is not in the key file")
        try:
            return aead.decrypt(nonce, sealed[3 + length + NONCE_BYTES:], place)
        except InvalidTag:
            raise SealedValueError("a sealed value does not open: altered, or moved from its row") from None

    @staticmethod
    def key_of(sealed: bytes) -> str:
        """The id of the key that sealed a value (for rotation reports)."""
        return sealed[3:3 + sealed[2]].decode("ascii", "replace") if sealed.startswith(MAGIC) else ""


def load_or_create_keys(path: Path) -> FieldCipher:
    """Keys from a file of `key_id hex-key` lines, the first being the current one.

    Created with one random key (mode 0600) if missing. To rotate, put a new line first: values sealed
    before stay readable with the old key, new ones are sealed with the new one.
    """
    create_once(path, f"dk-{datetime.now(UTC):%Y%m%d} {secrets.token_hex(32)}\n")
    keys: dict[str, bytes] = {}
    current = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key_id, hex_key = line.split()
            keys[key_id] = bytes.fromhex(hex_key)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected `key_id hex-key`") from None
        current = current or key_id
    if not keys:
        raise ValueError(f"{path} holds no key")
    return FieldCipher(keys, current)
