"""The transfer path end to end over real channels: gateway, two stub provinces, a real database."""

from __future__ import annotations

from protos.gongji.v1 import transfers_pb2
from tests.support import GANSU, XINJIANG, Stack, wait_until


def test_happy_path_reaches_committed_and_both_provinces_are_told(stack: Stack) -> None:
    instruction = stack.instruction(amount_fen=50_000)
    answer = stack.submit(instruction)

    assert answer.state == transfers_pb2.TRANSFER_STATE_RECEIVED and not answer.replay
    receipt = stack.verify_receipt(answer.receipt, instruction.SerializeToString())
    assert receipt.state == "RECEIVED" and receipt.subject_id == instruction.header.message_id

    view = stack.wait_for_state(answer.transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    assert [e.state for e in view.history] == [
        transfers_pb2.TRANSFER_STATE_RECEIVED, transfers_pb2.TRANSFER_STATE_DELIVERED,
        transfers_pb2.TRANSFER_STATE_COMMITTED]
    assert view.giver_id_masked == "650502********1230" and view.amount_fen == 50_000

    def told(province: str) -> list:
        return [n for n in stack.snapshot(province).notifications if n.transfer_id == answer.transfer_id]

    for province in (XINJIANG, GANSU):
        notes = wait_until(lambda p=province: told(p), what=f"{province} told")
        assert [(n.state, n.times_received) for n in notes] == [(transfers_pb2.TRANSFER_STATE_COMMITTED, 1)]
    credit = [c for c in stack.snapshot(GANSU).credits if c.transfer_id == answer.transfer_id]
    assert [(c.amount_fen, c.status) for c in credit] == [(50_000, "CREDITED")]
