"""Operators' WatchTransfers: every state change exactly once, in order per transfer; slow readers harm no one."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import text

from gateway.api import convert
from gateway.api.servicers import START_CURSOR_KEY
from gateway.domain.monitoring import TransferChange
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, transfers_pb2
from tests.support import Stack, error_of, wait_until

T = transfers_pb2
LIFE = [T.TRANSFER_STATE_RECEIVED, T.TRANSFER_STATE_DELIVERED, T.TRANSFER_STATE_COMMITTED]
RUN = 1000
# A thousand transfers take about half a minute on PostgreSQL; with the machine's CPUs three times oversubscribed,
# over two minutes. The stream's deadline must outlast the wait, or the feed ends before the last change arrives.
WAIT = 300
STREAM_BUDGET = WAIT + 60


class Watcher:
    """Reads a WatchTransfers stream in a thread into a list, once it knows where the feed starts."""

    def __init__(self, stack: Stack, from_cursor: str = "") -> None:
        self.changes: list[operations_pb2.TransferChange] = []
        self._stream = stack.operations.WatchTransfers(operations_pb2.WatchTransfersRequest(from_cursor=from_cursor),
                                                       timeout=STREAM_BUDGET)
        # The contract: whatever happens after the start cursor arrives is in the feed (operations.proto).
        self.start = int(dict(self._stream.initial_metadata())[START_CURSOR_KEY])
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for change in self._stream:
                self.changes.append(change)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(10)


@pytest.mark.timeout(STREAM_BUDGET + 60)
def test_every_state_change_of_a_thousand_transfers_exactly_once_and_in_order(stack: Stack) -> None:
    watcher = Watcher(stack)
    stalled = stack.operations.WatchTransfers(operations_pb2.WatchTransfersRequest(), timeout=STREAM_BUDGET)  # unread
    try:
        submitted = [stack.submit(stack.instruction(amount_fen=100)).transfer_id for _ in range(RUN)]

        def all_committed() -> bool:
            done = {c.transfer_id for c in watcher.changes if c.state == T.TRANSFER_STATE_COMMITTED}
            return done >= set(submitted)

        wait_until(all_committed, timeout=WAIT, interval=0.2, what="every transfer's COMMITTED in the feed")
    finally:
        watcher.close()
        stalled.cancel()
    per_transfer: dict[str, list[int]] = defaultdict(list)
    for change in watcher.changes:
        per_transfer[change.transfer_id].append(change.state)
    assert set(per_transfer) == set(submitted)
    wrong = {transfer_id: [T.TransferState.Name(s) for s in states]
             for transfer_id, states in per_transfer.items() if states != LIFE}
    shown = dict(list(wrong.items())[:5])
    assert not wrong, f"changes missing, doubled or out of order for {len(wrong)} transfers, e.g. {shown}"
    cursors = [int(c.cursor) for c in watcher.changes]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert cursors[0] > watcher.start


def test_resuming_from_a_cursor_gives_what_came_after_it(stack: Stack) -> None:
    first = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(first, T.TRANSFER_STATE_COMMITTED)
    watcher = Watcher(stack, from_cursor="0")
    try:
        wait_until(lambda: len([c for c in watcher.changes if c.transfer_id == first]) == 3, what="history replayed")
        cursor = watcher.changes[-1].cursor
    finally:
        watcher.close()
    second = stack.submit(stack.instruction()).transfer_id
    resumed = Watcher(stack, from_cursor=cursor)
    try:
        wait_until(lambda: [c.state for c in resumed.changes if c.transfer_id == second] == LIFE, what="resumed")
        assert all(c.transfer_id != first for c in resumed.changes)
    finally:
        resumed.close()
    seen = error_of(lambda: next(iter(stack.operations.WatchTransfers(
        operations_pb2.WatchTransfersRequest(from_cursor="abc"), timeout=5))))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR")


def test_a_watcher_that_stops_reading_is_held_by_flow_control_and_loses_nothing(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unread stream costs the gateway a bounded amount (one flow-control window), then nothing; others go on.

    The spy only counts the changes the gateway turned into messages for streams; it changes nothing.
    """
    produced = {"n": 0}
    real = convert.transfer_change_to_proto

    def counting(change: TransferChange) -> operations_pb2.TransferChange:
        produced["n"] += 1
        return real(change)

    monkeypatch.setattr(convert, "transfer_change_to_proto", counting)
    first = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(first, T.TRANSFER_STATE_COMMITTED)
    history = 20_000  # far more than one flow-control window of changes
    with stack.gateway.engine.begin() as conn:
        conn.execute(text("INSERT INTO transfer_events (transfer_id, state, reason, at) "
                          "VALUES (:t, 'RECEIVED', 'FILLER', :at)"),
                     [{"t": first, "at": datetime(2026, 1, 1, tzinfo=UTC)}] * history)
    # A client that does not grow its receive window (no BDP probing): the gateway may send one window.
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.gateway.ops_port}", options=[("grpc.http2.bdp_probe", 0)])
    stalled = iter(operations_pb2_grpc.OperationsStub(channel).WatchTransfers(
        operations_pb2.WatchTransfersRequest(from_cursor="0"), timeout=60))
    try:
        next(stalled)  # the stream is open; from here nobody reads it

        def settled() -> int:
            before = produced["n"]
            time.sleep(0.5)
            return before if produced["n"] == before else 0

        held_at = wait_until(settled, what="the stalled stream to stop being fed")
        assert 0 < held_at < history // 4, f"the gateway kept producing for a reader that stopped: {held_at}"

        # The gateway goes on: a new transfer commits, and another watcher sees its whole life.
        watcher = Watcher(stack)
        try:
            second = stack.submit(stack.instruction()).transfer_id
            stack.wait_for_state(second, T.TRANSFER_STATE_COMMITTED)
            wait_until(lambda: [c.state for c in watcher.changes if c.transfer_id == second] == LIFE,
                       what="the other watcher to see the new transfer")
        finally:
            watcher.close()
        assert produced["n"] - held_at < 100, "still feeding the stalled stream"

        # The stalled reader resumes: it gets everything, in order, nothing lost.
        cursors = [int(c.cursor) for c in itertools.islice(stalled, history + 5)]
        assert cursors == sorted(cursors) and len(cursors) == history + 5
    finally:
        channel.close()
