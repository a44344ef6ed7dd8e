"""The operators' `gongji` CLI against a running gateway (typer's runner, real gRPC)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from rich.console import Console
from rich.table import Table

from gateway.cli import app
from gateway.cli.output import add_row, csv_text, field_grid, json_text, plain_yuan, shown, yuan
from gateway.cli.provinces import load_public_key
from gateway.cli.settlement import write_csv
from gateway.domain.clock import BEIJING
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import operations_pb2, settlements_pb2, transfers_pb2
from tests.api.cli_support import committed, gongji, gongji_json, invoke, runner, wide_terminal  # noqa: F401
from tests.support import GANSU, XINJIANG, Stack, register, wait_until

SHAANXI = "610000"


def test_provinces_transfers_watch_and_stats(stack: Stack) -> None:
    code, out = gongji(stack, "provinces", "list", "--json")
    assert code == 0 and {p["code"] for p in json.loads(out)["provinces"]} == {XINJIANG, GANSU}

    transfer_id = stack.submit(stack.instruction(amount_fen=12_345)).transfer_id
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    code, out = gongji(stack, "transfers", "list", "--json", "--state", "committed")
    listed = json.loads(out)
    assert code == 0 and [t["transfer_id"] for t in listed] == [transfer_id]
    assert listed[0]["giver_id_masked"] == "650502********1230"  # never a clear ID (D19)

    code, out = gongji(stack, "transfers", "watch", "--cursor", "0", "--count", "3", "--json")
    states = [json.loads(line)["state"] for line in out.splitlines()]
    assert code == 0 and states == ["TRANSFER_STATE_RECEIVED", "TRANSFER_STATE_DELIVERED", "TRANSFER_STATE_COMMITTED"]

    code, out = gongji(stack, "stats")
    assert code == 0 and "¥123.45" in out and "COMMITTED" in out

    code, out = gongji(stack, "provinces", "suspend", GANSU)
    assert code == 0 and "SUSPENDED" in out
    code, out = gongji(stack, "provinces", "resume", GANSU)
    assert code == 0 and "ACTIVE" in out


def test_expected_failures_are_one_line_without_a_traceback(stack: Stack) -> None:
    code, out = gongji(stack, "provinces", "suspend", "130000")
    assert code == 1 and "NOT_FOUND PROVINCE_NOT_FOUND" in out and "Traceback" not in out
    code, out = gongji(stack, "transfers", "list", "--state", "nonsense")
    assert code == 2 and "unknown state" in out


def test_amounts_in_yuan() -> None:
    assert [yuan(f) for f in (0, 5, 123_456, 100_000_000, -123_456)] == \
        ["¥0.00", "¥0.05", "¥1,234.56", "¥1,000,000.00", "-¥1,234.56"]
    assert [plain_yuan(f) for f in (5, 123_456, -123_456)] == ["0.05", "1234.56", "-1234.56"]


def test_public_key_files_in_every_format(tmp_path: Path) -> None:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    files = {
        "raw.bin": raw,
        "hex.pub": (raw.hex() + "\n").encode(),  # what the gateway and the stubs write (var/keys/*.pub)
        "spki.pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "spki.der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        assert load_public_key(tmp_path / name) == raw, name
    # An X25519 key has the same shape under another algorithm; a private key file is refused by its name.
    (tmp_path / "x25519.pem").write_bytes(X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "gateway.key").write_text(raw.hex())
    for name in ("x25519.pem", "gateway.key"):
        with pytest.raises(typer.Exit):
            load_public_key(tmp_path / name)


def test_provinces_show_and_register(stack: Stack, tmp_path: Path) -> None:
    shown = gongji_json(stack, "provinces", "show", XINJIANG)
    assert (shown["code"], shown["name"], shown["status"]) == (XINJIANG, "新疆", "PROVINCE_STATUS_ACTIVE")
    assert shown["endpoint"] == stack.stubs[XINJIANG].address
    assert shown["policy"]["daily_transfer_limit"] == 100_000
    key_id = stack.stubs[XINJIANG].key_id
    assert [k["key_id"] for k in shown["keys"]] == [key_id]
    # The stub's own .pub file (hex, as `make run` leaves them in var/keys) reads as the registered key.
    assert base64.b64decode(shown["keys"][0]["public_key"]) == load_public_key(stack.keys_dir / f"{key_id}.pub")

    code, out = gongji(stack, "provinces", "show", GANSU)
    assert code == 0
    for expected in (GANSU, "甘肃", "ACTIVE", stack.stubs[GANSU].key_id, "valid", "national default",
                     "00:00 (0)"):
        assert expected in out

    # A third province, its key a PEM SubjectPublicKeyInfo file.
    key_file = tmp_path / "610000-k1.pem"
    public = Ed25519PrivateKey.generate().public_key()
    key_file.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    register = ["provinces", "register", "--code", SHAANXI, "--name", "陕西", "--endpoint", "127.0.0.1:50063",
                "--key-id", "610000-k1", "--public-key", str(key_file), "--policy-daily-transfer-limit", "5",
                "--policy-single-relation-only"]
    code, out = gongji(stack, *register)
    assert code == 0 and "registered province 610000" in out and "ACTIVE" in out
    registered = gongji_json(stack, "provinces", "show", SHAANXI)
    assert (registered["name"], registered["endpoint"]) == ("陕西", "127.0.0.1:50063")
    assert registered["policy"] == {"daily_transfer_limit": 5, "single_relation_only": True}
    [key] = registered["keys"]
    assert key["key_id"] == "610000-k1" and key["alg"] == "ed25519" and "valid_until" not in key
    assert base64.b64decode(key["public_key"]) == public.public_bytes(serialization.Encoding.Raw,
                                                                      serialization.PublicFormat.Raw)
    assert SHAANXI in {p["code"] for p in gongji_json(stack, "provinces", "list")["provinces"]}

    code, out = gongji(stack, *register)
    assert code == 1 and "ALREADY_EXISTS" in out and "Traceback" not in out
    code, out = gongji(stack, "provinces", "show", "130000")
    assert code == 1 and "NOT_FOUND PROVINCE_NOT_FOUND" in out and "Traceback" not in out
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("-----BEGIN PUBLIC KEY-----\nbm9uc2Vuc2U=\n-----END PUBLIC KEY-----\n")
    code, out = gongji(stack, "provinces", "register", "--code", "630000", "--name", "青海", "--endpoint",
                       "127.0.0.1:50064", "--key-id", "630000-k1", "--public-key", str(not_a_key))
    assert code == 2 and "not an Ed25519 public key" in out and "Traceback" not in out


def test_transfers_show_and_every_page(stack: Stack) -> None:
    ids = committed(stack, 12_345, 20_000, 30_000, 40_000, 50_000)

    shown = gongji_json(stack, "transfers", "show", ids[0])
    assert (shown["transfer_id"], shown["state"], shown["amount_fen"]) == (ids[0], "TRANSFER_STATE_COMMITTED", "12345")
    assert [e["state"] for e in shown["history"]] == \
        ["TRANSFER_STATE_RECEIVED", "TRANSFER_STATE_DELIVERED", "TRANSFER_STATE_COMMITTED"]
    assert shown["giver_id_masked"] == "650502********1230" and shown["settlement_window_id"]
    code, out = gongji(stack, "transfers", "show", ids[0])
    assert code == 0 and ids[0] in out and "¥123.45" in out and "650502********1230" in out
    assert out.index("RECEIVED") < out.index("DELIVERED") < out.rindex("COMMITTED")

    # --all follows the pages to the end (here 3 of 2, 2 and 1), newest first; without it, --limit stops early.
    assert [t["transfer_id"] for t in gongji_json(stack, "transfers", "list", "--all", "--page-size", "2")] == \
        ids[::-1]
    assert [t["transfer_id"] for t in gongji_json(stack, "transfers", "list", "--all", "--page-size", "2",
                                                  "--oldest-first")] == ids
    assert len(gongji_json(stack, "transfers", "list", "--page-size", "2", "--limit", "3")) == 3
    assert gongji_json(stack, "transfers", "list", "--all", "--page-size", "2", "--from", GANSU) == []
    assert len(gongji_json(stack, "transfers", "list", "--all", "--page-size", "2", "--to", GANSU,
                           "--state", "committed")) == 5
    code, out = gongji(stack, "transfers", "list", "--all", "--page-size", "2")
    assert code == 0 and "5 transfers in 3 pages" in out and all(i in out for i in ids)

    code, out = gongji(stack, "transfers", "show", "tr-no-such-transfer")
    assert code == 1 and "NOT_FOUND TRANSFER_NOT_FOUND" in out and "Traceback" not in out


def test_settlement_close_show_acknowledge_pay_and_export(stack: Stack, tmp_path: Path) -> None:
    committed(stack, 12_345, 100_000)

    closed = gongji_json(stack, "settlement", "close", "--current")
    window_id = closed["window_id"]
    assert closed["state"] in ("SETTLEMENT_WINDOW_STATE_CLOSED", "SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED")
    assert closed["pairs"] == [{"from_province": XINJIANG, "to_province": GANSU, "gross_fen": "112345",
                                "transfer_count": "2"}]
    assert {p["province"]: p["net_fen"] for p in closed["positions"]} == {XINJIANG: "-112345", GANSU: "112345"}
    code, out = gongji(stack, "settlement", "close", window_id)  # again: the same figures
    assert code == 0 and window_id in out and "¥1,123.45" in out and "-¥1,123.45" in out

    # The stubs acknowledge by themselves.
    wait_until(lambda: gongji_json(stack, "settlement", "show", window_id)["state"]
               == "SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED", what="the window to be acknowledged")
    code, out = gongji(stack, "settlement", "show")
    assert code == 0 and window_id in out and "ACKNOWLEDGED" in out and "¥1,123.45" in out and "2/2" in out
    listed = gongji_json(stack, "settlement", "show")["windows"]
    assert listed[0]["window_id"] == window_id
    acks = gongji_json(stack, "settlement", "ack-status", window_id)
    assert acks == {"window_id": window_id, "state": "SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED",
                    "provinces": [{"province": GANSU, "acknowledged": True},
                                  {"province": XINJIANG, "acknowledged": True}]}
    code, out = gongji(stack, "settlement", "ack-status", window_id)
    assert code == 0 and "2 of 2 provinces acknowledged" in out

    today = stack.clock.now().astimezone(BEIJING).date().isoformat()
    code, out = gongji(stack, "settlement", "record-payment", window_id, "--from", XINJIANG, "--to", GANSU,
                       "--bank", "ICBC", "--serial", "ICBC-0001", "--date", today)
    assert code == 0 and "1/1 pairs paid" in out and "SETTLED" in out
    window = gongji_json(stack, "settlement", "show", window_id)
    assert window["state"] == "SETTLEMENT_WINDOW_STATE_SETTLED"
    assert window["payments"] == [{"from_province": XINJIANG, "to_province": GANSU, "bank": "ICBC",
                                   "serial_number": "ICBC-0001", "date": today}]

    # CSV: one row per pair, the figures those of the window.
    result = invoke(stack, "settlement", "export", window_id, "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["window_id"], r["state"], r["from_province"], r["to_province"], int(r["gross_fen"]), r["gross_yuan"],
             int(r["transfer_count"]), r["paid_bank"], r["paid_serial_number"], r["paid_date"]) for r in rows] == \
        [(window_id, "SETTLED", p["from_province"], p["to_province"], int(p["gross_fen"]), "1123.45",
          int(p["transfer_count"]), "ICBC", "ICBC-0001", today) for p in window["pairs"]]
    to_file = tmp_path / "window.csv"
    assert invoke(stack, "settlement", "export", window_id, "--output", str(to_file)).exit_code == 0
    assert list(csv.DictReader(io.StringIO(to_file.read_text(encoding="utf-8"), newline=""))) == rows

    # JSON: the whole window.
    assert json.loads(invoke(stack, "settlement", "export", window_id, "--format", "json").stdout) == window
    to_file = tmp_path / "window.json"
    result = invoke(stack, "settlement", "export", window_id, "--format", "json", "--output", str(to_file))
    assert result.exit_code == 0 and result.stdout == "" and str(to_file) in result.output
    assert json.loads(to_file.read_text(encoding="utf-8")) == window


def test_settlement_failures_are_one_line_without_a_traceback(stack: Stack, tmp_path: Path) -> None:
    code, out = gongji(stack, "settlement", "show", "1999-01-01")
    assert code == 1 and "NOT_FOUND SETTLEMENT_WINDOW_NOT_FOUND" in out and "Traceback" not in out
    code, out = gongji(stack, "settlement", "show", "not-a-window")
    assert code == 1 and "INVALID_ARGUMENT INVALID_WINDOW_ID" in out and "Traceback" not in out

    # Gansu does not acknowledge by itself: the window stays CLOSED.
    stack.configure(GANSU, settlement_ack_mode=control_pb2.SETTLEMENT_ACK_MODE_MANUAL)
    committed(stack, 7_000)
    window_id = gongji_json(stack, "settlement", "close", "--current")["window_id"]
    wait_until(lambda: gongji_json(stack, "settlement", "ack-status", window_id)["provinces"]
               == [{"province": GANSU, "acknowledged": False}, {"province": XINJIANG, "acknowledged": True}],
               what="Xinjiang's acknowledgement")
    code, out = gongji(stack, "settlement", "ack-status", window_id)
    assert code == 0 and "1 of 2 provinces acknowledged" in out and "CLOSED" in out
    [listed] = gongji_json(stack, "settlement", "show", "--state", "closed")["windows"]
    assert (listed["window_id"], listed["acknowledged_by"]) == (window_id, [XINJIANG])

    today = stack.clock.now().astimezone(BEIJING).date().isoformat()
    code, out = gongji(stack, "settlement", "record-payment", window_id, "--from", XINJIANG, "--to", GANSU,
                       "--bank", "ICBC", "--serial", "ICBC-0002", "--date", today)
    assert code == 1 and "FAILED_PRECONDITION WINDOW_NOT_ACKNOWLEDGED" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1

    code, out = gongji(stack, "settlement", "show", "--state", "nonsense")
    assert code == 2 and "unknown window state" in out
    code, out = gongji(stack, "settlement", "export", window_id, "--output", str(tmp_path / "no-such-dir" / "w.csv"))
    assert code == 1 and "cannot write" in out and "Traceback" not in out


@pytest.mark.parametrize("command", [["provinces", "list"], ["transfers", "list"], ["stats"],
                                     ["settlement", "show"]])
def test_an_unreachable_gateway_is_one_line(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--ops", "127.0.0.1:1"], env={"GONGJI_INSECURE_DEV_PLAINTEXT": "true"})
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("command", "loaded", "not_loaded"), [
    (["stats"], "gateway.cli.stats", ("gateway.cli.provinces", "gateway.cli.settlement", "gateway.cli.admin")),
    (["db"], "gateway.cli.admin", ("gateway.cli.provinces", "gateway.cli.settlement", "gateway.cli.stats")),
    (["settlement"], "gateway.cli.settlement", ("gateway.cli.provinces", "gateway.cli.admin", "gateway.cli.quotas")),
])
def test_a_command_loads_only_its_own_module_and_says_the_same_as_with_all_of_them(
        command: list[str], loaded: str, not_loaded: tuple[str, ...]) -> None:
    """`gongji stats` every few seconds beside the gateway starts without the other commands; what any command
    prints is what the whole command line would print."""
    script = ("import sys; from gateway.cli import main\nsys.argv[0] = 'gongji'\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.startswith('gateway.cli.')), file=sys.stderr)")
    started = subprocess.run([sys.executable, "-c", script, *command, "--help"], capture_output=True, text=True,
                             timeout=60, check=True, env={**os.environ, "COLUMNS": "100", "TERM": "dumb"},
                             cwd=Path(__file__).resolve().parents[2])
    modules = started.stderr.strip().splitlines()[-1]
    assert loaded in modules and not any(f"'{m}'" in modules for m in not_loaded), modules
    whole = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100", "TERM": "dumb"}, prog_name="gongji")
    assert whole.exit_code == 0 and started.stdout == whole.output


NICENESS_PROBE = ("import os, sys\nimport gateway.cli\nloaded_first = 'typer' in sys.modules\nbefore = os.nice(0)\n"
                  "sys.argv = ['gongji', 'stats', '--help']\n"
                  "try:\n    gateway.cli.main()\nexcept SystemExit as ended:\n    code = ended.code\n"
                  "print(loaded_first, before, os.nice(0), code, file=sys.stderr)")


def _niceness_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gongji stats --help` through main(), in a process of its own: whether typer was loaded before main(), the
    niceness before and after, the exit code (stderr's last line)."""
    return subprocess.run([sys.executable, "-c", NICENESS_PROBE], capture_output=True, text=True, timeout=60,
                          check=True, env=env, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize(("setting", "added"), [(None, 10), ("", 10), ("0", 0), ("19", 19), (" 3 ", 3)])
def test_a_command_yields_the_cpu_to_the_gateway_before_it_loads_anything(setting: str | None, added: int) -> None:
    """`gongji stats` every few seconds on the gateway's host must not take the CPU from the gateway and its
    database: the command lowers its priority (GONGJI_CLI_NICE, default 10) before typer, rich and gRPC load."""
    env = {key: value for key, value in os.environ.items() if key != "GONGJI_CLI_NICE"}
    if setting is not None:
        env["GONGJI_CLI_NICE"] = setting
    started = _niceness_probe(env)
    loaded_first, before, after, code = started.stderr.strip().splitlines()[-1].split()
    assert (loaded_first, code) == ("False", "0")
    assert int(after) == min(int(before) + added, 19)
    assert "Usage: gongji stats" in started.stdout


@pytest.mark.parametrize("setting", ["-5", "20", "ten", "1.5"])
def test_a_niceness_out_of_range_is_one_line_and_a_usage_error(setting: str) -> None:
    started = _niceness_probe({**os.environ, "GONGJI_CLI_NICE": setting})
    message, figures = started.stderr.strip().splitlines()
    assert message == f"error: GONGJI_CLI_NICE must be a whole number from 0 to 19, not {setting!r}"
    loaded_first, before, after, code = figures.split()
    assert (loaded_first, code, after) == ("False", "2", before) and started.stdout == ""


# -- what the gateway sends is printed, never obeyed ---------------------------------------------

# Markup, emoji codes and brackets are printable, so a province may still be named so; the CLI prints them.
MARKUP_NAME = "陕西[red]x[/red] [bold]y :warning: \\[i]"
# These no longer pass the gateway's checks, but a value from an older record or another gateway may hold them.
# Each with what the CLI prints instead: ESC and the other C0 controls, DEL, C1's CSI, bidi override and
# isolate, a zero-width space.
STEERING = {"\x1b[31m": "\\x1b[31m", "\x1b]0;title\x07": "\\x1b]0;title\\x07", "\x9b2J": "\\x9b2J",
            "\u202e": "\\u202e", "\u2066": "\\u2066", "\u200b": "\\u200b", "\x7f": "\\x7f", "\r": "\\x0d",
            "\x00": "\\x00"}


def test_a_province_name_with_markup_is_printed_as_written(stack: Stack) -> None:
    register(stack.operations, SHAANXI, MARKUP_NAME, "127.0.0.1:50063", "610000-k1", b"\x02" * 32)
    for command in (["provinces", "list"], ["provinces", "show", SHAANXI]):
        code, out = gongji(stack, *command)
        assert code == 0 and MARKUP_NAME in out, out
    assert {p["code"]: p["name"] for p in gongji_json(stack, "provinces", "list")["provinces"]}[SHAANXI] == \
        MARKUP_NAME


def rendered(*values: str) -> str:
    """What a colour terminal receives when the CLI prints `values` in a line, a table and a field grid."""
    terminal = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=250, emoji=False)
    terminal.print(" ".join(shown(value) for value in values), highlight=False)  # colours would split the text
    table = Table("value")
    for value in values:
        add_row(table, value)
    terminal.print(table)
    terminal.print(field_grid([("value", value) for value in values]))
    output = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


@pytest.mark.parametrize(("value", "printed"), list(STEERING.items()))
def test_control_sequences_from_the_gateway_never_reach_the_terminal(value: str, printed: str) -> None:
    output = rendered(f"a{value}b")
    assert value not in output and output.count(f"a{printed}b") == 3, repr(output)


def test_markup_from_the_gateway_is_printed_as_written() -> None:
    output = rendered(MARKUP_NAME, "[link=file:///etc/passwd]click[/link]")
    assert output.count(MARKUP_NAME) == 3 and output.count("[link=file:///etc/passwd]click[/link]") == 3


def test_json_output_escapes_what_steers_a_terminal_and_stays_valid() -> None:
    value = {"name": "新疆" + "".join(STEERING) + "\U000e0001\u2028", "n": -1}
    text = json_text(value)
    assert json.loads(text) == value and json.loads(json_text(value, indent=None)) == value
    assert "新疆" in text  # readable Chinese, not \\u escapes
    assert not any(char in text for char in [*STEERING, "\U000e0001", "\u2028"])


def test_csv_export_neutralises_formulas_in_text_cells_only() -> None:
    assert [csv_text(v) for v in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "ICBC", "", "1=1")] == \
        ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "ICBC", "", "1=1"]
    # A record from before references were restricted may hold anything: an export opens safely in a spreadsheet.
    window = operations_pb2.SettlementWindow(
        window_id="2026-05-04", state=settlements_pb2.SETTLEMENT_WINDOW_STATE_SETTLED,
        pairs=[settlements_pb2.PairFigure(from_province=XINJIANG, to_province=GANSU, gross_fen=12_345,
                                          transfer_count=2)],
        payments=[operations_pb2.PaymentRecord(from_province=XINJIANG, to_province=GANSU,
                                               bank='=HYPERLINK("http://x","ICBC")', serial_number="-2+3",
                                               date="@2026-05-05")])
    out = io.StringIO()
    write_csv(window, out)
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert (row["paid_bank"], row["paid_serial_number"], row["paid_date"]) == (
        '\'=HYPERLINK("http://x","ICBC")', "'-2+3", "'@2026-05-05")
    assert (row["gross_fen"], row["gross_yuan"], row["transfer_count"]) == ("12345", "123.45", "2")
