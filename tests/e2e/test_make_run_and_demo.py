"""`make run` then `make demo`, as a newcomer would run them: real processes on free loopback ports."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.security.tls import province_dns
from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import province_pb2, province_pb2_grpc
from scripts.devtls import channel_as

ROOT = Path(__file__).resolve().parents[2]
GRPC_CORE_LINE = re.compile(r"[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]")
CLEAR_PERSONAL_DATA = ("650502199001011230", "620102196505120026", "620103198203040034", "620102201508160027",
                       "张伟", "李秀英", "陈志刚", "王小雨")


def refused_code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]
    raise AssertionError("the call was answered")


def gansu_cannot_drive_xinjiangs_stub(env: dict[str, str], tls: Path) -> None:
    """Gansu's certificate reaches neither Xinjiang's stub inbox nor its control service, which is not on
    the inbox port at all."""
    inbox, control = env["GONGJI_STUB_650000"], env["GONGJI_STUB_650000_CONTROL"]
    server = province_dns("650000")
    with channel_as(inbox, server, tls, "province-620000") as as_gansu, \
            channel_as(control, server, tls, "province-620000") as gansu_to_control, \
            channel_as(inbox, server, tls) as operator_to_inbox:
        query = province_pb2.CheckMemberRequest()
        assert refused_code(lambda: province_pb2_grpc.ProvinceInboxStub(as_gansu).CheckMember(query, timeout=5)) == \
            grpc.StatusCode.PERMISSION_DENIED
        configure = control_pb2.Behaviour(reject_reason="STEERED")
        assert refused_code(lambda: control_pb2_grpc.StubControlStub(gansu_to_control).Configure(
            configure, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        assert refused_code(lambda: control_pb2_grpc.StubControlStub(operator_to_inbox).Configure(
            configure, timeout=5)) == grpc.StatusCode.UNIMPLEMENTED


def quota_story_told(out: str) -> None:
    """Step 4 of the Hami seed as `make demo` tells it: grant, bill own account first, return, clearing, release."""
    assert "gateway: OK, receipt verified: True; granted 1,000.00, consumed 0.00, released 0.00, available 1,000.00" \
        in out
    told = [line.strip() for line in out.splitlines() if " was told: " in line]
    assert told[0].startswith("Xinjiang 650000 was told: nothing; his account 5,000.00, frozen 1,000.00"), told
    assert told[1] == "Gansu 620000 was told: quota GRANTED 1,000.00 yuan, available now 1,000.00", told
    assert "her own account pays 120.00, the quota 180.00, she pays 0.00 herself" in out
    assert told[2].startswith("Xinjiang 650000 was told: consumption CONSUMED 180.00 yuan") and told[2].endswith(
        "his account 4,820.00, frozen 820.00, debited for her 180.00"), told
    assert told[3] == "Gansu 620000 was told: quota CONSUMED 180.00 yuan, available now 820.00", told
    assert "consumption PARTLY_REVERSED (50.00 of 180.00 reversed)" in out
    assert told[4].startswith("Xinjiang 650000 was told: consumption REVERSED 50.00 yuan") and told[4].endswith(
        "his account 4,870.00, frozen 870.00, debited for her 130.00"), told
    assert "The operator closes clearing month Q" in out or "closed after it ends, not now" in out
    assert told[6] == ("Xinjiang 650000 was told: quota RELEASED 870.00 yuan (released to the giver 870.00), "
                       "available now 0.00; his account 4,870.00, frozen 0.00, debited for her 130.00"), told
    assert "granted 1,000.00, consumed 130.00, released 870.00, available 0.00" in out
    assert "released 870.00: the same as the gateway" in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("dispatchers", ["0", "1"], ids=["outbox in process", "outbox dispatcher process"])
def test_devstack_serves_and_the_demo_tells_the_story(tmp_path: Path, dispatchers: str) -> None:
    env = {**os.environ, "GONGJI_VAR": str(tmp_path / "var"), "GONGJI_OUTBOX_DISPATCHERS": dispatchers,
           "GONGJI_LISTEN": f"127.0.0.1:{free_port()}", "GONGJI_OPS_LISTEN": f"127.0.0.1:{free_port()}",
           "GONGJI_METRICS_LISTEN": "127.0.0.1:0",
           # One variant logs JSON lines, as production would configure it.
           "GONGJI_LOG_JSON": "true" if dispatchers == "1" else "false",
           "GONGJI_STUB_650000": f"127.0.0.1:{free_port()}", "GONGJI_STUB_620000": f"127.0.0.1:{free_port()}",
           "GONGJI_STUB_650000_CONTROL": f"127.0.0.1:{free_port()}",
           "GONGJI_STUB_620000_CONTROL": f"127.0.0.1:{free_port()}"}
    stack = subprocess.Popen([sys.executable, "-m", "scripts.devstack"], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stack.stdout or []], daemon=True).start()
    printed: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops everything" in line for line in printed):
            assert stack.poll() is None, "".join(printed)
            assert time.monotonic() < deadline, "make run did not become ready:\n" + "".join(printed)
            try:
                printed.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        banner = "".join(printed)
        assert env["GONGJI_LISTEN"] in banner and "650000" in banner and "620000" in banner
        assert "mutual TLS from the development CA" in banner
        # Mutual TLS: a plaintext call to the gateway's ports fails.
        for port in (env["GONGJI_LISTEN"], env["GONGJI_OPS_LISTEN"]):
            with grpc.insecure_channel(port) as plain, pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        gansu_cannot_drive_xinjiangs_stub(env, tmp_path / "var" / "tls")

        demo = subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=60)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        out = demo.stdout
        assert "(code 52): binding" in out and "ACTIVE, consent by FACE" in out
        assert "(code 28, son-in-law): refused, FAILED_PRECONDITION INELIGIBLE_RELATION" in out
        assert "ACTIVE, consent by GUARDIAN_DOCUMENT" in out
        assert out.count("OK DISSOLVED") == 2
        assert "path: RECEIVED -> DELIVERED -> COMMITTED" in out
        # Both provinces' view: each was told COMMITTED once, and the receiver's side holds the credit.
        views = {line.split(":", 1)[0].strip(): line for line in out.splitlines()
                 if line.strip().startswith(("Xinjiang 650000 (", "Gansu 620000 ("))}
        assert set(views) == {"Xinjiang 650000 (giver's side)", "Gansu 620000 (receiver's side)"}, views
        for line in views.values():
            assert "gateway says COMMITTED" in line and "outcome told: COMMITTED (told 1x)" in line, line
        assert "credit: 500.00 yuan CREDITED" in views["Gansu 620000 (receiver's side)"]
        # Settlement: the window closes with Xinjiang owing Gansu, both agree, the payment settles it.
        assert "owed 650000 -> 620000: 500.00 yuan in 1 transfer(s)" in out
        assert "position of 620000: receives 500.00 yuan" in out and "position of 650000: pays 500.00 yuan" in out
        assert "net positions sum to 0.00 yuan" in out
        assert "acknowledged by 620000, 650000" in out and "window SETTLED" in out
        # The operators' CLI against these processes: the routing table, the transfer, the settled window.
        def gongji(*args: str) -> str:
            done = subprocess.run([str(Path(sys.executable).parent / "gongji"), *args, "--ops",
                                   env["GONGJI_OPS_LISTEN"]], cwd=ROOT, text=True, capture_output=True, timeout=30,
                                  env={**env, "GONGJI_TLS_DIR": str(tmp_path / "var" / "tls")})
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        assert {p["code"] for p in json.loads(gongji("provinces", "list", "--json"))["provinces"]} == {
            "650000", "620000"}
        transfer_id = re.search(r"gateway receipt: transfer (\S+),", out).group(1)  # type: ignore[union-attr]
        shown = gongji("transfers", "show", transfer_id)
        assert "COMMITTED" in shown and "650502" in shown and "650502199001011230" not in shown
        window_id = re.search(r"closes settlement window (\S+) ", out).group(1)  # type: ignore[union-attr]
        window = json.loads(gongji("settlement", "show", window_id, "--json"))
        window = window.get("window", window)
        assert window["state"] == "SETTLEMENT_WINDOW_STATE_SETTLED" and len(window["payments"]) == 1
        assert "OK: replay=True, same receipt as the first answer: True" in out
        assert "refused: ALREADY_EXISTS MODIFIED_REQUEST" in out
        quota_story_told(out)
        # Runnable again on the same `make run`: fresh bindings, fresh ids, the same story.
        again = subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=ROOT, env=env, text=True,
                               capture_output=True, timeout=90)
        assert again.returncode == 0, again.stdout + again.stderr
        quota_story_told(again.stdout)
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(30)
    while not lines.empty():
        printed.append(lines.get())
    assert stack.returncode == 0, "".join(printed)
    if dispatchers == "1":
        gateway_log = (tmp_path / "var" / "logs" / "gateway.log").read_text().splitlines()
        # Every log line is one JSON object (the file also holds the readiness line printed on stdout).
        # gRPC's C core writes its own lines to stderr (e.g. a refused plaintext handshake): not ours.
        ours = [line for line in gateway_log
                if line.strip() and not line.startswith("gateway ready:") and not GRPC_CORE_LINE.match(line)]
        entries = [json.loads(line) for line in ours]
        assert entries and all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    # The tamper-evident record verifies after the demo; one changed byte of one entry is found and named.
    database = f"sqlite:///{tmp_path / 'var' / 'gongji.db'}"
    gongji_bin = str(Path(sys.executable).parent / "gongji")
    verified = subprocess.run([gongji_bin, "audit", "verify", "--database", database], cwd=ROOT, text=True,
                              capture_output=True, timeout=60)
    assert verified.returncode == 0 and "audit chain verifies" in verified.stdout, verified.stdout + verified.stderr
    entries = int(re.search(r"verifies: (\d+) entries", verified.stdout).group(1))  # type: ignore[union-attr]
    assert entries >= 15
    assert "1 signed checkpoint(s)" in verified.stdout  # the one the gateway signed as it stopped
    with sqlite3.connect(tmp_path / "var" / "gongji.db") as conn:
        (detail,) = conn.execute("SELECT detail FROM audit_log WHERE seq = 7").fetchone()
        conn.execute("UPDATE audit_log SET detail = ? WHERE seq = 7", (detail + " ",))
    tampered = subprocess.run([gongji_bin, "audit", "verify", "--database", database], cwd=ROOT, text=True,
                              capture_output=True, timeout=60)
    assert tampered.returncode == 1 and "entry 7 was altered" in tampered.stderr, tampered.stdout + tampered.stderr
    # D19: nothing the processes printed or logged shows an ID number or name in clear.
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "var" / "logs").glob("*.log"))
    for shown in (out, demo.stderr, "".join(printed), logs):
        for clear in CLEAR_PERSONAL_DATA:
            assert clear not in shown
    # Nor does anything under var/ — database, write-ahead log, logs, keys — hold one (encrypted at rest).
    files = [p for p in (tmp_path / "var").rglob("*") if p.is_file()]
    assert any(p.name == "gongji.db" for p in files)
    for path in files:
        content = path.read_bytes()
        leaked = [clear[:6] for clear in CLEAR_PERSONAL_DATA if clear.encode() in content]
        assert not leaked, f"{path.relative_to(tmp_path)} holds personal data in clear: {leaked}"
