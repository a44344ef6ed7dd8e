"""The seeder's fast builders write exactly the bytes the gateway's own code writes (bench/seed.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.seed import _DigestSigner, arrivals, canonical_entry, plan, receipt_bytes, sqlite_time, timestamp
from gateway.api.receipts import SignedReceiptIssuer
from gateway.domain.audit import AuditEvent, canonical
from gateway.domain.envelope import GATEWAY
from gateway.wire import timestamp as wire_timestamp
from protos.gongji.v1 import payload_types

AT = datetime(2026, 11, 27, 3, 4, 5, 60708, tzinfo=UTC)


def test_a_seeded_receipt_is_the_issuers_receipt_byte_for_byte() -> None:
    signer = _DigestSigner(GATEWAY, "gateway-k1", Ed25519PrivateKey.generate())
    for at in (AT, AT.replace(microsecond=0)):
        issued = SignedReceiptIssuer(signer).issue(
            request_sender="650000", request_message_id="650000-abc", request_sha256=b"\x01" * 32,
            request_payload_type=payload_types.TRANSFER_INSTRUCTION, subject_id="650000-abc", state="RECEIVED", at=at)
        assert receipt_bytes(signer, "650000", "650000-abc", b"\x01" * 32, payload_types.TRANSFER_INSTRUCTION,
                             "650000-abc", "RECEIVED", at) == issued


def test_a_seeded_audit_entry_hashes_what_the_chain_hashes() -> None:
    for at, detail in ((AT, "650000->620000 amount_fen=100 binding=b-1 instruction_sha256=00ff"),
                       (AT.replace(microsecond=0), "")):
        event = AuditEvent("transfer", "650000-abc", "COMMITTED", at, detail)
        assert canonical_entry(7, at, "transfer", "650000-abc", "COMMITTED", detail) == canonical(7, event)


def test_times_as_the_store_writes_them() -> None:
    assert timestamp(AT) == wire_timestamp(AT)
    assert sqlite_time(AT) == "2026-11-27 03:04:05.060708"
    assert sqlite_time(AT.replace(microsecond=0)) == "2026-11-27 03:04:05.000000"


def test_rows_spread_over_windows_ending_with_the_one_of_now() -> None:
    now = datetime(2026, 12, 6, 14, 0, tzinfo=UTC)  # 22:00 in Beijing: the window of 2026-12-06
    layout = plan(1003, 10, now)
    assert [span.window_id for span, _ in layout][-2:] == ["2026-12-05", "2026-12-06"]
    assert len(layout) == 10 and sum(count for _, count in layout) == 1003
    for span, count in layout:
        times = list(arrivals(span, count, now))
        assert len(times) == count and times == sorted(times)
        assert all(span.opens_at <= at < span.closes_at and at <= now - timedelta(minutes=1) for at in times)
        assert all(at.tzinfo == UTC for at in times)
