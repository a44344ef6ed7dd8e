"""Ed25519 key files: raw 32-byte keys stored as hex text, private keys readable by the owner only."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.security.files import create_once, replace_whole


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))


# RFC 8410: an Ed25519 SubjectPublicKeyInfo in DER is this fixed prefix and the raw 32-byte key.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
PEM_PUBLIC_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", re.DOTALL)


def load_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key of a file: raw bytes, hex text (the `.pub` files the gateway and the
    stub provinces write), or a PEM / DER SubjectPublicKeyInfo. The manifest and the CLI read keys with it.

    Raises ValueError for anything else, and for a `.key` file (a private key given by mistake).
    """
    if path.suffix == ".key":
        raise ValueError(f"{path} looks like a private key file: give the public key (the .pub file beside it)")
    data = path.read_bytes()
    pem = PEM_PUBLIC_KEY.search(data)
    if pem is None and len(data) == 32:
        return data
    if pem is None:
        try:
            raw = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raw = b""
        if len(raw) == 32:
            return raw
    try:
        der = base64.b64decode(b"".join(pem.group(1).split()), validate=True) if pem else data
    except binascii.Error:
        der = b""
    if len(der) == len(ED25519_SPKI_PREFIX) + 32 and der.startswith(ED25519_SPKI_PREFIX):
        return der[len(ED25519_SPKI_PREFIX):]
    raise ValueError(f"{path}: not an Ed25519 public key (raw 32 bytes, hex, or a PEM/DER SubjectPublicKeyInfo)")


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
