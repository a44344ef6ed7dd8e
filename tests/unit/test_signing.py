"""The signature scheme against the test vector published in docs/signing.md."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.domain.envelope import Envelope
from gateway.security.keys import public_bytes
from gateway.security.signing import EnvelopeSigner, signature_input, verify_signature

DOC = (Path(__file__).parents[2] / "docs" / "signing.md").read_text()


def _hex_after(label: str) -> bytes:
    """The hex value the doc gives after `label` (inline or in the following code block)."""
    start = DOC.index(label)
    match = re.search(r"`([0-9a-f]{40,})`|```\s*\n([0-9a-f\s]+?)\s*```", DOC[start:])
    assert match is not None, label
    return bytes.fromhex(re.sub(r"\s", "", match.group(1) or match.group(2)))


SEED = _hex_after("private key (RFC 8032 seed, hex)")
PUBLIC = _hex_after("its public key (hex)")
PAYLOAD = _hex_after("payload (113 bytes, hex)")
SIGNATURE = _hex_after("signature (hex):")
SHA256 = _hex_after("SHA-256 of the payload")


def test_vector_from_the_doc_reproduces() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    assert public_bytes(key) == PUBLIC
    envelope = EnvelopeSigner("650000", "650000-k1", key).sign("gongji.v1.TransferInstruction", PAYLOAD)
    assert envelope.signature == SIGNATURE
    assert verify_signature(envelope, PUBLIC)
    assert hashlib.sha256(PAYLOAD).digest() == SHA256


def test_signature_input_layout() -> None:
    assert signature_input("T", "650000", "k", b"\x01\x02") == b"gongji.v1\x00T\x00650000\x00k\x00\x01\x02"


def test_any_changed_byte_or_bound_field_fails_verification() -> None:
    good = Envelope(PAYLOAD, "gongji.v1.TransferInstruction", "650000", "650000-k1", "ed25519", SIGNATURE)
    assert verify_signature(good, PUBLIC)
    for i in range(len(PAYLOAD)):
        flipped = bytearray(PAYLOAD)
        flipped[i] ^= 0x01
        assert not verify_signature(Envelope(bytes(flipped), *tuple(good.__getattribute__(f) for f in (
            "payload_type", "signer", "key_id", "alg", "signature"))), PUBLIC)
    for field, value in (("payload_type", "gongji.v1.TransferQuery"), ("signer", "620000"), ("key_id", "650000-k2"),
                         ("alg", "rsa")):
        values = {f: getattr(good, f) for f in Envelope.__slots__}
        values[field] = value
        assert not verify_signature(Envelope(**values), PUBLIC), field
    bad_signature = bytearray(SIGNATURE)
    bad_signature[0] ^= 0x80
    values = {f: getattr(good, f) for f in Envelope.__slots__}
    values["signature"] = bytes(bad_signature)
    assert not verify_signature(Envelope(**values), PUBLIC)
