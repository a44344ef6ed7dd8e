"""The operators' dashboard in real headless Chromium, against a running gateway with real transfers."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import text

from gateway.domain.clock import BEIJING
from gateway.security.keys import ensure_key_pair, public_bytes
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import operations_pb2, transfers_pb2
from tests.api.quota_calls import consume, grant, reverse, rows
from tests.support import CLEAR_PERSONAL_DATA, GANSU, XINJIANG, LoopThread, Stack, register, start_stack

T = TypeVar("T")
S = transfers_pb2
BEIJING_CODE = "110000"
STUCK_SECONDS = 60
CHANGE_FIELDS = {"position", "transfer_id", "state", "at", "reason", "giver_province", "receiver_province",
                 "amount_fen"}
STUCK_FIELDS = {"transfer_id", "state", "giver_province", "receiver_province", "amount_fen", "created_at",
                "updated_at", "age_seconds", "reason"}
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def yuan(fen: int) -> str:
    """As the page shows money: yuan, two decimals, thousands separated."""
    return f"{'−' if fen < 0 else ''}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def dashboard_url(stack: Stack, path: str = "/") -> str:
    return f"http://127.0.0.1:{stack.gateway.metrics_port}{path}"


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_for(driver: WebDriver, condition: Callable[[], T], what: str, timeout: float = 20) -> T:
    """Until `condition` gives something truthy; the page re-renders every 2 s, so elements may go stale."""
    waiting = WebDriverWait(driver, timeout, poll_frequency=0.1,
                            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    result: T = waiting.until(lambda _: condition(), message=f"the dashboard never showed {what}")
    return result


def row(driver: WebDriver, selector: str) -> dict[str, str] | None:
    """A table row as the operator sees it: its whole text, each data-field cell's text, its data-* values."""
    try:
        element = driver.find_element(By.CSS_SELECTOR, selector)
        seen = {"text": element.text, "class": element.get_attribute("class") or ""}
        for name in ("data-state", "data-status", "data-transfer-id", "data-age-seconds"):
            seen[name] = element.get_attribute(name) or ""
        for cell in element.find_elements(By.CSS_SELECTOR, "td[data-field]"):
            seen[cell.get_attribute("data-field") or ""] = cell.text
        return seen
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def seen_row(driver: WebDriver, selector: str) -> dict[str, str]:
    return wait_for(driver, lambda: row(driver, selector), selector)


def element_facts(driver: WebDriver, selector: str) -> dict[str, Any] | None:
    """What the browser rendered for one element: tag, size, place, colours, data-fen."""
    try:
        element = driver.find_element(By.CSS_SELECTOR, selector)
        return {"tag": element.tag_name, "displayed": element.is_displayed(), "width": element.size["width"],
                "height": element.size["height"], "x": element.location["x"],
                "data-fen": element.get_attribute("data-fen"),
                **{name: element.value_of_css_property(name) for name in ("color", "background-color", "fill")}}
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def shown(driver: WebDriver, testid: str) -> str | None:
    try:
        element = driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        return element.text if element.is_displayed() else None
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def committed_between(stack: Stack, giver: str, receiver: str) -> tuple[int, int]:
    with stack.gateway.engine.connect() as conn:
        count, total = conn.execute(text(
            "SELECT count(*), coalesce(sum(amount_fen), 0) FROM transfers "
            "WHERE state = 'COMMITTED' AND giver_province = :g AND receiver_province = :r"),
            {"g": giver, "r": receiver}).one()
    return int(count), int(total)


def assert_no_personal_data(driver: WebDriver, stack: Stack) -> None:
    body = driver.find_element(By.TAG_NAME, "body").text
    source = driver.page_source
    _, _, snapshot = http_get(dashboard_url(stack, "/api/snapshot"))
    for where, content in (("the page's text", body), ("the page's HTML", source),
                           ("/api/snapshot", snapshot.decode())):
        leaked = [value[:6] + "…" for value in CLEAR_PERSONAL_DATA if value in content]
        assert not leaked, f"clear personal data in {where} (D19): {leaked}"


def add_suspended_province(stack: Stack, tmp_path: Path) -> None:
    """Beijing, registered and suspended through the Operations API, so the page shows both statuses."""
    key = ensure_key_pair(tmp_path / "beijing" / "110000-k1.key", tmp_path / "beijing" / "110000-k1.pub")
    register(stack.operations, BEIJING_CODE, "北京", "127.0.0.1:1", "110000-k1", public_bytes(key))
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=BEIJING_CODE, status=operations_pb2.PROVINCE_STATUS_SUSPENDED), timeout=5)


@pytest.mark.timeout(240)
def test_operators_see_the_exchange_live(loop_thread: LoopThread, tmp_path: Path, db_url: str,
                                         browser: WebDriver) -> None:
    stack = start_stack(loop_thread, tmp_path, db_url, metrics_listen="127.0.0.1:0",
                        dashboard_stuck_seconds=STUCK_SECONDS)
    try:
        check_the_dashboard(stack, browser, tmp_path)
    finally:
        stack.close()


def check_the_dashboard(stack: Stack, driver: WebDriver, tmp_path: Path) -> None:
    amounts = (1_000, 2_550, 150_075)  # at most 200000 fen each (D12); the sum shows a thousands separator
    committed = [stack.submit(stack.instruction(amount_fen=fen)).transfer_id for fen in amounts]
    for transfer_id in committed:
        stack.wait_for_state(transfer_id, S.TRANSFER_STATE_COMMITTED)
    add_suspended_province(stack, tmp_path)
    stack.wait_for_outbox_idle(XINJIANG)
    stack.wait_for_outbox_idle(GANSU)

    driver.get(dashboard_url(stack))
    assert "operators' dashboard" in driver.title
    # Set once: if the page were reloaded, this would be gone.
    driver.execute_script("window.__sameDocument = true;")

    # Provinces and their status; a suspended one looks different from an active one.
    for code, name, status in ((XINJIANG, "新疆", "ACTIVE"), (GANSU, "甘肃", "ACTIVE"),
                               (BEIJING_CODE, "北京", "SUSPENDED")):
        seen = wait_for(driver, lambda c=code: row(driver, f'[data-testid="province-{c}"]'), f"province {code}")
        assert (seen["code"], seen["name"], seen["status"], seen["data-status"]) == (code, name, status, status)
    active = wait_for(driver, lambda: element_facts(driver, f'[data-testid="province-status-{GANSU}"]'), "a badge")
    suspended = wait_for(driver, lambda: element_facts(driver, f'[data-testid="province-status-{BEIJING_CODE}"]'),
                         "a badge")
    assert active["color"] != suspended["color"] and active["background-color"] != suspended["background-color"]

    # The live feed: each transfer's changes, newest first, the last one COMMITTED with its amount.
    for transfer_id, fen in zip(committed, amounts, strict=True):
        seen = wait_for(driver, lambda t=transfer_id: row(
            driver, f'#feed tr[data-transfer-id="{t}"][data-state="COMMITTED"]'), f"{transfer_id} COMMITTED")
        assert seen["transfer"] == transfer_id and seen["state"] == "COMMITTED"
        assert seen["amount"] == yuan(fen) and f"{XINJIANG} → {GANSU}" in seen["text"]
    states = driver.execute_script(
        "return [...document.querySelectorAll('#feed tbody tr')].map(r => [r.dataset.transferId, r.dataset.state])")
    newest = committed[-1]
    assert [state for tid, state in states if tid == newest] == ["COMMITTED", "DELIVERED", "RECEIVED"]

    # Flows: the figure from Xinjiang to Gansu is the database's sum, in the table and in the chart.
    count, total = committed_between(stack, XINJIANG, GANSU)
    assert total == sum(amounts)
    pair = wait_for(driver, lambda: (r := row(driver, f'[data-testid="pair-{XINJIANG}-{GANSU}"]'))
                    and r["committed"] == yuan(total) and r, f"{yuan(total)} committed from {XINJIANG} to {GANSU}")
    assert pair["committed-count"] == str(count)
    assert seen_row(driver, f'[data-testid="flow-{XINJIANG}"]')["out"] == yuan(total)
    assert seen_row(driver, f'[data-testid="flow-{GANSU}"]')["in"] == yuan(total)
    chart = wait_for(driver, lambda: element_facts(driver, '[data-testid="flows-chart"]'), "the flows chart")
    assert chart["tag"] == "svg" and chart["displayed"] and chart["height"] > 0
    bar = wait_for(driver, lambda: element_facts(driver, f'[data-testid="flow-bar-{XINJIANG}-out"]'), "a bar")
    assert bar["tag"] == "rect" and bar["data-fen"] == str(total) and bar["width"] > 0
    assert wait_for(driver, lambda: element_facts(driver, f'[data-testid="flow-bar-{GANSU}-in"]'), "a bar")["width"] > 0

    # The outbox, drained.
    wait_for(driver, lambda: shown(driver, "outbox-backlog") == "0", "an empty outbox backlog")
    assert shown(driver, "oldest-undelivered") == "nothing waiting"
    assert shown(driver, "stuck-none"), "with nothing stuck, the page says so"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", shown(driver, "last-updated") or "")
    assert shown(driver, "error-banner") is None

    # A transfer the receiver never confirms appears without a reload, then becomes stuck.
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    waiting = stack.submit(stack.instruction(amount_fen=777)).transfer_id
    stack.wait_for_state(waiting, S.TRANSFER_STATE_DELIVERED)
    wait_for(driver, lambda: row(driver, f'#feed tr[data-transfer-id="{waiting}"][data-state="DELIVERED"]'),
             f"{waiting} DELIVERED in the feed")
    assert shown(driver, "stuck-none"), f"{waiting} is younger than {STUCK_SECONDS} s: not stuck yet"
    stack.clock.advance(STUCK_SECONDS + 5)
    stuck = wait_for(driver, lambda: row(driver, f'[data-testid="stuck-{waiting}"]'), f"{waiting} as stuck")
    assert stuck["state"] == "DELIVERED" and stuck["amount"] == yuan(777)
    assert int(stuck["data-age-seconds"]) >= STUCK_SECONDS and re.fullmatch(r"1 min \d\d s", stuck["age"])
    assert shown(driver, "stuck-none") is None
    listed = driver.execute_script(
        "return [...document.querySelectorAll('#stuck tbody tr')].map(r => r.dataset.transferId)")
    assert listed == [waiting], "final transfers are never stuck"
    assert driver.execute_script("return window.__sameDocument === true"), "the page was reloaded"

    driver.save_screenshot(str(tmp_path / "dashboard.png"))
    assert_no_personal_data(driver, stack)


# Makes the page's fetch fail (true) or pass through again (false), as when the gateway is unreachable.
FAIL_FETCH = """
const fail = arguments[0];
window.__realFetch = window.__realFetch || window.fetch;
window.fetch = async (...args) => {
  if (fail) throw new Error("connection refused");
  return window.__realFetch(...args);
};
"""


@pytest.mark.timeout(180)
def test_the_page_shows_settlement_windows_and_fetch_errors(loop_thread: LoopThread, tmp_path: Path,
                                                             sqlite_url: str, browser: WebDriver) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url, metrics_listen="127.0.0.1:0")
    try:
        driver = browser
        driver.get(dashboard_url(stack))
        wait_for(driver, lambda: shown(driver, "windows-none"), "that there are no settlement windows")
        for amount in (150_000, 75):
            stack.wait_for_state(stack.submit(stack.instruction(amount_fen=amount)).transfer_id,
                                 S.TRANSFER_STATE_COMMITTED)
        closed = stack.operations.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(),
                                                        timeout=10).window
        wid = closed.window_id
        wait_for(driver, lambda: shown(driver, f"window-{wid}"), "the settlement window")
        assert shown(driver, "windows-none") is None
        # The stub provinces acknowledge their figures by themselves: the page follows the window's state.
        wait_for(driver, lambda: shown(driver, f"window-state-{wid}") == "ACKNOWLEDGED", "the window ACKNOWLEDGED")
        assert f"{XINJIANG} → {GANSU}" in (shown(driver, f"window-pairs-{wid}") or "")
        assert yuan(150_075) in (shown(driver, f"window-pairs-{wid}") or "")
        assert f"acknowledged by: {GANSU}, {XINJIANG}" in (shown(driver, f"window-{wid}") or "")
        assert seen_row(driver, f'[data-testid="position-{wid}-{GANSU}"]')["net"] == "+1,500.75"
        assert seen_row(driver, f'[data-testid="position-{wid}-{XINJIANG}"]')["net"] == "−1,500.75"
        receives = wait_for(driver, lambda: element_facts(driver, f'[data-testid="position-bar-{GANSU}"]'), "a bar")
        pays = wait_for(driver, lambda: element_facts(driver, f'[data-testid="position-bar-{XINJIANG}"]'), "a bar")
        assert receives["tag"] == "rect" and receives["width"] > 0 and pays["width"] > 0
        assert receives["fill"] != pays["fill"]
        assert receives["x"] > pays["x"], "positive to the right of the axis, negative to the left"
        opens = closed.opens_at.ToDatetime(tzinfo=UTC).astimezone(BEIJING)
        ends = closed.closes_at.ToDatetime(tzinfo=UTC).astimezone(BEIJING)
        assert f"{opens:%Y-%m-%d %H:%M:%S} → {ends:%Y-%m-%d %H:%M:%S}" in (shown(driver, f"window-{wid}") or "")
        driver.save_screenshot(str(tmp_path / "windows.png"))

        # The gateway cannot be reached: a banner says so and the last figures stay; it goes when it answers.
        driver.execute_script(FAIL_FETCH, True)
        banner = wait_for(driver, lambda: shown(driver, "error-banner"), "the error banner")
        assert "Cannot read the gateway (connection refused)" in banner
        assert shown(driver, f"window-{wid}"), "the last figures stay on screen"
        driver.execute_script(FAIL_FETCH, False)
        wait_for(driver, lambda: shown(driver, "error-banner") is None and shown(driver, f"window-{wid}"),
                 "the banner gone once the gateway answers")
        assert_no_personal_data(driver, stack)
    finally:
        stack.close()


def test_the_page_shows_quota_totals_by_pair_and_the_clearing_months(loop_thread: LoopThread, tmp_path: Path,
                                                                      sqlite_url: str, browser: WebDriver) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url, metrics_listen="127.0.0.1:0")
    try:
        driver = browser
        driver.get(dashboard_url(stack))
        wait_for(driver, lambda: shown(driver, "quota-pairs-none"), "that there are no quotas")
        wait_for(driver, lambda: shown(driver, "clearing-none"), "that there are no clearing months")
        grant(stack, 100_000)
        drawn = consume(stack, 18_000)
        reverse(stack, rows(stack, "SELECT settlement_ref FROM consumptions")[0][0], 5_000)
        wait_for(driver, lambda: (row(driver, f'[data-testid="quota-pair-{XINJIANG}-{GANSU}"]') or {}).get(
            "consumed") == yuan(13_000), "the reversal in the pair's figures")
        pair = seen_row(driver, f'[data-testid="quota-pair-{XINJIANG}-{GANSU}"]')
        assert (pair["granted"], pair["consumed"], pair["released"], pair["available"], pair["consumptions"]) == (
            yuan(100_000), yuan(13_000), yuan(0), yuan(87_000), "1")
        assert shown(driver, "quota-pairs-none") is None
        month = drawn.clearing_window_id
        wait_for(driver, lambda: shown(driver, f"clearing-state-{month}") == "OPEN", "the month OPEN")

        stack.operations.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(window_id=month),
                                               timeout=10)
        wait_for(driver, lambda: shown(driver, f"clearing-state-{month}") == "ACKNOWLEDGED", "the month ACKNOWLEDGED")
        line = seen_row(driver, f'[data-testid="line-{month}-{XINJIANG}-{GANSU}"]')
        assert (line["consumed"], line["reversed"], line["net"]) == (yuan(18_000), yuan(5_000), "+" + yuan(13_000))
        assert f"acknowledged by: {GANSU}, {XINJIANG}" in (shown(driver, f"clearing-{month}") or "")
        assert shown(driver, "clearing-none") is None and shown(driver, f"window-{month}") is None
        driver.save_screenshot(str(tmp_path / "clearing.png"))
        assert_no_personal_data(driver, stack)
    finally:
        stack.close()


def test_the_http_port_serves_metrics_the_page_and_a_snapshot_without_personal_data(
        loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url, metrics_listen="127.0.0.1:0", dashboard_stuck_seconds=0)
    try:
        stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
        transfer_id = stack.submit(stack.instruction(amount_fen=4_321)).transfer_id
        stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DELIVERED)

        status, headers, body = http_get(dashboard_url(stack, "/"))
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"https://" not in body and b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b""), \
            "the page loads nothing from elsewhere"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        status, headers, body = http_get(dashboard_url(stack, "/metrics"))
        assert status == 200 and b"gongji_transfers" in body

        status, headers, body = http_get(dashboard_url(stack, "/api/snapshot"))
        assert status == 200 and headers["Content-Type"] == "application/json"
        snapshot: dict[str, Any] = json.loads(body)
        assert ISO_UTC.fullmatch(snapshot["generated_at"])
        assert {p["code"]: p["status"] for p in snapshot["provinces"]} == {XINJIANG: "ACTIVE", GANSU: "ACTIVE"}
        changes = [c for c in snapshot["recent_changes"] if c["transfer_id"] == transfer_id]
        assert [c["state"] for c in changes] == ["DELIVERED", "RECEIVED"]  # newest first
        assert all(set(c) == CHANGE_FIELDS and c["amount_fen"] == 4_321 and ISO_UTC.fullmatch(c["at"])
                   for c in changes)
        (stuck,) = snapshot["stuck"]  # a threshold of 0: every transfer not final is stuck
        assert set(stuck) == STUCK_FIELDS and stuck["transfer_id"] == transfer_id and stuck["amount_fen"] == 4_321
        pair = next(p for p in snapshot["pairs"] if (p["giver_province"], p["receiver_province"]) == (XINJIANG, GANSU))
        assert (pair["in_flight_count"], pair["in_flight_fen"], pair["committed_fen"]) == (1, 4_321, 0)
        assert snapshot["windows"] == [] and snapshot["stuck_after_seconds"] == 0
        assert not [v for v in CLEAR_PERSONAL_DATA if v in body.decode()], "personal data in the snapshot (D19)"

        assert http_get(dashboard_url(stack, "/nothing-here"))[0] == 404
        status, headers, _ = http_get(dashboard_url(stack, "/api/snapshot"), method="POST")
        assert status == 405 and headers["Allow"] == "GET"
        assert http_get(dashboard_url(stack, "/metrics"), method="DELETE")[0] == 405
    finally:
        stack.close()
