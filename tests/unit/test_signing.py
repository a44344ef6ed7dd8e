"""The signature scheme against the test vector published in docs/signing.md."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
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
# The page gives the signature input as its fixed prefix "+ the payload bytes above".
_INPUT = re.search(r"signature input \(hex\):\s*```\s*\n([0-9a-f\s]+?)\s*\+ the payload bytes above", DOC)
assert _INPUT is not None
SIGNATURE_INPUT_PREFIX = bytes.fromhex(re.sub(r"\s", "", _INPUT.group(1)))


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


def test_vector_payload_is_the_instruction_the_doc_describes() -> None:
    from protos.gongji.v1 import transfers_pb2

    instruction = transfers_pb2.TransferInstruction.FromString(PAYLOAD)
    assert len(PAYLOAD) == 113
    assert (instruction.header.message_id, instruction.header.sender, instruction.header.receiver) == (
        "650000-demo-0001", "650000", "620000")
    assert instruction.header.created_at.seconds == 1795000000
    assert (instruction.giver.id_number, instruction.giver.pooling_area) == ("650502199001011230", "650500")
    assert (instruction.receiver.id_number, instruction.receiver.pooling_area) == ("620102196505120026", "620100")
    assert (instruction.amount_fen, instruction.currency) == (50000, "CNY")
    assert instruction.SerializeToString() == PAYLOAD


def test_vector_signature_input_in_the_doc_is_what_is_signed() -> None:
    signed = signature_input("gongji.v1.TransferInstruction", "650000", "650000-k1", PAYLOAD)
    assert signed == SIGNATURE_INPUT_PREFIX + PAYLOAD


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed: the cross-language check needs it")
def test_vector_reproduces_in_another_language_from_the_page_alone() -> None:
    """Node's own Ed25519 (OpenSSL under V8, none of our code), given only the hex on the page."""
    script = """
const crypto = require('crypto');
const [seed, pub, prefix, payload] = process.argv.slice(1).map((h) => Buffer.from(h, 'hex'));
const b64 = (b) => b.toString('base64url');
const key = crypto.createPrivateKey({key: {kty: 'OKP', crv: 'Ed25519', d: b64(seed), x: b64(pub)}, format: 'jwk'});
const derived = crypto.createPublicKey(key).export({format: 'jwk'}).x;
if (derived !== b64(pub)) { throw new Error('public key does not match the seed'); }
process.stdout.write(crypto.sign(null, Buffer.concat([prefix, payload]), key).toString('hex'));
"""
    assert NODE is not None
    out = subprocess.run([NODE, "-e", script, SEED.hex(), PUBLIC.hex(), SIGNATURE_INPUT_PREFIX.hex(), PAYLOAD.hex()],
                         capture_output=True, text=True, timeout=30, check=True)
    assert bytes.fromhex(out.stdout) == SIGNATURE


def test_strings_that_cannot_be_signed_fail_verification_without_raising() -> None:
    """Fields come from the wire: a non-ASCII payload_type, or one with a NUL (which would make the
    signature input ambiguous), is a failed verification, not an exception."""
    good = Envelope(PAYLOAD, "gongji.v1.TransferInstruction", "650000", "650000-k1", "ed25519", SIGNATURE)
    for field, value in (("payload_type", "\x80"), ("payload_type", "gongji.v1.TransferInstruction\x00"),
                         ("payload_type", "转账"), ("key_id", "650000-k1\x00"), ("signer", "６５００００")):
        values = {f: getattr(good, f) for f in Envelope.__slots__}
        values[field] = value
        assert verify_signature(Envelope(**values), PUBLIC) is False, (field, value)
