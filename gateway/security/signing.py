"""Ed25519 signing and verification of envelopes, exactly as docs/signing.md specifies."""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.domain.envelope import ALG_ED25519, Envelope

DOMAIN_TAG = b"gongji.v1"


def signature_input(payload_type: str, signer: str, key_id: str, payload: bytes) -> bytes:
    """The bytes that are signed: tag, payload_type, signer, key_id, each NUL-terminated, then payload."""
    parts = (DOMAIN_TAG, payload_type.encode("ascii"), signer.encode("ascii"), key_id.encode("ascii"))
    return b"\x00".join(parts) + b"\x00" + payload


class EnvelopeSigner:
    """Signs payloads as one signer with one key."""

    def __init__(self, signer: str, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self.signer = signer
        self.key_id = key_id
        self._private_key = private_key

    def sign(self, payload_type: str, payload: bytes) -> Envelope:
        message = signature_input(payload_type, self.signer, self.key_id, payload)
        return Envelope(
            payload=payload,
            payload_type=payload_type,
            signer=self.signer,
            key_id=self.key_id,
            alg=ALG_ED25519,
            signature=self._private_key.sign(message),
        )


@functools.lru_cache(maxsize=1024)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(envelope: Envelope, public_key: bytes) -> bool:
    """True when `envelope.signature` is a valid Ed25519 signature over the envelope's exact bytes."""
    if envelope.alg != ALG_ED25519 or len(public_key) != 32 or len(envelope.signature) != 64:
        return False
    # The signed strings are ASCII without NUL (docs/signing.md); anything else was never signed by anyone.
    if not all(text.isascii() and "\x00" not in text
               for text in (envelope.payload_type, envelope.signer, envelope.key_id)):
        return False
    message = signature_input(envelope.payload_type, envelope.signer, envelope.key_id, envelope.payload)
    try:
        _public_key(public_key).verify(envelope.signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
