"""The bench's consumption phase (bench.consumptions) counts what it claims: a consumption is OK only with a
gateway-signed receipt bound to its request that states what it drew and conserved figures; over-drawn and lost
catch every way the quota's end figures and listing can disagree with the answers; the steady half is open loop."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import grpc.aio

from bench import consumptions
from bench.consumptions import (
    AMOUNT_FEN,
    SEND_ATTEMPTS,
    ConsumptionSource,
    Drawn,
    Resending,
    account_quota,
    answer_code,
    conserved,
    grant_size,
    opaque_ref,
)
from bench.load import drive_at_rate, refused_stream
from bench.transfers import GANSU, RECEIVER
from gateway.domain.quota import SETTLEMENT_REF_MAX
from gateway.domain.references import validate_reference
from protos.gongji.v1 import common_pb2, payload_types, quotas_pb2
from province_stub.signing import (
    GATEWAY_SIGNER,
    ensure_key_pair,
    load_public_key,
    sign_envelope,
    verify_envelope,
)

GRANTED = 1_000_000


def figures(consumed: int, granted: int = GRANTED, released: int = 0,
            available: int | None = None) -> common_pb2.QuotaFigures:
    return common_pb2.QuotaFigures(granted_fen=granted, consumed_fen=consumed, released_fen=released,
                                   available_fen=granted - consumed - released if available is None else available)


def receipt_for(payload: bytes, message_id: str, consumed: int, **changes: object) -> common_pb2.Receipt:
    receipt = common_pb2.Receipt(request_sender=GANSU, request_message_id=message_id,
                                 request_sha256=hashlib.sha256(payload).digest(),
                                 request_payload_type=payload_types.QUOTA_CONSUMPTION, subject_id=message_id,
                                 state="DRAWN", quota=figures(consumed), drawn_fen=AMOUNT_FEN)
    for name, value in changes.items():
        if isinstance(value, common_pb2.QuotaFigures):
            getattr(receipt, name).CopyFrom(value)
        else:
            setattr(receipt, name, value)
    return receipt


def answer_for(receipt: common_pb2.Receipt, gateway_key_dir: Path | None = None, *, replay: bool = False,
               drawn: int = AMOUNT_FEN, quota: common_pb2.QuotaFigures | None = None
               ) -> quotas_pb2.ConsumeQuotaResponse:
    envelope = common_pb2.SignedEnvelope(payload=receipt.SerializeToString())
    if gateway_key_dir is not None:
        key = ensure_key_pair(gateway_key_dir, "gateway-k1")
        envelope = sign_envelope(key, GATEWAY_SIGNER, "gateway-k1", payload_types.RECEIPT, envelope.payload)
    return quotas_pb2.ConsumeQuotaResponse(receipt=envelope, replay=replay, drawn_fen=drawn,
                                           quota=quota if quota is not None else receipt.quota)


def test_the_grant_covers_both_halves_at_the_rate_covered() -> None:
    # 32 to warm up, 20 s at 100 a second, then 20 s at up to 5000 a second: 102,032 bills of 100 fen.
    assert grant_size(20) == 100 * (32 + 100 * 20 + 5_000 * 20) == 10_203_200


def test_conservation_is_every_figure_non_negative_and_granted_their_sum() -> None:
    assert conserved(figures(300, released=200))
    assert not conserved(figures(300, available=GRANTED - 299))  # one fen appeared from nowhere
    assert not conserved(figures(GRANTED + 100))  # available -100: over-drawn, though the sum holds


def test_an_answer_is_ok_only_when_its_receipt_binds_the_request_and_states_what_was_drawn() -> None:
    payload, message_id = b"the signed consumption", "bc-1"

    def code(receipt: common_pb2.Receipt, *, replay: bool = False, drawn: int = AMOUNT_FEN,
             quota: common_pb2.QuotaFigures | None = None) -> str:
        answer = answer_for(receipt, replay=replay, drawn=drawn, quota=quota)
        return answer_code(answer, receipt, payload, message_id, GRANTED)

    good = receipt_for(payload, message_id, consumed=500)
    assert code(good) == "OK"
    assert code(good, replay=True) == "REPLAY"
    assert answer_code(answer_for(good), good, b"another request", message_id, GRANTED) == "RECEIPT_NOT_BOUND"
    assert code(receipt_for(payload, message_id, 500, request_message_id="bc-2")) == "RECEIPT_NOT_BOUND"
    assert code(receipt_for(payload, message_id, 500, state="REFUSED")) == "RECEIPT_STATE_REFUSED"
    assert code(receipt_for(payload, message_id, 500, subject_id="bc-2")) == "RECEIPT_STATE_DRAWN"
    assert code(good, drawn=AMOUNT_FEN - 1) == "DRAWN_DIFFERS"  # a partial draw it never asked for
    assert code(receipt_for(payload, message_id, 500, drawn_fen=0)) == "DRAWN_DIFFERS"
    assert code(good, quota=figures(600)) == "FIGURES_DIFFER"  # the answer says other than what was signed
    not_conserved = figures(500, available=GRANTED)
    assert code(receipt_for(payload, message_id, 500, quota=not_conserved)) == "FIGURES_NOT_CONSERVED"
    regranted = figures(500, granted=GRANTED + 1)
    assert code(receipt_for(payload, message_id, 500, quota=regranted)) == "FIGURES_NOT_CONSERVED"


def test_the_source_signs_as_gansu_own_account_first_and_counts_only_gateway_signed_receipts(
        tmp_path: Path) -> None:
    ensure_key_pair(tmp_path, f"{GANSU}-k1")
    source = ConsumptionSource(tmp_path, "650000-b-1", GRANTED)
    (first_id, first), (second_id, second) = source.next_request(), source.next_request()
    envelope = first.consumption
    assert verify_envelope(envelope, load_public_key(tmp_path / f"{GANSU}-k1.pub"))
    consumption = quotas_pb2.QuotaConsumption.FromString(envelope.payload)
    assert (consumption.header.message_id, consumption.header.sender, consumption.receiver) == (
        first_id, GANSU, RECEIVER)
    assert (consumption.amount_fen, consumption.own_account_balance_fen, consumption.allow_partial) == (
        AMOUNT_FEN, 0, False)
    assert first_id != second_id
    assert consumption.settlement_ref != quotas_pb2.QuotaConsumption.FromString(
        second.consumption.payload).settlement_ref

    unsigned = answer_for(receipt_for(envelope.payload, first_id, 100))
    assert source.check(unsigned) == "BAD_RECEIPT"
    signed = answer_for(receipt_for(envelope.payload, first_id, 100), tmp_path)
    assert source.check(signed) == "OK"
    assert source.check(signed) == "RECEIPT_NOT_BOUND"  # the same answer twice draws once
    assert source.answered == {first_id: Drawn(AMOUNT_FEN, 100)}
    assert source.sent == [first_id, second_id]


def account(answered: dict[str, Drawn], listed: list[tuple[str, int]], stored: dict[str, int] | None = None,
            final: common_pb2.QuotaFigures | None = None, sent: list[str] | None = None) -> consumptions.QuotaAccount:
    stored = dict(listed) if stored is None else stored
    final = figures(sum(stored.values())) if final is None else final
    return account_quota(GRANTED, sent or [*answered, "refused"], answered, final, listed, stored, final)


ANSWERED = {"a": Drawn(100, 100), "b": Drawn(100, 200), "c": Drawn(100, 300)}
LISTED = [("a", 100), ("b", 100), ("c", 100)]


def test_a_clean_phase_is_neither_over_drawn_nor_lost() -> None:
    found = account(ANSWERED, LISTED)
    assert (found.overdrawn, found.lost, found.stored_but_refused) == (0, 0, 0)
    assert set(found.overdrawn_detail.values()) == {0} and set(found.lost_detail.values()) == {0}


def test_each_answered_consumption_must_be_listed_and_stored_once_as_answered() -> None:
    found = account(ANSWERED, [("a", 100), ("a", 100), ("b", 50)], stored={"a": 100, "b": 50})
    assert found.lost_detail == {"not_listed": 1, "listed_drawn_differs": 1, "listed_twice": 1,
                                 "not_stored_as_answered": 2}
    assert found.lost == 3  # a listed twice, b drawn differently, c nowhere: each lost once


def test_figures_that_do_not_add_up_are_over_drawn() -> None:
    # The quota says 400 consumed where the consumptions drew 300, and 100 more than was granted is gone.
    found = account(ANSWERED, LISTED, final=figures(400, available=GRANTED - 300))
    assert found.overdrawn_detail["final_not_conserved"] == 1
    assert found.overdrawn_detail["consumed_not_sum_of_listed"] == 1
    assert found.overdrawn_detail["consumed_not_sum_of_stored"] == 1
    assert found.overdrawn == 3
    assert account(ANSWERED, LISTED, final=figures(300, granted=GRANTED * 2)).overdrawn_detail[
        "final_granted_differs"] == 1


def test_two_draws_on_the_same_figures_or_a_draw_nobody_sent_are_over_drawn() -> None:
    shared = ANSWERED | {"b": Drawn(100, 100)}  # a and b both answered "consumed 100 after me"
    assert account(shared, LISTED).overdrawn_detail["answers_sharing_a_step"] == 1
    ghost = account(ANSWERED, [*LISTED, ("ghost", 100)])
    assert ghost.overdrawn_detail["drawn_never_sent"] == 1
    beyond = account({"a": Drawn(GRANTED, GRANTED), "b": Drawn(100, GRANTED + 100)}, [("a", GRANTED), ("b", 100)])
    assert beyond.overdrawn_detail["answers_beyond_grant"] == 1


def test_a_refused_consumption_that_was_stored_is_reported_not_lost() -> None:
    found = account(ANSWERED, [*LISTED, ("refused", 100)])
    assert (found.stored_but_refused, found.lost, found.overdrawn_detail["drawn_never_sent"]) == (1, 0, 0)


def test_the_steady_half_sends_on_schedule_whatever_the_answers_do() -> None:
    # No answer comes until every call was sent: a closed loop would send one and wait for ever.
    in_flight, answers = [0], asyncio.Event()
    sent: list[int] = []

    async def target(request: int) -> tuple[str, int | None]:
        in_flight[0] += 1
        sent.append(in_flight[0])
        if len(sent) == 20:
            answers.set()
        await answers.wait()
        return "OK", request

    counter = iter(range(1000))

    def next_request() -> tuple[str, int]:
        number = next(counter)
        return str(number), number

    phase = asyncio.run(drive_at_rate("steady", target, next_request, lambda answer: "OK",
                                      rate=200.0, seconds=0.1, max_in_flight=20))
    assert sent == list(range(1, 21))  # 200 a second for 0.1 s, all in flight at once
    assert sorted(call.key for call in phase.calls) == sorted(str(n) for n in range(20))
    assert phase.errors == 0 and len(phase.ok) == 20


def test_references_carry_no_digits_so_never_what_looks_like_an_id_number() -> None:
    # Hex uuids hold 15 or 18 digits in a row now and then (one bill in a few thousand): the gateway refuses those.
    refs = {opaque_ref("ST") for _ in range(2_000)}
    assert len(refs) == 2_000
    for ref in refs:
        assert not any(character.isdigit() for character in ref)
        validate_reference(ref, "settlement_ref", max_length=SETTLEMENT_REF_MAX)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def test_a_refused_http2_stream_is_told_apart_from_the_gateways_own_unavailable() -> None:
    refused = "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))"
    assert refused_stream(rpc_error(grpc.StatusCode.UNAVAILABLE, refused)) == "REFUSED_STREAM"
    assert refused_stream(rpc_error(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer")) == ""
    assert refused_stream(rpc_error(grpc.StatusCode.UNAVAILABLE, "the gateway is stopping")) == ""


def resent(codes: list[str]) -> tuple[tuple[str, object], int, int]:
    """What Resending answers when the target answers `codes` in turn; how many it resent and sent."""
    answers = iter(codes)
    sent = [0]

    async def target(request: quotas_pb2.ConsumeQuotaRequest) -> tuple[str, quotas_pb2.ConsumeQuotaResponse | None]:
        sent[0] += 1
        code = next(answers)
        return code, quotas_pb2.ConsumeQuotaResponse() if code == "OK" else None

    resending = Resending(target)
    answer = asyncio.run(resending(quotas_pb2.ConsumeQuotaRequest()))
    return (answer[0], answer[1] is not None), resending.resent, sent[0]


def test_only_a_refused_stream_is_sent_again_and_only_so_often() -> None:
    refused = "UNAVAILABLE/REFUSED_STREAM"
    assert resent([refused, refused, "OK"]) == (("OK", True), 2, 3)
    assert resent([refused] * SEND_ATTEMPTS) == ((refused, False), SEND_ATTEMPTS - 1, SEND_ATTEMPTS)
    # The gateway's own word, even "nothing was done, retry", is an error the bench shows.
    assert resent(["UNAVAILABLE/DATABASE_BUSY"]) == (("UNAVAILABLE/DATABASE_BUSY", False), 0, 1)
    assert resent(["UNAVAILABLE"]) == (("UNAVAILABLE", False), 0, 1)


def test_the_steady_half_holds_calls_beyond_its_limit_in_flight_until_one_ends() -> None:
    in_flight, most, answers = [0], [0], asyncio.Event()

    async def target(request: int) -> tuple[str, int | None]:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        if in_flight[0] == 5:
            answers.set()  # the limit reached: from now on every call is answered
        await answers.wait()
        in_flight[0] -= 1
        return "OK", request

    counter = iter(range(1000))

    def next_request() -> tuple[str, int]:
        number = next(counter)
        return str(number), number

    phase = asyncio.run(drive_at_rate("steady", target, next_request, lambda answer: "OK",
                                      rate=200.0, seconds=0.1, max_in_flight=5))
    assert most[0] == 5
    assert len(phase.ok) == 20
