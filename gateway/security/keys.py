"""Ed25519 key files: raw 32-byte keys stored as hex text, private keys readable by the owner only."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.security.files import create_once, replace_whole


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
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        create_once(private_path, raw.hex() + "\n")
    key = load_private_key(private_path)
    replace_whole(public_path, public_bytes(key).hex() + "\n")
    return key
