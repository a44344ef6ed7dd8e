"""The operators' commands that cannot hurt: what `gongji` refuses, and what it shows before anyone acts."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cli import app
from gateway.domain.clock import BEIJING
from protos.gongji.v1 import operations_pb2
from tests.api.cli_support import committed, gongji, gongji_json, invoke, runner, wide_terminal  # noqa: F401
from tests.support import GANSU, XINJIANG, LoopThread, Stack, register, start_stack

SHAANXI = "610000"


def test_settlement_close_needs_a_window_and_force_for_an_empty_one(stack: Stack) -> None:
    today = stack.clock.now().astimezone(BEIJING).date()
    # Neither a window id nor --current, or both: a usage error, and nothing is asked of the gateway.
    for args in ((), (today.isoformat(), "--current")):
        code, out = gongji(stack, "settlement", "close", *args)
        assert code == 2 and "a window id (YYYY-MM-DD or YYYY-MM) or --current" in out, out
    code, out = gongji(stack, "settlement", "show")
    assert code == 0 and "no settlement windows yet" in out

    code, out = gongji(stack, "settlement", "close", "--current")
    assert code == 1 and "FAILED_PRECONDITION WINDOW_EMPTY" in out and "Traceback" not in out
    tomorrow = (today + timedelta(days=1)).isoformat()
    code, out = gongji(stack, "settlement", "close", tomorrow, "--force")
    assert code == 1 and "FAILED_PRECONDITION WINDOW_NOT_STARTED" in out

    past = (today - timedelta(days=2)).isoformat()
    settled = gongji_json(stack, "settlement", "close", past, "--force")
    assert (settled["window_id"], settled["state"]) == (past, "SETTLEMENT_WINDOW_STATE_SETTLED")
    code, out = gongji(stack, "settlement", "show", past)
    assert code == 0 and "SETTLED" in out and "nothing to acknowledge or pay" in out

    committed(stack, 2_500)
    closed = gongji_json(stack, "settlement", "close", "--current")
    assert closed["window_id"] == today.isoformat() and closed["pairs"][0]["gross_fen"] == "2500"
    assert gongji_json(stack, "settlement", "close", "--current")["window_id"] == today.isoformat()


def test_transfers_list_newest_first_in_a_time_range_and_says_when_more_are_available(stack: Stack) -> None:
    ids = committed(stack, 1_100, 2_200, 3_300, 4_400)
    listed = gongji_json(stack, "transfers", "list")
    assert [t["transfer_id"] for t in listed] == ids[::-1]
    assert [t["transfer_id"] for t in gongji_json(stack, "transfers", "list", "--oldest-first")] == ids
    code, out = gongji(stack, "transfers", "list")
    assert code == 0 and "newest first" in out and "more available" not in out

    # More match than are shown: a line says so (on stderr: --json's stdout stays one JSON document).
    result = invoke(stack, "transfers", "list", "--limit", "3", "--json")
    assert result.exit_code == 0 and [t["transfer_id"] for t in json.loads(result.stdout)] == ids[:0:-1]
    assert "more available: these are the newest 3" in result.output
    code, out = gongji(stack, "transfers", "list", "--limit", "2", "--oldest-first")
    assert code == 0 and "more available: these are the oldest 2" in out and ids[0] in out and ids[2] not in out
    code, out = gongji(stack, "transfers", "list", "--limit", "4")
    assert code == 0 and "more available" not in out

    # --since / --until: Beijing time unless an offset is given; --until is exclusive.
    created = {t["transfer_id"]: datetime.fromisoformat(t["created_at"]) for t in listed}
    since_beijing = created[ids[1]].astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S.%f")
    until_iso = created[ids[3]].astimezone(UTC).isoformat()
    between = gongji_json(stack, "transfers", "list", "--since", since_beijing, "--until", until_iso)
    assert [t["transfer_id"] for t in between] == [ids[2], ids[1]]
    today = created[ids[0]].astimezone(BEIJING).date()
    assert len(gongji_json(stack, "transfers", "list", "--since", today.isoformat())) == 4
    assert gongji_json(stack, "transfers", "list", "--until", today.isoformat()) == []
    for bad in ("yesterday", "2026-13-01", "2026-05-04 25:00"):
        code, out = gongji(stack, "transfers", "list", "--since", bad)
        assert code == 2 and "--since" in out and "is not a time" in out and "Traceback" not in out


def test_provinces_update_changes_what_is_given_and_keeps_the_rest(stack: Stack, tmp_path: Path) -> None:
    register(stack.operations, SHAANXI, "陕西", "127.0.0.1:50063", "610000-k1", b"\x02" * 32,
             operations_pb2.ProvincePolicy(daily_transfer_limit=5, single_relation_only=True))
    code, out = gongji(stack, "provinces", "update", SHAANXI, "--name", "陕西省", "--endpoint", "127.0.0.1:50099",
                       "--policy-max-transfer-fen", "100000")
    assert code == 0 and "updated province 610000: name, endpoint, policy" in out, out
    shaanxi = gongji_json(stack, "provinces", "show", SHAANXI)
    assert (shaanxi["name"], shaanxi["endpoint"]) == ("陕西省", "127.0.0.1:50099")
    # The policy fields not given stay as they were (UpdateProvince replaces the whole policy).
    assert shaanxi["policy"] == {"daily_transfer_limit": 5, "single_relation_only": True, "max_transfer_fen": "100000"}
    changed = gongji_json(stack, "provinces", "update", SHAANXI, "--policy-default", "daily-transfer-limit",
                          "--policy-multiple-relations")
    assert changed["policy"] == {"single_relation_only": False, "max_transfer_fen": "100000"}

    # A second key, valid from a Beijing time; then the first one retired.
    public = Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "610000-k2.pem"
    key_file.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    added = gongji_json(stack, "provinces", "update", SHAANXI, "--add-key", "610000-k2", "--public-key", str(key_file),
                        "--valid-from", "2026-01-01 08:00")
    [k2] = [k for k in added["keys"] if k["key_id"] == "610000-k2"]
    assert k2["valid_from"] == "2026-01-01T00:00:00Z" and "valid_until" not in k2
    assert base64.b64decode(k2["public_key"]) == public.public_bytes(serialization.Encoding.Raw,
                                                                     serialization.PublicFormat.Raw)
    code, out = gongji(stack, "provinces", "update", SHAANXI, "--retire-key", "610000-k1", "--status", "suspended")
    assert code == 0 and "status, keys" in out and "retired" in out and "SUSPENDED" in out
    [k1] = [k for k in gongji_json(stack, "provinces", "show", SHAANXI)["keys"] if k["key_id"] == "610000-k1"]
    assert "valid_until" in k1

    # What cannot be meant is a usage error; what the gateway refuses is one line.
    for args, says in (((), "nothing to change"),
                       (("--public-key", str(key_file)), "--add-key KEY_ID"),
                       (("--add-key", "610000-k3"), "--add-key needs the key's --public-key"),
                       (("--policy-default", "colour"), "no policy field 'colour'"),
                       (("--policy-default", "return_hour", "--policy-return-hour", "7"), "both given and set back"),
                       (("--add-key", "610000-k3", "--public-key", str(key_file), "--valid-until", "soon"),
                        "--valid-until: 'soon' is not a time")):
        code, out = gongji(stack, "provinces", "update", SHAANXI, *args)
        assert code == 2 and says in out and "Traceback" not in out, (args, out)
    code, out = gongji(stack, "provinces", "update", "630000", "--name", "青海")
    assert code == 1 and "NOT_FOUND PROVINCE_NOT_FOUND" in out and "Traceback" not in out
    code, out = gongji(stack, "provinces", "update", SHAANXI, "--retire-key", "610000-nope")
    assert code == 1 and "NOT_FOUND KEY_NOT_FOUND" in out


# -- how the CLI finds the gateway, and how it fails -----------------------------------------------------

NO_GONGJI_ENV = {name: None for name in ("GONGJI_OPS", "GONGJI_OPS_LISTEN", "GONGJI_TLS_DIR", "GONGJI_VAR",
                                         "GONGJI_INSECURE_DEV_PLAINTEXT", "GONGJI_OPERATOR")}


def test_without_an_operator_certificate_the_cli_says_so_instead_of_speaking_plaintext(tmp_path: Path) -> None:
    # Before, a missing var/tls/ meant plaintext, silently: against make run's mutual TLS a confusing UNAVAILABLE.
    result = runner.invoke(app, ["stats", "--ops", "127.0.0.1:1"], env={**NO_GONGJI_ENV, "GONGJI_VAR": str(tmp_path)})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: no operator certificate: {tmp_path / 'tls' / 'ca.crt'} not found (the folder is $GONGJI_TLS_DIR, "
        "else $GONGJI_VAR/tls, else var/tls; GONGJI_INSECURE_DEV_PLAINTEXT=true if the gateway speaks plaintext)"]
    # With the CA but no operator's own certificate, the same, naming that file.
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.crt").write_text("not read")
    result = runner.invoke(app, ["stats", "--ops", "127.0.0.1:1"], env={**NO_GONGJI_ENV, "GONGJI_VAR": str(tmp_path),
                                                                        "GONGJI_OPERATOR": "alice"})
    assert result.exit_code == 1 and f"{tmp_path / 'tls' / 'operator-alice.crt'} not found" in result.output


def test_the_cli_reads_the_variables_make_run_sets(loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    """GONGJI_OPS_LISTEN for the operators' port, GONGJI_VAR for the TLS folder: `make run`'s environment is enough."""
    stack = start_stack(loop_thread, tmp_path, sqlite_url, tls_dir=tmp_path / "var" / "tls")
    try:
        env = {**NO_GONGJI_ENV, "GONGJI_VAR": str(tmp_path / "var"),
               "GONGJI_OPS_LISTEN": f"127.0.0.1:{stack.gateway.ops_port}"}
        result = runner.invoke(app, ["provinces", "list", "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert {p["code"] for p in json.loads(result.stdout)["provinces"]} == {XINJIANG, GANSU}
        # Plaintext only when said: told so, the CLI speaks plaintext, which this mutual-TLS port refuses.
        result = runner.invoke(app, ["provinces", "list"], env={**env, "GONGJI_INSECURE_DEV_PLAINTEXT": "true"})
        assert result.exit_code == 1 and "UNAVAILABLE" in result.output and "Traceback" not in result.output
    finally:
        stack.close()


def test_audit_verify_fails_in_one_line_like_db_current(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    for url, says in ((f"sqlite:///{tmp_path / 'no-such-dir' / 'gongji.db'}", "unable to open database file"),
                      ("mysql://root@127.0.0.1/gongji", "must be a sqlite:/// or postgresql:// URL"),
                      (empty, "the database has no schema")):
        for command in (["audit", "verify"], ["db", "current"]):
            result = runner.invoke(app, [*command, "--database", url])
            if command == ["db", "current"] and url == empty:
                assert result.exit_code == 0 and says in result.output  # it answers where the schema stands
                continue
            lines = result.output.strip().splitlines()
            assert result.exit_code == 1 and len(lines) == 1 and says in lines[0], (command, result.output)
            assert lines[0].startswith("error: ") and "Traceback" not in result.output
