"""Settlement windows end to end (D16-D18): real gateway, real stub provinces, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import grpc
from sqlalchemy import text

from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Envelope
from gateway.security.signing import verify_signature
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, operations_pb2, settlements_pb2, settlements_pb2_grpc, transfers_pb2
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, Stack, error_of, ts, unique_id, wait_until

SHAANXI = "610000"
CHEN = ("620103198203040034", "620100")  # Gansu, employee
LIU = ("650502198803150422", "650500")  # Xinjiang (阿依古丽), his wife
CHEN_FATHER = ("610102195604100016", "610100")  # Shaanxi, employee
ZHANG_FATHER = ("610103196207070037", "610100")  # Shaanxi, the giver's father

COMMITTED = transfers_pb2.TRANSFER_STATE_COMMITTED
W = operations_pb2
S = settlements_pb2


def send(stack: Stack, sender: str, receiver: str, giver: tuple[str, str], person: tuple[str, str],
         binding_id: str, amount_fen: int) -> str:
    message = stack.instruction(amount_fen=amount_fen, sender=sender, receiver=receiver, giver=giver, person=person,
                                binding_id=binding_id)
    return stack.submit(message, signer=sender).transfer_id


def wait_final(stack: Stack, transfer_id: str, sender: str, state: int = COMMITTED) -> None:
    wait_until(lambda: stack.get(transfer_id, signer=sender).state == state, what=f"{transfer_id} to be final")


def window(stack: Stack, window_id: str) -> operations_pb2.SettlementWindow:
    return stack.operations.GetSettlementWindow(W.GetSettlementWindowRequest(window_id=window_id), timeout=5).window


def close(stack: Stack, window_id: str = "") -> operations_pb2.SettlementWindow:
    return stack.operations.CloseSettlementWindow(W.CloseSettlementWindowRequest(window_id=window_id),
                                                  timeout=10).window


def wait_window_state(stack: Stack, window_id: str, state: int) -> operations_pb2.SettlementWindow:
    last: list[operations_pb2.SettlementWindow] = []

    def reached() -> operations_pb2.SettlementWindow | None:
        last[:] = [window(stack, window_id)]
        return last[0] if last[0].state == state else None

    try:
        return wait_until(reached, what=f"window {window_id} to reach {S.SettlementWindowState.Name(state)}")
    except AssertionError as timed_out:
        seen = S.SettlementWindowState.Name(last[0].state) if last else "nothing"
        raise AssertionError(f"{timed_out} (last seen: {seen})") from None


def wait_closed(stack: Stack, window_id: str) -> operations_pb2.SettlementWindow:
    """Until the window is closed: CLOSED, or already ACKNOWLEDGED by stubs that agree at once (the passing CLOSED
    state may never be seen) or SETTLED."""
    closed = (S.SETTLEMENT_WINDOW_STATE_CLOSED, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED,
              S.SETTLEMENT_WINDOW_STATE_SETTLED)
    return wait_until(lambda: (w := window(stack, window_id)).state in closed and w, what=f"{window_id} closed")


def pay(stack: Stack, window_id: str, *pairs: tuple[str, str, str]) -> operations_pb2.SettlementWindow:
    payments = [W.PaymentRecord(from_province=f, to_province=t, bank="ICBC", serial_number=serial,
                                date=stack.clock.now().astimezone(BEIJING).date().isoformat())
                for f, t, serial in pairs]
    return stack.operations.RecordSettlementPayment(
        W.RecordSettlementPaymentRequest(window_id=window_id, payments=payments), timeout=5).window


def figures_of(envelope: common_pb2.SignedEnvelope) -> settlements_pb2.SettlementFigures:
    return settlements_pb2.SettlementFigures.FromString(envelope.payload)


def gateway_signed(stack: Stack, envelope: common_pb2.SignedEnvelope) -> bool:
    return verify_signature(Envelope(envelope.payload, envelope.payload_type, envelope.signer, envelope.key_id,
                                     envelope.alg, envelope.signature), stack.gateway_public_key())


def acknowledgement(stack: Stack, signer: str, window_id: str, digest: bytes,
                    message_id: str | None = None) -> common_pb2.SignedEnvelope:
    message = S.SettlementAcknowledgement(
        header=common_pb2.Header(message_id=message_id or unique_id("ack"), sender=signer, receiver="gateway",
                                 created_at=ts(stack.clock.now())),
        window_id=window_id, figures_sha256=digest)
    return stack.sign(message, signer)


def acknowledge(stack: Stack, envelope: common_pb2.SignedEnvelope) -> settlements_pb2.AcknowledgeSettlementResponse:
    return settlements_pb2_grpc.SettlementsStub(stack.channel).AcknowledgeSettlement(
        S.AcknowledgeSettlementRequest(acknowledgement=envelope), timeout=5)


def get_settlement(stack: Stack, signer: str, window_id: str = "") -> settlements_pb2.GetSettlementResponse:
    query = S.SettlementQuery(header=common_pb2.Header(message_id=unique_id("sq"), sender=signer, receiver="gateway",
                                                       created_at=ts(stack.clock.now())), window_id=window_id)
    return settlements_pb2_grpc.SettlementsStub(stack.channel).GetSettlement(
        S.GetSettlementRequest(query=stack.sign(query, signer)), timeout=5)


def test_three_provinces_both_directions_close_acknowledge_and_settle(stack: Stack) -> None:
    stack.add_province(SHAANXI, "陕西")
    gs_xj = stack.bind(CHEN, LIU, "12", GANSU, XINJIANG)
    xj_sn = stack.bind(GIVER, ZHANG_FATHER, "51", XINJIANG, SHAANXI)
    sn_gs = stack.bind(CHEN_FATHER, CHEN, "20", SHAANXI, GANSU)
    gs_sn = stack.bind(CHEN, CHEN_FATHER, "51", GANSU, SHAANXI)
    plan = [  # (sender, receiver, giver, receiver person, binding, amount)
        (XINJIANG, GANSU, GIVER, MOTHER, stack.binding_id, 10_000),
        (XINJIANG, GANSU, GIVER, MOTHER, stack.binding_id, 20_000),
        (XINJIANG, GANSU, GIVER, MOTHER, stack.binding_id, 30_000),
        (GANSU, XINJIANG, CHEN, LIU, gs_xj, 5_000),
        (GANSU, XINJIANG, CHEN, LIU, gs_xj, 7_000),
        (XINJIANG, SHAANXI, GIVER, ZHANG_FATHER, xj_sn, 40_000),
        (SHAANXI, GANSU, CHEN_FATHER, CHEN, sn_gs, 25_000),
        (GANSU, SHAANXI, CHEN, CHEN_FATHER, gs_sn, 1_000),
    ]
    for sender, receiver, giver, person, binding, amount in plan:
        wait_final(stack, send(stack, sender, receiver, giver, person, binding, amount), sender)
    # A declined transfer moves no money and is in no window.
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_DECLINE)
    declined = send(stack, XINJIANG, GANSU, GIVER, MOTHER, stack.binding_id, 99_000)
    wait_final(stack, declined, XINJIANG, transfers_pb2.TRANSFER_STATE_DECLINED)
    assert stack.get(declined).settlement_window_id == ""

    closed = close(stack)
    assert closed.state in (S.SETTLEMENT_WINDOW_STATE_CLOSED, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)
    gross = {(p.from_province, p.to_province): (p.gross_fen, p.transfer_count) for p in closed.pairs}
    assert gross == {(XINJIANG, GANSU): (60_000, 3), (GANSU, XINJIANG): (12_000, 2), (XINJIANG, SHAANXI): (40_000, 1),
                     (SHAANXI, GANSU): (25_000, 1), (GANSU, SHAANXI): (1_000, 1)}
    net = {p.province: p.net_fen for p in closed.positions}
    assert net == {XINJIANG: 12_000 - 60_000 - 40_000, GANSU: 60_000 + 25_000 - 12_000 - 1_000,
                   SHAANXI: 40_000 + 1_000 - 25_000}
    assert sum(net.values()) == 0
    assert list(closed.provinces) == sorted((XINJIANG, GANSU, SHAANXI))
    # Every transfer of the plan is in this window, as the transfer view says too.
    with stack.gateway.engine.connect() as conn:
        in_window = conn.execute(text("SELECT count(*) FROM transfers WHERE settlement_window_id = :w"),
                                 {"w": closed.window_id}).scalar_one()
    assert in_window == len(plan)

    # Each province was sent its own part, gateway-signed, and acknowledged it by itself (stub AUTO mode).
    settled = wait_window_state(stack, closed.window_id, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)
    assert list(settled.acknowledged_by) == sorted((XINJIANG, GANSU, SHAANXI))
    for code in (XINJIANG, GANSU, SHAANXI):
        received = {r.window_id: r for r in stack.snapshot(code).settlements}[closed.window_id]
        assert received.times_received == 1 and received.net_fen == net[code]
        assert received.acknowledged_state in ("CLOSED", "ACKNOWLEDGED")
        view = get_settlement(stack, code)  # empty window id: the latest closed window of this province
        assert view.state == S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED
        assert gateway_signed(stack, view.figures) and view.figures.payload_type == "gongji.v1.SettlementFigures"
        assert hashlib.sha256(view.figures.payload).digest() == received.figures_sha256
        mine = figures_of(view.figures)
        assert mine.header.receiver == code and mine.window_id == closed.window_id
        assert all(code in (p.from_province, p.to_province) for p in mine.pairs)  # only its own pairs
        assert {(p.from_province, p.to_province) for p in mine.pairs} == {k for k in gross if code in k}
        assert [(p.province, p.net_fen) for p in mine.positions] == [(code, net[code])]

    # D18: SETTLED only once every pair's payment is recorded.
    partly = pay(stack, closed.window_id, (XINJIANG, GANSU, "ICBC-0001"), (GANSU, XINJIANG, "ICBC-0002"))
    assert partly.state == S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED and len(partly.payments) == 2
    rest = [(XINJIANG, SHAANXI, "ICBC-0003"), (SHAANXI, GANSU, "ICBC-0004"), (GANSU, SHAANXI, "ICBC-0005")]
    done = pay(stack, closed.window_id, *rest)
    assert done.state == S.SETTLEMENT_WINDOW_STATE_SETTLED and len(done.payments) == 5
    assert pay(stack, closed.window_id, *rest) == done  # the same references again: nothing changes
    seen = error_of(lambda: pay(stack, closed.window_id, (XINJIANG, SHAANXI, "ICBC-9999")))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_ALREADY_RECORDED")

    # A closed window never changes: a later commit goes to the next window.
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_IMMEDIATE)
    later = send(stack, XINJIANG, GANSU, GIVER, MOTHER, stack.binding_id, 3_000)
    wait_final(stack, later, XINJIANG)
    assert stack.get(later).settlement_window_id not in ("", closed.window_id)
    after = window(stack, closed.window_id)
    assert (list(after.pairs), list(after.positions)) == (list(done.pairs), list(done.positions))
    assert close(stack, closed.window_id) == after  # closing again is a no-op
    assert get_settlement(stack, GANSU, closed.window_id).figures == get_settlement(stack, GANSU).figures


def test_acknowledgements_are_checked_signed_and_idempotent(stack: Stack) -> None:
    for code in (XINJIANG, GANSU):
        stack.configure(code, settlement_ack_mode=control_pb2.SETTLEMENT_ACK_MODE_MANUAL)
    first_transfer = stack.submit(stack.instruction(amount_fen=12_345)).transfer_id
    wait_final(stack, first_transfer, XINJIANG)
    current = stack.get(first_transfer).settlement_window_id
    early = error_of(lambda: acknowledge(stack, acknowledgement(stack, GANSU, current, b"\x00" * 32)))
    assert (early.code, early.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_NOT_CLOSED")

    closed = close(stack)
    assert closed.window_id == current and closed.state == S.SETTLEMENT_WINDOW_STATE_CLOSED
    wait_until(lambda: all(closed.window_id in {r.window_id for r in stack.snapshot(c).settlements}
                           for c in (XINJIANG, GANSU)), what="both provinces to receive the figures")
    not_yet = error_of(lambda: pay(stack, closed.window_id, (XINJIANG, GANSU, "X-1")))
    assert (not_yet.code, not_yet.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_NOT_ACKNOWLEDGED")

    # A digest that is not that of the figures sent is refused, and stays refused on resend.
    wrong = stack.control(GANSU).AcknowledgeSettlement(
        control_pb2.StubAcknowledgeRequest(window_id=closed.window_id, wrong_digest=True), timeout=5)
    assert (wrong.code, wrong.reason) == ("FAILED_PRECONDITION", "FIGURES_DIGEST_MISMATCH")
    digest = get_settlement(stack, GANSU, closed.window_id).figures
    right = hashlib.sha256(digest.payload).digest()
    mismatched = acknowledgement(stack, GANSU, closed.window_id, hashlib.sha256(b"other").digest())
    for _ in range(2):
        seen = error_of(lambda: acknowledge(stack, mismatched))
        assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FIGURES_DIGEST_MISMATCH")
    assert window(stack, closed.window_id).acknowledged_by == []

    # Another province's figures' digest is not this province's either; an outsider is not in the window.
    xinjiang_digest = hashlib.sha256(get_settlement(stack, XINJIANG, closed.window_id).figures.payload).digest()
    assert xinjiang_digest != right
    seen = error_of(lambda: acknowledge(stack, acknowledgement(stack, GANSU, closed.window_id, xinjiang_digest)))
    assert seen.reason == "FIGURES_DIGEST_MISMATCH"

    # The right digest: recorded once; the identical resend is a replay with the same receipt.
    good = acknowledgement(stack, GANSU, closed.window_id, right)
    first = acknowledge(stack, good)
    again = acknowledge(stack, good)
    assert (first.replay, again.replay) == (False, True) and first.receipt == again.receipt
    assert first.state == again.state == S.SETTLEMENT_WINDOW_STATE_CLOSED  # Xinjiang has not agreed yet
    receipt = stack.verify_receipt(first.receipt, good.payload)
    assert (receipt.subject_id, receipt.state) == (closed.window_id, "CLOSED")
    modified = acknowledgement(stack, GANSU, closed.window_id, right,
                               message_id=S.SettlementAcknowledgement.FromString(good.payload).header.message_id)
    seen = error_of(lambda: acknowledge(stack, modified))  # same id, other bytes (a new created_at)
    assert (seen.code, seen.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODIFIED_REQUEST")
    # A second, different acknowledgement by the same province changes nothing and succeeds.
    assert acknowledge(stack, acknowledgement(stack, GANSU, closed.window_id, right)).state == \
        S.SETTLEMENT_WINDOW_STATE_CLOSED
    assert list(window(stack, closed.window_id).acknowledged_by) == [GANSU]

    last = stack.control(XINJIANG).AcknowledgeSettlement(
        control_pb2.StubAcknowledgeRequest(window_id=closed.window_id), timeout=5)
    assert (last.code, last.state) == ("OK", "ACKNOWLEDGED")
    assert window(stack, closed.window_id).state == S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED
    assert pay(stack, closed.window_id, (XINJIANG, GANSU, "X-1")).state == S.SETTLEMENT_WINDOW_STATE_SETTLED


def test_bad_settlement_requests_get_clear_errors_and_change_nothing(stack: Stack) -> None:
    wait_final(stack, stack.submit(stack.instruction(amount_fen=5_000)).transfer_id, XINJIANG)
    today = stack.clock.now().astimezone(BEIJING).date()
    cases = [
        (lambda: close(stack, "2026/11/22"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WINDOW_ID"),
        (lambda: close(stack, "2026-02-30"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WINDOW_ID"),
        (lambda: close(stack, today.strftime("%Y-%m")), grpc.StatusCode.INVALID_ARGUMENT, "WINDOW_NOT_OF_PERIOD"),
        (lambda: close(stack, today.replace(year=today.year + 1).isoformat()), grpc.StatusCode.FAILED_PRECONDITION,
         "WINDOW_NOT_STARTED"),
        (lambda: window(stack, "1999-01-01"), grpc.StatusCode.NOT_FOUND, "SETTLEMENT_WINDOW_NOT_FOUND"),
        (lambda: get_settlement(stack, GANSU), grpc.StatusCode.NOT_FOUND, "NO_CLOSED_WINDOW"),
        (lambda: get_settlement(stack, GANSU, "x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WINDOW_ID"),
        (lambda: acknowledge(stack, acknowledgement(stack, GANSU, "1999-01-01", b"\x01" * 32)),
         grpc.StatusCode.NOT_FOUND, "SETTLEMENT_WINDOW_NOT_FOUND"),
        (lambda: acknowledge(stack, acknowledgement(stack, GANSU, "1999-01-01", b"\x01" * 31)),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DIGEST"),
        (lambda: pay(stack, "1999-01-01", (XINJIANG, GANSU, "S-1")), grpc.StatusCode.NOT_FOUND,
         "SETTLEMENT_WINDOW_NOT_FOUND"),
        (lambda: stack.operations.ListSettlementWindows(W.ListSettlementWindowsRequest(page_size=-1), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_SIZE"),
        (lambda: stack.operations.ListSettlementWindows(W.ListSettlementWindowsRequest(states=[99]), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STATE"),
    ]
    with stack.gateway.engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM settlement_windows")).scalar_one()
    for call, code, reason in cases:
        seen = error_of(call)
        assert (seen.code, seen.reason) == (code, reason), reason
    with stack.gateway.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM settlement_windows")).scalar_one() == before

    closed = close(stack)
    wait_window_state(stack, closed.window_id, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)
    bad_payments = [
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="", serial_number="S", date=str(today)),
         "INVALID_BANK"),
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="B", serial_number="S 1", date=str(today)),
         "INVALID_SERIAL_NUMBER"),
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="B", serial_number="S", date="2026-13-01"),
         "INVALID_PAYMENT_DATE"),
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="B", serial_number="S",
                         date=str(today.replace(year=today.year + 1))), "INVALID_PAYMENT_DATE"),
        (W.PaymentRecord(from_province=GANSU, to_province=XINJIANG, bank="B", serial_number="S", date=str(today)),
         "PAIR_NOT_IN_WINDOW"),
        (W.PaymentRecord(from_province="999999", to_province=GANSU, bank="B", serial_number="S", date=str(today)),
         "INVALID_PROVINCE_CODE"),
        # References are identifiers: a bank's name, a person's name or ID number never reaches the record.
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="中国工商银行", serial_number="S",
                         date=str(today)), "INVALID_BANK"),
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="ICBC-620102201508160027",
                         serial_number="S", date=str(today)), "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="ICBC", serial_number="王小红",
                         date=str(today)), "INVALID_SERIAL_NUMBER"),
        (W.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="ICBC", serial_number="620102201508160027",
                         date=str(today)), "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
    ]
    with stack.gateway.engine.connect() as conn:
        audit_entries = conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
    for payment, reason in bad_payments:
        seen = error_of(lambda p=payment: stack.operations.RecordSettlementPayment(  # type: ignore[misc]
            W.RecordSettlementPaymentRequest(window_id=closed.window_id, payments=[p]), timeout=5))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), reason
    assert window(stack, closed.window_id).state == S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED
    assert list(window(stack, closed.window_id).payments) == []
    with stack.gateway.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == audit_entries

    # An outsider province (registered, but not in this window) sees no figures and cannot agree to them: to it,
    # the window is one that does not exist.
    stack.add_province(SHAANXI, "陕西")
    seen = error_of(lambda: get_settlement(stack, SHAANXI, closed.window_id))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "SETTLEMENT_WINDOW_NOT_FOUND")
    seen = error_of(lambda: acknowledge(stack, acknowledgement(stack, SHAANXI, closed.window_id, b"\x01" * 32)))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "SETTLEMENT_WINDOW_NOT_FOUND")
    # A province's acknowledgement signed by another province's key is refused before anything is read.
    forged = acknowledgement(stack, GANSU, closed.window_id, b"\x01" * 32)
    forged.signer = XINJIANG
    seen = error_of(lambda: acknowledge(stack, forged))
    assert seen.code == grpc.StatusCode.UNAUTHENTICATED


def committed(stack: Stack) -> int:
    with stack.gateway.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM transfers WHERE state = 'COMMITTED'")).scalar_one())


def test_commits_racing_a_close_land_in_exactly_one_window(stack: Stack) -> None:
    """Confirmations commit while the window is closed: each transfer is in exactly one window's figures.

    Ten commit before the close and ten after it, so both windows hold some on every run; the twenty
    between race the close and may land in either.
    """
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    ids = [stack.submit(stack.instruction(amount_fen=100 + i)).transfer_id for i in range(40)]
    for transfer_id in ids:
        stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_DELIVERED)
    before, racing, after = ids[:10], ids[10:30], ids[30:]
    for transfer_id in before:
        stack.confirm(transfer_id)
    start = threading.Barrier(3)
    closed: list[operations_pb2.SettlementWindow] = []

    def confirm(part: list[str]) -> None:
        start.wait()
        for transfer_id in part:
            stack.confirm(transfer_id)

    def close_midway() -> None:
        start.wait()
        wait_until(lambda: committed(stack) >= len(before) + 2, interval=0.001, what="some racing commits")
        closed.append(close(stack))

    threads = [threading.Thread(target=confirm, args=(racing[0::2],)),
               threading.Thread(target=confirm, args=(racing[1::2],)), threading.Thread(target=close_midway)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for transfer_id in after:
        stack.confirm(transfer_id)
    frozen = window(stack, closed[0].window_id)
    with stack.gateway.engine.connect() as conn:
        placed = dict(conn.execute(text("SELECT transfer_id, settlement_window_id FROM transfers "
                                        "WHERE state = 'COMMITTED'")).all())
    assert sorted(placed) == sorted(ids) and "" not in placed.values()
    assert {placed[t] for t in before} == {frozen.window_id}
    assert frozen.window_id not in {placed[t] for t in after}
    in_closed = [t for t in ids if placed[t] == frozen.window_id]
    print("racing commits in the closed window:", len(set(in_closed) & set(racing)), "of", len(racing))
    amounts = {t: 100 + i for i, t in enumerate(ids)}
    expected = [(len(in_closed), sum(amounts[t] for t in in_closed))]
    assert [(p.transfer_count, p.gross_fen) for p in frozen.pairs] == expected
    assert frozen.pairs == closed[0].pairs  # as frozen at closing, still
    # The rest went to the next window, which is still open.
    for window_id in set(placed.values()) - {frozen.window_id}:
        assert window(stack, window_id).state == S.SETTLEMENT_WINDOW_STATE_OPEN


def test_a_window_closes_on_schedule_after_its_close_delay(stack: Stack) -> None:
    transfer_id = stack.submit(stack.instruction(amount_fen=4_200)).transfer_id
    wait_final(stack, transfer_id, XINJIANG)
    window_id = stack.get(transfer_id).settlement_window_id
    ends = window(stack, window_id).closes_at.ToDatetime(tzinfo=BEIJING)
    # Just past the window's end, but within the close delay (10 minutes by default): still open.
    stack.clock.advance((ends - stack.clock.now()).total_seconds() + 60)
    stack.wait_for_sweeps()  # the scheduled close runs in the sweep: it has seen this time, and left it open
    assert window(stack, window_id).state == S.SETTLEMENT_WINDOW_STATE_OPEN
    stack.clock.advance(10 * 60)
    closed = wait_closed(stack, window_id)
    assert [(p.from_province, p.to_province, p.gross_fen) for p in closed.pairs] == [(XINJIANG, GANSU, 4_200)]
    # Back to the provinces' time (their messages carry it), the figures are there to agree to.
    stack.clock.advance(-(stack.clock.now() - datetime.now(UTC)).total_seconds())
    for code in (XINJIANG, GANSU):
        wait_until(lambda c=code: window_id in {r.window_id for r in stack.snapshot(c).settlements},  # type: ignore[misc]
                   what=f"{code} to receive the figures")
        answer = stack.control(code).AcknowledgeSettlement(control_pb2.StubAcknowledgeRequest(window_id=window_id),
                                                           timeout=5)
        assert answer.code == "OK", answer.reason
    assert window(stack, window_id).state == S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED
