"""What operators watch of the quota regime, over a real stack: /metrics (quota figures by pair, clearing months by
state) and the dashboard's /api/snapshot (quota pairs, clearing months with their lines) agree with the database
after a mixed run: grants, draws, reversals, a dissolution, a month closed and acknowledged."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from gateway.domain.quota import clearing_span
from protos.gongji.v1 import relations_pb2, settlements_pb2
from tests.api.quota_calls import (
    consume,
    consumption_message,
    grant,
    grant_message,
    reverse,
    rows,
    send_consumption,
    send_grant,
)
from tests.api.test_metrics import scrape
from tests.api.test_settlement import close, wait_window_state
from tests.support import GANSU, XINJIANG, LoopThread, Stack, start_stack

CHEN = ("620103198203040034", "620100")  # Gansu, employee
LIU = ("650502198803150422", "650500")  # Xinjiang, his wife


def snapshot(stack: Stack) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.gateway.metrics_port}/api/snapshot", timeout=5) as answer:
        return json.loads(answer.read())


def mixed_run(stack: Stack) -> str:
    """Two pairs both ways; the first binding dissolved (its unused quota released); the month closed."""
    grant(stack, 100_000)
    consume(stack, 18_000)
    consume(stack, 4_000)
    refs = [r[0] for r in rows(stack, "SELECT settlement_ref FROM consumptions ORDER BY drawn_fen DESC")]
    reverse(stack, refs[0], 5_000)
    other = stack.bind(CHEN, LIU, "12", GANSU, XINJIANG)
    send_grant(stack, grant_message(stack, 30_000, binding_id=other, sender=GANSU, giver=CHEN), signer=GANSU)
    send_consumption(stack, consumption_message(stack, 7_000, binding_id=other, sender=XINJIANG, person=LIU,
                                                care_pooling_area="650500"), signer=XINJIANG)
    stack.dissolve(stack.binding_id)
    month = clearing_span(stack.clock.now()).window_id
    close(stack, month)
    wait_window_state(stack, month, settlements_pb2.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)
    return month


def test_quota_metrics_and_dashboard_agree_with_the_database(loop_thread: LoopThread, tmp_path: Path,
                                                             db_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, db_url, metrics_listen="127.0.0.1:0")
    try:
        month = mixed_run(stack)
        assert stack.binding(stack.binding_id).state == relations_pb2.BINDING_STATE_DISSOLVED
        in_db = {(g, r): (granted, consumed, released) for g, r, granted, consumed, released in rows(
            stack, "SELECT giver_province, receiver_province, sum(granted_fen), sum(consumed_fen), sum(released_fen) "
                   "FROM quotas GROUP BY giver_province, receiver_province")}
        counts = dict(((g, r), n) for g, r, n in rows(
            stack, "SELECT giver_province, receiver_province, count(*) FROM consumptions "
                   "GROUP BY giver_province, receiver_province"))
        # The dissolution released the first binding's unused 870.00.
        assert in_db == {(XINJIANG, GANSU): (100_000, 17_000, 83_000), (GANSU, XINJIANG): (30_000, 7_000, 0)}

        metrics = scrape(stack)
        figures: dict[tuple[str, str], dict[str, float]] = {}
        for labels, value in metrics["gongji_quota_fen"]:
            figures.setdefault((labels["giver_province"], labels["receiver_province"]), {})[labels["figure"]] = value
        assert figures == {pair: {"granted": g, "consumed": c, "released": r, "available": g - c - r}
                           for pair, (g, c, r) in in_db.items()}
        assert {(s["giver_province"], s["receiver_province"]): v
                for s, v in metrics["gongji_quota_consumptions"]} == counts
        months = {s["state"]: v for s, v in metrics["gongji_clearing_months"]}
        by_state = dict(rows(stack, "SELECT state, count(*) FROM settlement_windows WHERE window_id LIKE 'Q%' "
                                    "GROUP BY state"))
        assert {state: count for state, count in months.items() if count} == by_state == {"ACKNOWLEDGED": 1}
        assert set(months) == {"OPEN", "CLOSED", "ACKNOWLEDGED", "SETTLED"}

        seen = snapshot(stack)
        assert {(q["giver_province"], q["receiver_province"]): (q["granted_fen"], q["consumed_fen"],
                                                                 q["released_fen"], q["available_fen"],
                                                                 q["consumption_count"])
                for q in seen["quota_pairs"]} == {pair: (g, c, r, g - c - r, counts[pair])
                                                  for pair, (g, c, r) in in_db.items()}
        [shown] = [m for m in seen["clearing_months"] if m["window_id"] == month]
        assert shown["state"] == "ACKNOWLEDGED" and shown["pairs"] == []
        assert sorted(shown["acknowledged_by"]) == sorted((XINJIANG, GANSU))
        assert shown["lines"] == [
            {"from_province": GANSU, "to_province": XINJIANG, "consumed_fen": 7_000, "reversed_fen": 0,
             "net_fen": 7_000, "consumption_count": 1, "reversal_count": 0},
            {"from_province": XINJIANG, "to_province": GANSU, "consumed_fen": 22_000, "reversed_fen": 5_000,
             "net_fen": 17_000, "consumption_count": 2, "reversal_count": 1}]
        assert {p["province"]: p["net_fen"] for p in shown["positions"]} == {XINJIANG: -10_000, GANSU: 10_000}
        # The transfers' windows apart: no clearing month among them.
        assert all(not w["window_id"].startswith("Q") for w in seen["windows"])
    finally:
        stack.close()
