"""Settlement use cases (D16-D18): assign commits to windows, close, acknowledge, record payments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Envelope
from gateway.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from gateway.domain.outbox import NotifySettlement, settlement_message_id
from gateway.domain.settlement import (
    Figures,
    Payment,
    SettlementAcknowledgement,
    SettlementPolicy,
    SettlementQuery,
    SettlementWindow,
    WindowSpan,
    WindowState,
    is_clearing_window,
    next_window,
    provinces_in,
    span_of,
    validate_payment,
    validate_window_id,
    window_containing,
)
from gateway.domain.transfers import validate_message_id
from gateway.usecases.auth import PayloadDecoder, authenticate, require_addressed_to_gateway
from gateway.usecases.context import UseCaseContext
from gateway.usecases.idempotency import payload_digest, run_once
from gateway.usecases.ports import UnitOfWork
from gateway.usecases.provinces import require_active

# Each closed window pushes commits one window on; no real history comes near this many in a row.
MAX_WINDOW_HOPS = 1000
MAX_PAGE_SIZE = 200
# Who closes a window when no operator does.
SCHEDULE_ACTOR = "gateway:schedule"


def assign_to_open_window(uow: UnitOfWork, policy: SettlementPolicy, transfer_id: str, now: datetime) -> str:
    """D16: the window open at commit time; if it is already closed, the next one that is open."""
    span = window_containing(now, policy.period)
    for _ in range(MAX_WINDOW_HOPS):
        if uow.settlements.state_for_commit(span, now) is WindowState.OPEN:
            uow.transfers.assign_window(transfer_id, span.window_id)
            return span.window_id
        span = next_window(span, policy.period)
    raise RuntimeError(f"no open settlement window within {MAX_WINDOW_HOPS} windows of {now.isoformat()}")


def _span_to_close(uow: UnitOfWork, policy: SettlementPolicy, window_id: str, now: datetime) -> WindowSpan:
    """The window an operator names, or with no id the calendar window containing now (never a later one: a
    second close of today's window answers with it again rather than closing tomorrow's)."""
    if not window_id:
        return window_containing(now, policy.period)
    span = span_of(window_id)
    # A clearing month (Q10) is a calendar month whatever the transfers' window period is.
    if (not is_clearing_window(window_id) and uow.settlements.get(window_id) is None
            and span != window_containing(span.opens_at, policy.period)):
        raise InvalidArgument(f"windows are {policy.period.value}: {window_id} is not one",
                              reason=reasons.WINDOW_NOT_OF_PERIOD, field="window_id")
    # Commits that found today's window closed went on to the next one, which so exists already: it still
    # cannot be closed before it starts.
    if span.opens_at > now:
        raise FailedPrecondition("the window has not started yet", reason=reasons.WINDOW_NOT_STARTED,
                                 field="window_id")
    return span


def close_window(ctx: UseCaseContext, window_id: str, actor: str, force: bool = False) -> SettlementWindow:
    """Freeze the figures (D17), sign each province's part and queue it for them; closing twice is a no-op.

    A clearing month ("Q2026-03", Q10) is closed the same way: its figures are its lines, read from the running
    totals of its consumptions and reversals (O(pairs)); the draws and reversals that find it closed go on to the
    next month.

    A window with nothing committed is refused unless `force`d (an operator who named the wrong day learns
    it before that day's transfers are sent on to the next window); closed, it is SETTLED at once, as there
    is nothing to acknowledge or pay. `actor`: who closes it (an operator's identity, or SCHEDULE_ACTOR),
    named in the audit entries.
    """
    now = ctx.clock.now()
    with ctx.uow() as uow:
        uow.audit.act_as(actor)
        span = _span_to_close(uow, ctx.settlement, window_id, now)
        if uow.settlements.state_for_close(span, now) is WindowState.OPEN:
            clearing = is_clearing_window(span.window_id)
            pairs = [] if clearing else uow.settlements.committed_pairs(span.window_id)
            lines = uow.settlements.clearing_lines(span.window_id) if clearing else []
            if not pairs and not lines and not force:
                raise FailedPrecondition(f"nothing is recorded in window {span.window_id}: close it with force "
                                         "to settle it empty", reason=reasons.WINDOW_EMPTY, field="window_id")
            figures = Figures(span.window_id, span.opens_at, span.closes_at, tuple(pairs), tuple(lines))
            statements = []
            for province in provinces_in((*pairs, *lines)):
                envelope = ctx.receipts.sign_figures(figures.concerning(province), province, now)
                statements.append((province, envelope, payload_digest(envelope.payload)))
                uow.outbox.enqueue(province, NotifySettlement(), settlement_message_id(span.window_id, province),
                                   span.window_id, now)
            uow.settlements.freeze(span.window_id, pairs, statements, now, lines)
            if not statements:  # nothing moved: no one's agreement is needed and nothing is to be paid
                uow.settlements.change_state(span.window_id, WindowState.CLOSED, WindowState.SETTLED, now)
        window = uow.settlements.get(span.window_id)
        uow.commit()
    assert window is not None
    return window


def close_due_windows(ctx: UseCaseContext, limit: int = 10) -> list[str]:
    """Close, on schedule, every open window that ended more than the close delay ago."""
    if not ctx.settlement.close_on_schedule:
        return []
    with ctx.uow() as uow:
        due = uow.settlements.due_for_close(ctx.clock.now() - ctx.settlement.close_delay, limit)
    # The schedule closes empty windows too (settled at once): else each would stay open, due for ever.
    return [close_window(ctx, window_id, SCHEDULE_ACTOR, force=True).window_id for window_id in due]


def window_not_found() -> NotFound:
    """For an unknown window and, to a province, for a closed one it has no figures in: it learns nothing of
    other provinces' settlements."""
    return NotFound("no such settlement window", reason=reasons.SETTLEMENT_WINDOW_NOT_FOUND, field="window_id")


def get_window(ctx: UseCaseContext, window_id: str) -> SettlementWindow:
    validate_window_id(window_id)
    with ctx.uow(read_only=True) as uow:
        window = uow.settlements.get(window_id)
    if window is None:
        raise window_not_found()
    return window


@dataclass(frozen=True, slots=True)
class WindowPage:
    windows: list[SettlementWindow]
    next_page_token: str


def list_windows(ctx: UseCaseContext, states: Sequence[WindowState], page_token: str,
                 page_size: int, clearing: bool | None = None) -> WindowPage:
    """Windows newest first; the token is the last window id shown (ids sort as their dates, the clearing
    months' after the transfers' windows). `clearing`: clearing months only (True), transfers' windows only
    (False), both (None)."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be within 0..{MAX_PAGE_SIZE}", reason=reasons.INVALID_PAGE_SIZE,
                              field="page_size")
    if page_token:
        validate_window_id(page_token, "page_token")
    size = page_size or 50
    with ctx.uow(read_only=True) as uow:
        windows = uow.settlements.newest_first(states, page_token or None, size + 1, clearing)
    more = len(windows) > size
    windows = windows[:size]
    return WindowPage(windows, windows[-1].window_id if more else "")


@dataclass(frozen=True, slots=True)
class SettlementView:
    """What a province is shown of a window: its state, its own signed figures, who has agreed."""

    window_id: str
    state: WindowState
    figures: Envelope | None
    acknowledged_by: list[str]


def get_settlement(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                   decode: PayloadDecoder[SettlementQuery]) -> SettlementView:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        query = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_message_id(query.header.message_id)
        require_addressed_to_gateway(query.header, "a settlement query")
        province = query.header.sender
        window_id = query.window_id
        if window_id:
            validate_window_id(window_id)
        else:
            window_id = uow.settlements.latest_statement_window(province) or ""
            if not window_id:
                raise NotFound("no closed window concerns this province yet", reason=reasons.NO_CLOSED_WINDOW,
                               field="window_id")
        window = uow.settlements.get(window_id)
        if window is None:
            raise window_not_found()
        if window.state is WindowState.OPEN:
            return SettlementView(window_id, window.state, None, [])
        statement = uow.settlements.statement(window_id, province, ctx.stored_types.figures)
        if statement is None:
            raise window_not_found()
        return SettlementView(window_id, window.state, statement[0], window.acknowledged_by)


@dataclass(frozen=True, slots=True)
class AcknowledgementAnswer:
    receipt: bytes
    replay: bool


def acknowledge_settlement(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                           decode: PayloadDecoder[SettlementAcknowledgement]) -> AcknowledgementAnswer:
    """A province signs its agreement with its figures (digest must match); the last one makes it ACKNOWLEDGED."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        ack = authenticate(uow, envelope, decode, peer, now, ctx)
        header = ack.header
        require_addressed_to_gateway(header, "an acknowledgement")
        validate_message_id(header.message_id)  # the idempotency key: as bounded as every other message's
        validate_window_id(ack.window_id)
        if len(ack.figures_sha256) != 32:
            raise InvalidArgument("figures_sha256 must be 32 bytes",
                                  reason=reasons.INVALID_DIGEST, field="figures_sha256")
        digest = payload_digest(envelope.payload)

        def record() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")  # a stored refusal
            state = uow.settlements.lock(ack.window_id)  # acknowledgements of one window one at a time
            if state is None:
                raise window_not_found()
            if state is WindowState.OPEN:
                raise FailedPrecondition("the window is still open",
                                         reason=reasons.WINDOW_NOT_CLOSED, field="window_id")
            statement = uow.settlements.statement(ack.window_id, header.sender, ctx.stored_types.figures)
            if statement is None:
                raise window_not_found()
            if statement[1] != ack.figures_sha256:
                raise FailedPrecondition("figures_sha256 does not match the figures the gateway sent",
                                         reason=reasons.FIGURES_DIGEST_MISMATCH, field="figures_sha256")
            uow.settlements.acknowledge(ack.window_id, header.sender, now, header.message_id, envelope)
            if state is WindowState.CLOSED and uow.settlements.unacknowledged(ack.window_id) == 0:
                uow.settlements.change_state(ack.window_id, WindowState.CLOSED, WindowState.ACKNOWLEDGED, now)
                state = WindowState.ACKNOWLEDGED
                window = uow.settlements.get(ack.window_id)
                if window is not None and not window.payable:  # a clearing month netting to 0: nothing to pay
                    uow.settlements.change_state(ack.window_id, state, WindowState.SETTLED, now)
                    state = WindowState.SETTLED
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=ack.window_id, state=state.value, at=now)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now,
                                       record)
    return AcknowledgementAnswer(receipt, replay)


@dataclass(frozen=True, slots=True)
class PaymentInput:
    from_province: str
    to_province: str
    bank: str
    serial_number: str
    date: str


def record_payment(ctx: UseCaseContext, window_id: str, inputs: Sequence[PaymentInput],
                   actor: str) -> SettlementWindow:
    """D18: payment references per pair of an ACKNOWLEDGED window; SETTLED once every pair is paid.

    Recording the same reference again changes nothing; a different one for a paid pair is refused. A clearing
    month's payment names its line's pair (from the givers' province to the receivers'), for each line whose net
    is not 0, whichever way the money went: a negative net is paid by the receivers' province.
    """
    validate_window_id(window_id)
    now = ctx.clock.now()
    today = now.astimezone(BEIJING).date()
    payments: list[Payment] = []
    for index, given in enumerate(inputs):
        payment = validate_payment(given.from_province, given.to_province, given.bank, given.serial_number,
                                   given.date, index, today)
        if any((p.from_province, p.to_province) == (payment.from_province, payment.to_province) for p in payments):
            raise InvalidArgument("one payment per pair", reason=reasons.DUPLICATE_PAYMENT, field=f"payments[{index}]")
        payments.append(payment)
    with ctx.uow() as uow:
        uow.audit.act_as(actor)
        state = uow.settlements.lock(window_id)
        window = uow.settlements.get(window_id)
        if state is None or window is None:
            raise window_not_found()
        if state in (WindowState.OPEN, WindowState.CLOSED):
            raise FailedPrecondition(f"the window is {state.value}: every province must acknowledge it first (D18)",
                                     reason=reasons.WINDOW_NOT_ACKNOWLEDGED, field="window_id")
        pairs = window.payable
        paid = {(p.from_province, p.to_province): p for p in window.payments}
        assert window.closed_at is not None
        closed_on = window.closed_at.astimezone(BEIJING).date()
        for index, payment in enumerate(payments):
            key = (payment.from_province, payment.to_province)
            if key not in pairs:
                raise InvalidArgument(f"the window has no figure to pay from {key[0]} to {key[1]}",
                                      reason=reasons.PAIR_NOT_IN_WINDOW, field=f"payments[{index}]")
            if payment.paid_on < closed_on:
                raise InvalidArgument("a payment cannot predate the window's figures",
                                      reason=reasons.INVALID_PAYMENT_DATE,
                                      field=f"payments[{index}].date")
            if key in paid:
                if paid[key] != payment:
                    raise FailedPrecondition("this pair's payment is already recorded with another reference",
                                             reason=reasons.PAYMENT_ALREADY_RECORDED, field=f"payments[{index}]")
                continue
            uow.settlements.record_payment(window_id, payment, now)
            paid[key] = payment
        if state is WindowState.ACKNOWLEDGED and pairs <= paid.keys():
            uow.settlements.change_state(window_id, WindowState.ACKNOWLEDGED, WindowState.SETTLED, now)
        result = uow.settlements.get(window_id)
        uow.commit()
    assert result is not None
    return result


def window_counts(ctx: UseCaseContext) -> dict[WindowState, int]:
    with ctx.uow(read_only=True) as uow:
        return uow.settlements.counts_by_state()
