"""Gateway-signed receipts (api.md "Receipts")."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.domain.envelope import GATEWAY
from gateway.security.signing import EnvelopeSigner
from gateway.wire import envelope_to_proto, timestamp
from protos.gongji.v1 import common_pb2

RECEIPT_TYPE = "gongji.v1.Receipt"


class SignedReceiptIssuer:
    def __init__(self, signer: EnvelopeSigner) -> None:
        self._signer = signer

    def issue(self, *, request_sender: str, request_message_id: str, request_sha256: bytes,
              request_payload_type: str, subject_id: str, state: str, at: datetime,
              affected_ids: Sequence[str] = ()) -> bytes:
        receipt = common_pb2.Receipt(
            header=common_pb2.Header(message_id=f"rcpt:{request_sender}:{request_message_id}", sender=GATEWAY,
                                     receiver=request_sender, created_at=timestamp(at)),
            request_sender=request_sender, request_message_id=request_message_id, request_sha256=request_sha256,
            request_payload_type=request_payload_type, subject_id=subject_id, state=state,
            gateway_time=timestamp(at), affected_ids=list(affected_ids))
        envelope = self._signer.sign(RECEIPT_TYPE, receipt.SerializeToString())
        return envelope_to_proto(envelope).SerializeToString()
