"""The operators' CLI on the quota regime over a real stack: `gongji quotas show/stats`, and the monthly clearing
through `gongji settlement close/show/ack-status/record-payment/export` with clearing month ids (Q10)."""

from __future__ import annotations

import csv
import io

from gateway.domain.clock import BEIJING
from gateway.domain.quota import clearing_span
from tests.api.cli_support import gongji, gongji_json, invoke, wide_terminal  # noqa: F401
from tests.api.quota_calls import consume, grant, reverse, rows
from tests.support import GANSU, XINJIANG, Stack, wait_until


def test_quotas_show_pages_the_consumptions_newest_first_and_stats_sums_the_pairs(stack: Stack) -> None:
    grant(stack, 100_000)
    drawn = [consume(stack, amount) for amount in (18_000, 2_500, 700)]
    refs = [r[0] for r in rows(stack, "SELECT settlement_ref FROM consumptions ORDER BY created_at, consumption_id")]
    reverse(stack, refs[0], 5_000)
    ids = [r[0] for r in rows(stack, "SELECT consumption_id FROM consumptions ORDER BY created_at DESC, "
                                     "consumption_id DESC")]
    assert len(drawn) == len(ids) == 3

    shown = gongji_json(stack, "quotas", "show", stack.binding_id)
    # JSON as protobuf gives it: int64 as strings, zeros left out (nothing released).
    assert shown["quota"] == {"granted_fen": "100000", "consumed_fen": "16200", "available_fen": "83800"}
    assert int(shown["version"]) == 5  # the grant, three draws, one reversal
    assert [c["consumption_id"] for c in shown["consumptions"]] == ids  # newest first
    assert shown["binding"]["binding_id"] == stack.binding_id and "next_page_token" not in shown

    code, out = gongji(stack, "quotas", "show", stack.binding_id, "--page-size", "2")
    assert code == 0, out
    assert "¥1,000.00" in out and "¥162.00" in out and "¥838.00" in out and "5 changes" in out
    assert ids[0] in out and ids[1] in out and ids[2] not in out and "more available: --page-token" in out
    assert "PARTLY_REVERSED" not in out  # the reversed one is the oldest: on the next page
    token = out.split("--page-token", 1)[1].split()[0]
    code, out = gongji(stack, "quotas", "show", stack.binding_id, "--page-size", "2", "--page-token", token)
    assert code == 0 and ids[2] in out and ids[0] not in out and "PARTLY_REVERSED" in out and "¥50.00" in out
    assert "more available" not in out
    # The notices owed about it, with their attempts: to Gansu each change of the figures, to Xinjiang each
    # consumption and reversal.
    assert (out.count("NOTIFY_QUOTA"), out.count("NOTIFY_CONSUMPTION")) == (5, 4)

    code, out = gongji(stack, "quotas", "show", "no-such-binding")
    assert code == 1 and "NOT_FOUND BINDING_NOT_FOUND" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1

    stats = gongji_json(stack, "quotas", "stats")
    assert [(p["giver_province"], p["receiver_province"], {k: int(v) for k, v in p["totals"].items()},
             int(p["consumption_count"])) for p in stats["quota_pairs"]] == [
        (XINJIANG, GANSU, {"granted_fen": 100_000, "consumed_fen": 16_200, "available_fen": 83_800}, 3)]
    code, out = gongji(stack, "quotas", "stats")
    assert code == 0 and f"{XINJIANG}" in out and "¥838.00" in out and "¥162.00" in out


def test_the_clearing_month_through_the_settlement_commands(stack: Stack) -> None:
    grant(stack, 100_000)
    consume(stack, 18_000)
    reverse(stack, rows(stack, "SELECT settlement_ref FROM consumptions")[0][0], 5_000)
    month = clearing_span(stack.clock.now()).window_id

    closed = gongji_json(stack, "settlement", "close", month)
    assert closed["window_id"] == month and "pairs" not in closed
    assert closed["lines"] == [{"from_province": XINJIANG, "to_province": GANSU, "consumed_fen": "18000",
                                "reversed_fen": "5000", "net_fen": "13000", "consumption_count": "1",
                                "reversal_count": "1"}]
    wait_until(lambda: gongji_json(stack, "settlement", "show", month)["state"]
               == "SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED", what="both stubs to acknowledge the month")
    code, out = gongji(stack, "settlement", "show", month)
    assert code == 0 and f"clearing month {month}" in out and "¥180.00" in out and "¥50.00" in out
    assert "¥130.00" in out and "-¥130.00" in out and "0/1 pairs" in out
    code, out = gongji(stack, "settlement", "ack-status", month)
    assert code == 0 and "2 of 2 provinces acknowledged" in out

    listed = [w["window_id"] for w in gongji_json(stack, "settlement", "show", "--kind", "clearing")["windows"]]
    assert listed == [month]
    transfers = gongji_json(stack, "settlement", "show", "--kind", "transfers").get("windows", [])
    assert all(not w["window_id"].startswith("Q") for w in transfers)
    code, out = gongji(stack, "settlement", "show", "--kind", "clearing")
    assert code == 0 and month in out and "¥130.00" in out and "0/1" in out

    today = stack.clock.now().astimezone(BEIJING).date().isoformat()
    code, out = gongji(stack, "settlement", "record-payment", month, "--from", XINJIANG, "--to", GANSU, "--bank",
                       "ICBC", "--serial", "ICBC-Q-0001", "--date", today)
    assert code == 0 and "1/1 pairs paid" in out and "SETTLED" in out

    result = invoke(stack, "settlement", "export", month, "--format", "csv")
    assert result.exit_code == 0, result.output
    exported = list(csv.DictReader(io.StringIO(result.stdout)))
    assert exported == [{"window_id": month, "state": "SETTLED", "from_province": XINJIANG, "to_province": GANSU,
                         "consumed_fen": "18000", "reversed_fen": "5000", "net_fen": "13000", "net_yuan": "130.00",
                         "consumption_count": "1", "reversal_count": "1", "paid_bank": "ICBC",
                         "paid_serial_number": "ICBC-Q-0001", "paid_date": today}]
