"""`python -m scripts.signed_request`: a province's signed request as the JSON body grpcurl sends (`-d @`)."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from protos.gongji.v1 import common_pb2, relations_pb2, transfers_pb2

DOMAIN_TAG = "gongji.v1"


def signature_input(payload_type: str, signer: str, key_id: str, payload: bytes) -> bytes:
    """docs/signing.md: the tag, payload_type, signer and key_id, each followed by one zero byte, then the payload."""
    return b"".join(text.encode("ascii") + b"\0" for text in (DOMAIN_TAG, payload_type, signer, key_id)) + payload


def sign(message: Message, signer: str, key_id: str, key: Ed25519PrivateKey) -> common_pb2.SignedEnvelope:
    """Serialise the business message once and sign exactly those bytes: they are never serialised again."""
    payload = message.SerializeToString()
    payload_type = message.DESCRIPTOR.full_name
    return common_pb2.SignedEnvelope(payload=payload, payload_type=payload_type, signer=signer, key_id=key_id,
                                     alg="ed25519",
                                     signature=key.sign(signature_input(payload_type, signer, key_id, payload)))


def load_key(path: Path) -> Ed25519PrivateKey:
    """A private key file as the stub provinces and the gateway write it: the 32-byte Ed25519 seed in hex."""
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text(encoding="ascii").strip()))


def header(sender: str, receiver: str, message_id: str | None) -> common_pb2.Header:
    """A header made now: the gateway refuses one more than 120 s from its clock (STALE_MESSAGE)."""
    made = common_pb2.Header(message_id=message_id or f"{sender}-{uuid.uuid4().hex[:16]}", sender=sender,
                             receiver=receiver)
    made.created_at.FromNanoseconds(time.time_ns())
    return made


def verify_relation(args: argparse.Namespace, key: Ed25519PrivateKey) -> Message:
    query = relations_pb2.RelationQuery(
        header=header(args.province, args.receiver_province, args.message_id),
        giver=common_pb2.PersonRef(id_number=args.giver, pooling_area=args.giver_area),
        receiver=common_pb2.PersonRef(id_number=args.receiver, pooling_area=args.receiver_area),
        relation_code=args.relation)
    return relations_pb2.VerifyRelationRequest(query=sign(query, args.province, args.key_id, key))


def get_transfer(args: argparse.Namespace, key: Ed25519PrivateKey) -> Message:
    query = transfers_pb2.TransferQuery(header=header(args.province, "gateway", args.message_id),
                                        transfer_id=args.transfer_id)
    return transfers_pb2.GetTransferRequest(query=sign(query, args.province, args.key_id, key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.signed_request",
        description="Build a business message, sign it as a province (docs/signing.md) and print the request as "
                    "JSON for `grpcurl -d @`. Send it within 120 s: its header.created_at is now.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--province", required=True, help="the signing province (header.sender), e.g. 610000")
    common.add_argument("--key", type=Path, required=True,
                        help="its private signing key file (hex, as the stub writes var/keys/<key id>.key)")
    common.add_argument("--key-id", default=None, help="the key's registered id (default: the key file's name "
                                                       "without .key, e.g. 610000-k1)")
    common.add_argument("--message-id", default=None, help="header.message_id (default: a new one)")
    commands = parser.add_subparsers(dest="command", required=True)
    relation = commands.add_parser("verify-relation", parents=[common],
                                   help="a RelationQuery for gongji.v1.Relations/VerifyRelation")
    relation.add_argument("--giver", required=True, help="the giver's ID number")
    relation.add_argument("--giver-area", required=True, help="the giver's pooling area, e.g. 610100")
    relation.add_argument("--receiver", required=True, help="the receiver's ID number")
    relation.add_argument("--receiver-area", required=True, help="the receiver's pooling area, e.g. 650500")
    relation.add_argument("--receiver-province", required=True, help="the receiver's province (header.receiver)")
    relation.add_argument("--relation", required=True, help="the receiver's relation to the giver (GB/T 4761, "
                                                            "e.g. 71 elder brother)")
    relation.set_defaults(build=verify_relation)
    transfer = commands.add_parser("get-transfer", parents=[common],
                                   help="a TransferQuery for gongji.v1.Transfers/GetTransfer")
    transfer.add_argument("--transfer-id", required=True, help="the transfer to read")
    transfer.set_defaults(build=get_transfer)
    args = parser.parse_args(argv)
    args.key_id = args.key_id or args.key.name.removesuffix(".key")
    try:
        key = load_key(args.key)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read an Ed25519 private key (hex) from {args.key}: {error}")
    print(MessageToJson(args.build(args, key), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
