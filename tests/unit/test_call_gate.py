"""Stopping: the gate answers new calls UNAVAILABLE / SHUTTING_DOWN, waits for the calls inside and
the ones queued at the close, then holds new ones until the server has begun to stop."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.api.gate import CallGate
from gateway.domain.errors import Unavailable


def test_a_closed_gate_refuses_new_calls_but_not_health_checks() -> None:
    gate = CallGate()
    gate.enter("/gongji.v1.Transfers/SubmitTransfer")
    gate.closed = True
    with pytest.raises(Unavailable) as refused:
        gate.enter("/gongji.v1.Transfers/SubmitTransfer")
    assert refused.value.reason == "SHUTTING_DOWN"
    gate.enter("/grpc.health.v1.Health/Check")  # load balancers still see NOT_SERVING
    assert gate.active == 2


def test_drain_waits_for_the_calls_inside() -> None:
    async def scenario() -> float:
        gate = CallGate()
        gate.enter("/gongji.v1.Transfers/SubmitTransfer")
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, gate.leave)  # the call inside finishes after 0.2 s
        started = loop.time()
        await gate.drain(timeout=5)
        assert gate.closed and gate.active == 0
        return loop.time() - started

    assert asyncio.run(scenario()) >= 0.2


def test_drain_gives_up_at_its_timeout() -> None:
    async def scenario() -> None:
        gate = CallGate()
        gate.enter("/gongji.v1.Transfers/SubmitTransfer")  # never leaves
        await asyncio.wait_for(gate.drain(timeout=0.1), timeout=2)

    asyncio.run(scenario())


def test_calls_queued_at_the_close_are_refused_before_drain_ends() -> None:
    """Calls gRPC core queued before the close come through after it: drain waits for a quiet moment."""
    async def scenario() -> tuple[list[float], float]:
        gate = CallGate()
        loop = asyncio.get_running_loop()
        refused_at: list[float] = []

        async def queued_call() -> None:
            try:
                await gate.refuse("/gongji.v1.Transfers/SubmitTransfer")
            except Unavailable:
                refused_at.append(loop.time())

        started = loop.time()
        for delay in (0.01, 0.05, 0.09):  # reach the handlers one after another after the close
            loop.call_later(delay, lambda: loop.create_task(queued_call()))
        await gate.drain(timeout=5)
        return [t - started for t in refused_at], loop.time() - started

    refused, drained = asyncio.run(scenario())
    assert len(refused) == 3 and max(refused) < 0.15  # each answered at once, not held
    assert drained >= max(refused) + CallGate.QUIET_SECONDS


def test_a_caller_that_keeps_retrying_does_not_hold_the_stop_up() -> None:
    async def scenario() -> float:
        gate = CallGate()
        loop = asyncio.get_running_loop()
        stop = False

        async def retrier() -> None:
            while not stop:
                with contextlib.suppress(Unavailable):
                    await gate.refuse("/gongji.v1.Transfers/SubmitTransfer")
                await asyncio.sleep(0.02)

        gate.closed = True
        task = loop.create_task(retrier())
        started = loop.time()
        await gate.drain(timeout=5)
        took = loop.time() - started
        stop = True
        gate.release()
        await task
        return took

    took = asyncio.run(scenario())
    assert CallGate.REFUSE_AT_MOST_SECONDS <= took < CallGate.REFUSE_AT_MOST_SECONDS + CallGate.HOLD_SECONDS + 1


def test_after_drain_new_calls_are_held_until_release_then_refused() -> None:
    """So that no call is on its way when the server stops: held calls are answered after its GOAWAY."""
    async def scenario() -> None:
        gate = CallGate()
        await gate.drain(timeout=1)
        held = asyncio.get_running_loop().create_task(gate.refuse("/gongji.v1.Transfers/SubmitTransfer"))
        await asyncio.sleep(0.1)
        assert not held.done()
        await gate.refuse("/grpc.health.v1.Health/Check")  # health checks are never held nor refused
        gate.release()
        with pytest.raises(Unavailable) as refused:
            await asyncio.wait_for(held, 1)
        assert refused.value.reason == "SHUTTING_DOWN"

    asyncio.run(scenario())


def test_the_stop_ends_streams_waiting_for_their_next_item_and_refuses_new_ones() -> None:
    """WatchTransfers streams end at the close, health watches at the release; the stop never cancels a stream that
    is sending (a cancelled send ends CANCELLED): it ends after that item."""
    async def scenario() -> None:
        gate = CallGate()
        nothing_yet = asyncio.Event()

        async def stream(method: str, sending: bool = False) -> str:
            opened = await gate.open_stream(method)
            try:
                opened.waiting = not sending
                await nothing_yet.wait()  # waiting for a change to send (or, if sending, inside the send)
                return "ended" if opened.ended else "went on"
            except asyncio.CancelledError:
                return "cancelled while waiting" if opened.ended else "cancelled by its client"
            finally:
                gate.close_stream(opened)

        loop = asyncio.get_running_loop()
        watch = loop.create_task(stream("/gongji.v1.Operations/WatchTransfers"))
        sending = loop.create_task(stream("/gongji.v1.Operations/WatchTransfers", sending=True))
        health = loop.create_task(stream("/grpc.health.v1.Health/Watch"))
        await asyncio.sleep(0.01)
        drained = loop.create_task(gate.drain(timeout=5))
        assert await asyncio.wait_for(watch, 1) == "cancelled while waiting"
        with pytest.raises(Unavailable) as refused:
            await gate.open_stream("/gongji.v1.Operations/WatchTransfers")
        assert refused.value.reason == "SHUTTING_DOWN"
        await drained
        assert not health.done() and not sending.done()
        gate.release()
        assert await asyncio.wait_for(health, 1) == "cancelled while waiting"
        nothing_yet.set()
        assert await asyncio.wait_for(sending, 1) == "ended"

    asyncio.run(scenario())


def test_before_an_exit_the_gate_refuses_then_holds_for_ever_and_ends_the_health_watches() -> None:
    """A process that exits holds the last calls instead of stopping its server: its connections close with it."""
    async def scenario() -> None:
        gate = CallGate()
        loop = asyncio.get_running_loop()
        health = await gate.open_stream("/grpc.health.v1.Health/Watch")
        health.waiting = True
        watching = loop.create_task(asyncio.sleep(3600))
        health.task = watching
        await gate.drain(timeout=1, hold=False)
        with pytest.raises(Unavailable):  # not held: refused at once
            await asyncio.wait_for(gate.refuse("/gongji.v1.Transfers/SubmitTransfer"), 0.5)
        assert not watching.done()
        exited = loop.create_task(gate.hold_for_exit(timeout=0.2))
        held = loop.create_task(gate.refuse("/gongji.v1.Transfers/SubmitTransfer"))
        await exited
        assert watching.cancelled() and health.ended
        assert not held.done()
        held.cancel()

    asyncio.run(scenario())
