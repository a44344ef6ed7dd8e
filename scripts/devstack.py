"""`make run`: the gateway on 127.0.0.1:50051 (SQLite under var/) with stub provinces 650000 and 620000.

Stubs start first (they create their signing keys on first start), then the manifest that registers
them is written, then the gateway starts and loads it. Ctrl-C stops everything gracefully.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.security.tls import GATEWAY_DNS, province_dns
from scripts.devtls import channel_as, ensure_dev_pki

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("GONGJI_VAR", ROOT / "var")).resolve()
KEYS = VAR / "keys"
LOGS = VAR / "logs"
GATEWAY = os.environ.get("GONGJI_LISTEN", "127.0.0.1:50051")
OPERATORS = os.environ.get("GONGJI_OPS_LISTEN", "127.0.0.1:50052")
STUBS = (("650000", "新疆", os.environ.get("GONGJI_STUB_650000", "127.0.0.1:50061")),
         ("620000", "甘肃", os.environ.get("GONGJI_STUB_620000", "127.0.0.1:50062")))
# Each stub's control service (what `make demo` drives), on a loopback port of its own.
STUB_CONTROLS = {"650000": os.environ.get("GONGJI_STUB_650000_CONTROL", "127.0.0.1:50071"),
                 "620000": os.environ.get("GONGJI_STUB_620000_CONTROL", "127.0.0.1:50072")}
READY_TIMEOUT_S = 30.0
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


def wait_serving(address: str, process: subprocess.Popen[bytes], what: str, server_name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with channel_as(address, server_name, None if PLAINTEXT else TLS) as channel_:
        health = health_pb2_grpc.HealthStub(channel_)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"{what} exited with code {process.returncode}; see {LOGS}/")
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise SystemExit(f"{what} did not become ready on {address} within {READY_TIMEOUT_S:.0f}s; see {LOGS}/")


# Development policy: no blackout, so `make demo` works at any hour (the national 22:00-06:00 Beijing
# blackout applies wherever a province does not override it), and a daily limit that survives a few
# demo runs. Gansu allows one family relation per person at a time, as domain.md says (D8).
DEV_POLICY = ["blackout_start_minute = 0", "blackout_end_minute = 0", "daily_transfer_limit = 50"]
PROVINCE_POLICY = {"620000": ["single_relation_only = true"]}


def write_manifest() -> Path:
    lines = ["# Written by `make run`: the two stub provinces, their public keys and a development policy.", ""]
    for code, name, address in STUBS:
        lines += ["[[provinces]]", f'code = "{code}"', f'name = "{name}"', f'endpoint = "{address}"', "",
                  "[provinces.policy]", *DEV_POLICY, *PROVINCE_POLICY.get(code, []), "",
                  "[[provinces.keys]]", f'key_id = "{code}-k1"', f'public_key_file = "keys/{code}-k1.pub"', ""]
    path = VAR / "manifest.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> int:
    for address in (GATEWAY, OPERATORS, *(a for _, _, a in STUBS), *STUB_CONTROLS.values()):
        if not port_free(address):
            print(f"make run: {address} is already in use (is another `make run` running?)", file=sys.stderr)
            return 1
    LOGS.mkdir(parents=True, exist_ok=True)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(what: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (LOGS / f"{what}.log").open("ab")
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        children.append((what, process))
        return process

    tls_env: dict[str, str] = {"GONGJI_INSECURE_DEV_PLAINTEXT": "true"}
    tls_args: list[str] = []
    if not PLAINTEXT:
        # A development CA and certificates for the gateway, both provinces and an operator (first start).
        ca = ensure_dev_pki(TLS, [code for code, _, _ in STUBS])
        gateway_files = ca.files("gateway")
        tls_env = {"GONGJI_TLS_CERT_FILE": str(gateway_files.cert), "GONGJI_TLS_KEY_FILE": str(gateway_files.key),
                   "GONGJI_TLS_CA_FILE": str(ca.cert_file), "GONGJI_INSECURE_DEV_PLAINTEXT": "false"}
        tls_args = ["--tls-dir", str(TLS)]
    try:
        for code, name, address in STUBS:
            stub = spawn(f"stub-{code}", ["-m", "province_stub", "--province", code, "--name", name, "--listen",
                                          address, "--control-listen", STUB_CONTROLS[code], "--gateway", GATEWAY,
                                          "--keys-dir", str(KEYS), *tls_args])
            wait_serving(address, stub, f"stub province {code}", province_dns(code))
        manifest = write_manifest()
        gateway = spawn("gateway", ["-m", "gateway"], {
            "GONGJI_LISTEN": GATEWAY, "GONGJI_OPS_LISTEN": OPERATORS,
            "GONGJI_DATABASE_URL": os.environ.get("GONGJI_DATABASE_URL", f"sqlite:///{VAR / 'gongji.db'}"),
            "GONGJI_MANIFEST": str(manifest), "GONGJI_GATEWAY_KEY_FILE": str(KEYS / "gateway.key"),
            "GONGJI_ID_HASH_KEY_FILE": str(KEYS / "id-hash.key"), "GONGJI_DATA_KEY_FILE": str(KEYS / "data.keys"),
            "GONGJI_DEVELOPMENT": "true", **tls_env})
        wait_serving(GATEWAY, gateway, "gateway", GATEWAY_DNS)
        tls = _shown(TLS)
        grpcurl = ("grpcurl -plaintext" if PLAINTEXT else
                   f"grpcurl -cacert {tls}/ca.crt -cert {tls}/operator-operator.crt -key {tls}/operator-operator.key "
                   f"-servername {GATEWAY_DNS}")
        print(f"""
Gongji is running (logs in {_shown(LOGS)}/, database {_shown(VAR / "gongji.db")}, keys {_shown(KEYS)}/, \
{"PLAINTEXT ports (development)" if PLAINTEXT else f"mutual TLS from the development CA in {tls}/"}):
  gateway, provinces' port   {GATEWAY}   (Transfers, Relations, Settlements, health, reflection)
  gateway, operators' port   {OPERATORS}   (Operations; try `.venv/bin/gongji stats`)
  operators' dashboard       http://{os.environ.get("GONGJI_METRICS_LISTEN", "127.0.0.1:9464")}/   (/metrics beside it)
  stub province 650000 新疆  {STUBS[0][2]}   (ProvinceInbox, for the gateway; control {STUB_CONTROLS["650000"]})
  stub province 620000 甘肃  {STUBS[1][2]}   (ProvinceInbox, for the gateway; control {STUB_CONTROLS["620000"]})

Try it, in another terminal:
  make demo        # a giver in Hami sends 500.00 yuan to his mother in Lanzhou, resends it, and the
                   # operator settles the window (positions, acknowledgements, payment)
  {grpcurl} {OPERATORS} gongji.v1.Operations/ListProvinces   # if you have grpcurl

This is a development stack: its keys sit in {_shown(KEYS)}/ beside the database. In production keep the key
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
            for what, process in children:
                if process.poll() is not None:
                    print(f"make run: {what} exited with code {process.returncode}; see var/logs/{what}.log",
                          file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
        return 0
    finally:
        for _, process in reversed(children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for what, process in reversed(children):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                print(f"make run: {what} did not stop; killing it", file=sys.stderr)
                process.kill()
        print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
