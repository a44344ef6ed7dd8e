"""`make run`: the gateway on 127.0.0.1:50051 (SQLite under var/) with stub provinces 650000 and 620000.

Stubs start first (they create their signing keys on first start), then the manifest that registers
them is written, then the gateway starts and loads it. Ctrl-C stops everything gracefully.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from gateway.addresses import DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, DEFAULT_OPS_LISTEN
from gateway.security.tls import GATEWAY_DNS
from scripts.launcher import GANSU, ROOT, XINJIANG, LaunchError, Stack

VAR = Path(os.environ.get("GONGJI_VAR", ROOT / "var")).resolve()
GATEWAY = os.environ.get("GONGJI_LISTEN", DEFAULT_LISTEN)
OPERATORS = os.environ.get("GONGJI_OPS_LISTEN", DEFAULT_OPS_LISTEN)
DASHBOARD = os.environ.get("GONGJI_METRICS_LISTEN", DEFAULT_METRICS_LISTEN)
STUBS = {XINJIANG: os.environ.get("GONGJI_STUB_650000", "127.0.0.1:50061"),
         GANSU: os.environ.get("GONGJI_STUB_620000", "127.0.0.1:50062")}
# Each stub's control service (what `make demo` drives), on a loopback port of its own.
STUB_CONTROLS = {XINJIANG: os.environ.get("GONGJI_STUB_650000_CONTROL", "127.0.0.1:50071"),
                 GANSU: os.environ.get("GONGJI_STUB_620000_CONTROL", "127.0.0.1:50072")}
TLS = VAR / "tls"
# Mutual TLS from a development CA under var/tls/ unless asked for plaintext (development only).
PLAINTEXT = os.environ.get("GONGJI_INSECURE_DEV_PLAINTEXT", "false").lower() in ("1", "true", "yes")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the project when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


# Development policy: no blackout, so `make demo` works at any hour (the national 22:00-06:00 Beijing
# blackout applies wherever a province does not override it), and a daily limit that survives a few
# demo runs. Gansu allows one family relation per person at a time, as domain.md says (D8).
DEV_POLICY = ["blackout_start_minute = 0", "blackout_end_minute = 0", "daily_transfer_limit = 50"]
POLICIES = {XINJIANG: DEV_POLICY, GANSU: [*DEV_POLICY, "single_relation_only = true"]}
MANIFEST_HEADER = "# Written by `make run`: the two stub provinces, their public keys and a development policy.\n"


def main() -> int:
    for address in (GATEWAY, OPERATORS, *STUBS.values(), *STUB_CONTROLS.values()):
        if not port_free(address):
            print(f"make run: {address} is already in use (is another `make run` running?)", file=sys.stderr)
            return 1
    # The user's GONGJI_* settings reach the gateway too (keep_env): GONGJI_METRICS_LISTEN, GONGJI_LOG_JSON, ...
    database = os.environ.get("GONGJI_DATABASE_URL", f"sqlite:///{VAR / 'gongji.db'}")
    stack = Stack(VAR, database, [GATEWAY], [OPERATORS], STUBS, STUB_CONTROLS, tls_dir=None if PLAINTEXT else TLS,
                  keep_env=True)
    logs, keys = _shown(stack.log_dir), _shown(stack.keys_dir)
    try:
        try:
            stack.start(gateway_env={"GONGJI_DEVELOPMENT": "true"}, policies=POLICIES, header=MANIFEST_HEADER)
        except LaunchError as error:
            print(f"make run: {error}\n(see {logs}/)", file=sys.stderr)
            return 1
        tls = _shown(TLS)
        grpcurl = ("grpcurl -plaintext" if PLAINTEXT else
                   f"grpcurl -cacert {tls}/ca.crt -cert {tls}/operator-operator.crt -key {tls}/operator-operator.key "
                   f"-servername {GATEWAY_DNS}")
        print(f"""
Gongji is running (logs in {logs}/, database {_shown(VAR / "gongji.db")}, keys {keys}/, \
{"PLAINTEXT ports (development)" if PLAINTEXT else f"mutual TLS from the development CA in {tls}/"}):
  gateway, provinces' port   {GATEWAY}   (Transfers, Relations, Settlements, health, reflection)
  gateway, operators' port   {OPERATORS}   (Operations; try `.venv/bin/gongji stats`)
  operators' dashboard       http://{DASHBOARD}/   (/metrics beside it)
  stub province 650000 新疆  {STUBS[XINJIANG]}   (ProvinceInbox, for the gateway; control {STUB_CONTROLS[XINJIANG]})
  stub province 620000 甘肃  {STUBS[GANSU]}   (ProvinceInbox, for the gateway; control {STUB_CONTROLS[GANSU]})

Try it, in another terminal:
  make demo        # a giver in Hami sends 500.00 yuan to his mother in Lanzhou, resends it, and the
                   # operator settles the window (positions, acknowledgements, payment)
  {grpcurl} {OPERATORS} gongji.v1.Operations/ListProvinces   # if you have grpcurl

This is a development stack: its keys sit in {keys}/ beside the database. In production keep the key
files (GONGJI_*_KEY_FILE) outside the database's folder and out of its backups: with the data and the ID-hash
key together, a person's ID number is found again by trying birth dates and sequence numbers.

Ctrl-C stops everything.""", flush=True)
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping:
            for proc in stack.processes:
                if proc.popen is not None and proc.popen.poll() is not None:
                    print(f"make run: {proc.name} exited with code {proc.popen.returncode}; "
                          f"see {_shown(proc.log_path)}", file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
        return 0
    finally:
        for name in stack.close():
            print(f"make run: {name} did not stop; killing it", file=sys.stderr)
        print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
