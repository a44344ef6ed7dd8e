"""scripts.signed_request signs as docs/signing.md says: its test vector; requests the gateway's verifier accepts."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import Parse

from gateway.domain.envelope import Envelope
from gateway.security.keys import public_bytes
from gateway.security.signing import verify_signature
from protos.gongji.v1 import relations_pb2, transfers_pb2
from scripts.signed_request import main, sign, signature_input

SIGNING_DOC = (Path(__file__).parents[2] / "docs" / "signing.md").read_text(encoding="utf-8")


def hex_after(label: str) -> bytes:
    """The hex the page gives after `label`, inline or in the code block that follows."""
    match = re.search(r"`([0-9a-f]{40,})`|```\s*\n([0-9a-f\s]+?)\s*(?:```|\+)", SIGNING_DOC[SIGNING_DOC.index(label):])
    assert match is not None, label
    return bytes.fromhex(re.sub(r"\s", "", match.group(1) or match.group(2)))


def test_the_published_vector_comes_out() -> None:
    key = Ed25519PrivateKey.from_private_bytes(hex_after("private key (RFC 8032 seed, hex)"))
    payload = hex_after("payload (113 bytes, hex)")
    assert signature_input("gongji.v1.TransferInstruction", "650000", "650000-k1", payload) == (
        hex_after("signature input (hex)") + payload)
    envelope = sign(transfers_pb2.TransferInstruction.FromString(payload), "650000", "650000-k1", key)
    assert envelope.payload == payload and envelope.payload_type == "gongji.v1.TransferInstruction"
    assert envelope.signature == hex_after("signature (hex):")


def envelope_of(message: relations_pb2.VerifyRelationRequest | transfers_pb2.GetTransferRequest) -> Envelope:
    query = message.query
    return Envelope(query.payload, query.payload_type, query.signer, query.key_id, query.alg, query.signature)


def test_a_relation_query_the_gateway_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "610000-k1.key"
    key_file.write_text(key.private_bytes_raw().hex() + "\n")
    before = time.time()
    assert main(["verify-relation", "--province", "610000", "--key", str(key_file),
                 "--giver", "610102199204180027", "--giver-area", "610100", "--receiver", "650502199001011230",
                 "--receiver-area", "650500", "--receiver-province", "650000", "--relation", "71"]) == 0
    request = Parse(capsys.readouterr().out, relations_pb2.VerifyRelationRequest())
    envelope = envelope_of(request)
    assert (envelope.signer, envelope.key_id, envelope.alg) == ("610000", "610000-k1", "ed25519")
    assert verify_signature(envelope, public_bytes(key))
    query = relations_pb2.RelationQuery.FromString(envelope.payload)
    assert (query.header.sender, query.header.receiver, query.relation_code) == ("610000", "650000", "71")
    assert (query.giver.id_number, query.receiver.pooling_area) == ("610102199204180027", "650500")
    assert before - 1 <= query.header.created_at.ToSeconds() <= time.time() + 1
    assert query.header.message_id.startswith("610000-")


def test_a_transfer_query_under_a_named_key_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "platform.key"
    key_file.write_text(key.private_bytes_raw().hex())
    main(["get-transfer", "--province", "610000", "--key", str(key_file), "--key-id", "610000-k2",
          "--message-id", "q-1", "--transfer-id", "650000-demo-0001"])
    envelope = envelope_of(Parse(capsys.readouterr().out, transfers_pb2.GetTransferRequest()))
    assert envelope.key_id == "610000-k2" and verify_signature(envelope, public_bytes(key))
    query = transfers_pb2.TransferQuery.FromString(envelope.payload)
    assert (query.header.message_id, query.header.receiver, query.transfer_id) == ("q-1", "gateway",
                                                                                    "650000-demo-0001")


def test_a_key_file_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "610000-k1.key").write_text("not hex")
    with pytest.raises(SystemExit) as refused:
        main(["get-transfer", "--province", "610000", "--key", str(tmp_path / "610000-k1.key"), "--transfer-id", "x"])
    assert refused.value.code == 2
