"""No sum the gateway computes can overflow a signed 64-bit integer: every amount is bounded (D11)."""

from __future__ import annotations

import grpc

from gateway.domain.money import MAX_AMOUNT_FEN
from protos.gongji.v1 import operations_pb2, transfers_pb2
from tests.support import XINJIANG, Stack, error_of


def test_amounts_and_limits_beyond_the_bound_are_refused(stack: Stack) -> None:
    for amount in (MAX_AMOUNT_FEN + 1, 2**62):
        seen = error_of(lambda amount=amount: stack.submit(stack.instruction(amount_fen=amount)))
        assert (seen.code, seen.reason, seen.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                    "INVALID_AMOUNT", "amount_fen")
    seen = error_of(lambda: stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=XINJIANG, policy=operations_pb2.ProvincePolicy(max_transfer_fen=2**62)), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY")
    seen = error_of(lambda: stack.propose(authorised_amount_fen=2**62))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")


def test_the_largest_amounts_sum_without_overflow_in_stats_and_settlement(stack: Stack) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=XINJIANG, policy=operations_pb2.ProvincePolicy(max_transfer_fen=MAX_AMOUNT_FEN, blackout_start_minute=0,
                                                            blackout_end_minute=0, daily_transfer_limit=100)),
        timeout=5)
    for _ in range(3):
        stack.wait_for_state(stack.submit(stack.instruction(amount_fen=MAX_AMOUNT_FEN)).transfer_id,
                             transfers_pb2.TRANSFER_STATE_COMMITTED)
    stats = stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=5)
    committed = [f for f in stats.transfers if f.state == transfers_pb2.TRANSFER_STATE_COMMITTED]
    assert [(f.count, f.amount_fen) for f in committed] == [(3, 3 * MAX_AMOUNT_FEN)]
    window = stack.operations.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(), timeout=5).window
    assert [(p.gross_fen, p.transfer_count) for p in window.pairs] == [(3 * MAX_AMOUNT_FEN, 3)]
