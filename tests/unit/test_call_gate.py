"""Stopping: the gate answers new calls UNAVAILABLE / SHUTTING_DOWN and waits for the calls inside."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.errors import CallGate
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


def test_drain_waits_for_the_calls_inside_then_for_a_quiet_moment() -> None:
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
