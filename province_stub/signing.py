"""Ed25519 envelope signing, verification and key files, implemented from the published scheme."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos.gongji.v1 import common_pb2

DOMAIN_TAG = b"gongji.v1"
ALG_ED25519 = "ed25519"
GATEWAY_SIGNER = "gateway"
# The gateway publishes its current key under this fixed name as well as under its key id.
GATEWAY_CURRENT_KEY_FILE = "gateway.pub"
RECHECK_SECONDS = 1.0

# Key ids become file names, so only the header's id alphabet is allowed (no path separators).
_KEY_ID = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}$")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signature_input(payload_type: str, signer: str, key_id: str, payload: bytes) -> bytes:
    """Tag, payload_type, signer and key_id, each followed by one zero byte, then the payload."""
    return b"".join(
        (
            DOMAIN_TAG,
            b"\0",
            payload_type.encode("ascii"),
            b"\0",
            signer.encode("ascii"),
            b"\0",
            key_id.encode("ascii"),
            b"\0",
            payload,
        )
    )


def sign_envelope(
    private_key: Ed25519PrivateKey, signer: str, key_id: str, payload_type: str, payload: bytes
) -> common_pb2.SignedEnvelope:
    """Wrap already-serialised payload bytes; they are never re-serialised after this."""
    signature = private_key.sign(signature_input(payload_type, signer, key_id, payload))
    return common_pb2.SignedEnvelope(
        payload=payload,
        payload_type=payload_type,
        signer=signer,
        key_id=key_id,
        alg=ALG_ED25519,
        signature=signature,
    )


def verify_envelope(envelope: common_pb2.SignedEnvelope, public_key: Ed25519PublicKey) -> bool:
    """True when the envelope's signature is valid over its exact payload bytes."""
    if envelope.alg != ALG_ED25519 or len(envelope.signature) != 64:
        return False
    try:
        message = signature_input(envelope.payload_type, envelope.signer, envelope.key_id, envelope.payload)
        public_key.verify(envelope.signature, message)
    except (InvalidSignature, UnicodeEncodeError):
        return False
    return True


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))


def load_public_key(path: Path) -> Ed25519PublicKey:
    raw = bytes.fromhex(path.read_text().strip())
    if len(raw) != 32:
        raise ValueError(f"{path.name}: an Ed25519 public key is 32 bytes, found {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Create the file readable by its owner only (fails if it already exists)."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw.hex() + "\n")


def write_public_key(path: Path, key: Ed25519PrivateKey | Ed25519PublicKey) -> None:
    # Write then rename, so a reader polling for the file never sees half a key.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(public_key_bytes(key).hex() + "\n")
    tmp.replace(path)


def ensure_key_pair(keys_dir: Path, key_id: str) -> Ed25519PrivateKey:
    """Load `<key_id>.key`, generating it on first start, and (re)publish `<key_id>.pub`."""
    if not _KEY_ID.match(key_id):
        raise ValueError(f"invalid key id {key_id!r}")
    keys_dir.mkdir(parents=True, exist_ok=True)
    private_path = keys_dir / f"{key_id}.key"
    if not private_path.exists():
        # Another process may create it first; then we use theirs.
        with contextlib.suppress(FileExistsError):
            write_private_key(private_path, Ed25519PrivateKey.generate())
    key = load_private_key(private_path)
    write_public_key(keys_dir / f"{key_id}.pub", key)
    return key


@dataclass
class _CachedKey:
    mtime_ns: int
    key: Ed25519PublicKey
    checked_at: float = 0.0


class PublicKeyStore:
    """Other signers' public keys from `<key_id>.pub` files, read on first need.

    A missing file is not remembered, so a key published after we started (the gateway may start
    after the stub) is found on the next call; a changed file is re-read.

    With `gateway_current_file` (the default, for the bench and crash-test drivers that share the
    gateway's keys folder) a gateway key id with no file of its own is looked up in `gateway.pub`.
    The stub turns it off: it asks the gateway for the gateway's keys (province_stub.gateway_keys).
    """

    def __init__(self, keys_dir: Path, *, gateway_current_file: bool = True) -> None:
        self._dir = keys_dir
        self._gateway_current_file = gateway_current_file
        self._cache: dict[Path, _CachedKey] = {}

    def get(self, signer: str, key_id: str) -> Ed25519PublicKey | None:
        if not _KEY_ID.match(key_id):
            return None
        candidates = [self._dir / f"{key_id}.pub"]
        if signer == GATEWAY_SIGNER and self._gateway_current_file:
            candidates.append(self._dir / GATEWAY_CURRENT_KEY_FILE)
        for path in candidates:
            key = self._read(path)
            if key is not None:
                return key
        return None

    def _read(self, path: Path) -> Ed25519PublicKey | None:
        cached = self._cache.get(path)
        now = time.monotonic()
        # A stat per message was a visible share of the stub's CPU under load; once a second is enough.
        if cached is not None and now - cached.checked_at < RECHECK_SECONDS:
            return cached.key
        try:
            mtime_ns = path.stat().st_mtime_ns
        except OSError:
            self._cache.pop(path, None)
            return None
        if cached is not None and cached.mtime_ns == mtime_ns:
            cached.checked_at = now
            return cached.key
        try:
            key = load_public_key(path)
        except (OSError, ValueError):
            return None  # being written or damaged: try again next time
        self._cache[path] = _CachedKey(mtime_ns, key, now)
        return key


def verify_with_store(
    store: PublicKeyStore, envelope: common_pb2.SignedEnvelope, *, signer: str, payload_type: str
) -> str:
    """Check an envelope claimed to come from `signer`; answer "" if valid, else the failure.

    The failure is "UNKNOWN_KEY" when no key file is readable, "BAD_SIGNATURE" otherwise.
    """
    if envelope.signer != signer or envelope.payload_type != payload_type:
        return "BAD_SIGNATURE"
    key = store.get(signer, envelope.key_id)
    if key is None:
        return "UNKNOWN_KEY"
    return "" if verify_envelope(envelope, key) else "BAD_SIGNATURE"
