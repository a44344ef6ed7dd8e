"""The tamper-evident record: every state change chained in its own transaction, checkpoints signed,
and verification naming the first entry altered, removed or inserted — on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from gateway.security.signing import verify_signature
from gateway.usecases.audit import checkpoint_audit, verify_audit
from protos.gongji.v1 import operations_pb2, settlements_pb2, transfers_pb2
from tests.support import CLEAR_PERSONAL_DATA, GANSU, XINJIANG, Stack, wait_until


def verify(stack: Stack):  # type: ignore[no-untyped-def]
    return verify_audit(stack.gateway.context.uow, {"gateway-k1": stack.gateway_public_key()}, verify_signature)


def some_history(stack: Stack) -> None:
    for amount in (1_000, 2_000):
        stack.wait_for_state(stack.submit(stack.instruction(amount_fen=amount)).transfer_id,
                             transfers_pb2.TRANSFER_STATE_COMMITTED)
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=GANSU, name="甘肃省"), timeout=5)
    window = stack.operations.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(), timeout=10).window
    # Then quiet: both provinces have agreed and been told everything, so nothing appends while a test tampers.
    wait_until(lambda: stack.operations.GetSettlementWindow(operations_pb2.GetSettlementWindowRequest(
        window_id=window.window_id), timeout=5).window.state == settlements_pb2.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED,
        what="both provinces to acknowledge")
    stack.wait_for_outbox_idle(XINJIANG)
    stack.wait_for_outbox_idle(GANSU)


def sql(stack: Stack, statement: str, **values: object) -> None:
    with stack.gateway.engine.begin() as conn:
        conn.execute(text(statement), values)


def test_every_state_change_is_chained_and_verifies(stack: Stack) -> None:
    some_history(stack)
    with stack.gateway.engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, action, subject_id, detail FROM audit_log ORDER BY seq")).all()
        transfers = conn.execute(text("SELECT count(*) FROM transfer_events")).scalar_one()
    kinds = {kind for kind, *_ in rows}
    assert {"province", "binding", "transfer", "settlement"} <= kinds
    # Each state a transfer entered is one entry, in the same transaction as the change itself.
    assert sum(1 for kind, *_ in rows if kind == "transfer") == transfers
    assert ("province", "UPDATED", GANSU) in {(k, a, s) for k, a, s, _ in rows}
    dump = "\n".join(str(row) for row in rows)
    assert not [v for v in CLEAR_PERSONAL_DATA if v in dump], "personal data in the audit log (D19)"
    report = verify(stack)
    assert report.ok and report.entries == len(rows), report.findings

    checkpoint = checkpoint_audit(stack.gateway.context)
    assert checkpoint is not None and checkpoint.size == len(rows)
    assert checkpoint_audit(stack.gateway.context) is None  # nothing new: no second checkpoint
    assert verify(stack).ok and verify(stack).checkpoints == 1


def test_one_changed_byte_is_found_and_named(stack: Stack) -> None:
    some_history(stack)
    assert verify(stack).ok
    # One byte of entry 5's detail: a digit becomes another.
    with stack.gateway.engine.connect() as conn:
        detail = conn.execute(text("SELECT detail FROM audit_log WHERE seq = 5")).scalar_one()
    changed = detail.replace("0", "1", 1) if "0" in detail else detail + "x"
    sql(stack, "UPDATE audit_log SET detail = :d WHERE seq = 5", d=changed)
    report = verify(stack)
    assert not report.ok and report.findings[0].seq == 5 and "entry 5 was altered" in report.findings[0].problem
    sql(stack, "UPDATE audit_log SET detail = :d WHERE seq = 5", d=detail)
    assert verify(stack).ok  # put back: whole again


def test_removed_inserted_and_truncated_entries_are_named(stack: Stack) -> None:
    some_history(stack)
    assert checkpoint_audit(stack.gateway.context) is not None
    with stack.gateway.engine.connect() as conn:
        size = conn.execute(text("SELECT size FROM audit_head")).scalar_one()
        saved = conn.execute(text("SELECT * FROM audit_log WHERE seq = 3")).mappings().one()

    sql(stack, "DELETE FROM audit_log WHERE seq = 3")
    report = verify(stack)
    assert report.findings[0].seq == 3 and "entry 3 is missing (removed)" in report.findings[0].problem
    sql(stack, "INSERT INTO audit_log (seq, at, kind, subject_id, action, detail, prev_hash, entry_hash) "
               "VALUES (:seq, :at, :kind, :subject_id, :action, :detail, :prev_hash, :entry_hash)", **dict(saved))
    assert verify(stack).ok

    # An entry slipped in after entry 3, the rest renumbered: the chain breaks right there.
    sql(stack, f"UPDATE audit_log SET seq = seq + {size + 10} WHERE seq > 3")
    sql(stack, f"UPDATE audit_log SET seq = seq - {size + 9} WHERE seq > {size + 10}")
    sql(stack, "INSERT INTO audit_log (seq, at, kind, subject_id, action, detail, prev_hash, entry_hash) "
               "VALUES (4, :at, 'transfer', 'forged', 'COMMITTED', '', :prev, :hash)",
        at=saved["at"], prev=saved["entry_hash"], hash=b"\x01" * 32)
    report = verify(stack)
    assert report.findings[0].seq == 4 and "entry 4 was altered" in report.findings[0].problem
    sql(stack, "DELETE FROM audit_log WHERE seq = 4")
    # Renumbered in two steps: PostgreSQL checks the key row by row, in whatever order the rows lie on disk.
    sql(stack, f"UPDATE audit_log SET seq = seq + {size + 10} WHERE seq > 4")
    sql(stack, f"UPDATE audit_log SET seq = seq - {size + 11} WHERE seq > {size + 10}")
    assert verify(stack).ok

    # The last entries removed and the head moved back to match: the signed checkpoint still knows.
    with stack.gateway.engine.connect() as conn:
        head = conn.execute(text("SELECT entry_hash FROM audit_log WHERE seq = :s"), {"s": size - 2}).scalar_one()
    sql(stack, "DELETE FROM audit_log WHERE seq > :s", s=size - 2)
    sql(stack, "UPDATE audit_head SET size = :s, head_hash = :h", s=size - 2, h=head)
    report = verify(stack)
    assert report.findings[0].seq == size - 1 and "removed" in report.findings[0].problem


def test_a_forged_checkpoint_does_not_verify(stack: Stack) -> None:
    some_history(stack)
    assert checkpoint_audit(stack.gateway.context) is not None
    sql(stack, "UPDATE audit_checkpoints SET signature = :s", s=b"\x00" * 64)
    report = verify(stack)
    assert not report.ok and "does not verify" in report.findings[0].problem
