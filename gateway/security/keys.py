"""Ed25519 key files: raw 32-byte keys stored as hex text, private keys readable by the owner only."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))


def load_public_key(path: Path) -> bytes:
    raw = bytes.fromhex(path.read_text().strip())
    if len(raw) != 32:
        raise ValueError(f"{path}: an Ed25519 public key is 32 bytes, found {len(raw)}")
    return raw


def ensure_key_pair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Load the key pair, creating it first if the private key file does not exist."""
    if not private_path.exists():
        private_path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(raw.hex() + "\n")
    key = load_private_key(private_path)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_text(public_bytes(key).hex() + "\n")
    return key
