"""What the gateway signs: receipts (api.md "Receipts") and settlement figures (D17)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.domain.audit import CHECKPOINT_TYPE
from gateway.domain.envelope import GATEWAY, Envelope
from gateway.domain.quota import QuotaBalance
from gateway.domain.settlement import Figures
from gateway.security.signing import EnvelopeSigner
from gateway.wire import envelope_to_proto, quota_figures, timestamp
from protos.gongji.v1 import common_pb2, payload_types, settlements_pb2


class SignedReceiptIssuer:
    def __init__(self, signer: EnvelopeSigner) -> None:
        self._signer = signer

    def issue(self, *, request_sender: str, request_message_id: str, request_sha256: bytes,
              request_payload_type: str, subject_id: str, state: str, at: datetime,
              affected_ids: Sequence[str] = (), quota: QuotaBalance | None = None, drawn_fen: int = 0) -> bytes:
        receipt = common_pb2.Receipt(
            header=common_pb2.Header(message_id=f"rcpt:{request_sender}:{request_message_id}", sender=GATEWAY,
                                     receiver=request_sender, created_at=timestamp(at)),
            request_sender=request_sender, request_message_id=request_message_id, request_sha256=request_sha256,
            request_payload_type=request_payload_type, subject_id=subject_id, state=state,
            gateway_time=timestamp(at), affected_ids=list(affected_ids), drawn_fen=drawn_fen,
            quota=None if quota is None else quota_figures(quota))
        envelope = self._signer.sign(payload_types.RECEIPT, receipt.SerializeToString())
        return envelope_to_proto(envelope).SerializeToString()

    def sign_figures(self, figures: Figures, receiver: str, at: datetime) -> Envelope:
        # The message id names window and province: a province sees one statement per window, ever.
        message = settlements_pb2.SettlementFigures(
            header=common_pb2.Header(message_id=f"stl:{figures.window_id}:{receiver}", sender=GATEWAY,
                                     receiver=receiver, created_at=timestamp(at)),
            window_id=figures.window_id, opens_at=timestamp(figures.opens_at), closes_at=timestamp(figures.closes_at),
            pairs=[settlements_pb2.PairFigure(from_province=p.from_province, to_province=p.to_province,
                                              gross_fen=p.gross_fen, transfer_count=p.transfer_count)
                   for p in figures.pairs],
            positions=[settlements_pb2.ProvincePosition(province=p.province, net_fen=p.net_fen)
                       for p in figures.positions if p.province == receiver])
        return self._signer.sign(payload_types.SETTLEMENT_FIGURES, message.SerializeToString())

    def sign_checkpoint(self, payload: bytes) -> Envelope:
        return self._signer.sign(CHECKPOINT_TYPE, payload)
