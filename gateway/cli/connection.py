"""How `gongji` reaches the gateway: the operators' address, mutual TLS as an operator, gRPC failures as one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import grpc
import typer

from gateway.cli.output import err_console, fail, shown
from protos.gongji.v1 import operations_pb2_grpc

OpsAddress = Annotated[str, typer.Option(
    "--ops", envvar=["GONGJI_OPS", "GONGJI_OPS_LISTEN"],
    help="The gateway's operators' port (else $GONGJI_OPS, else $GONGJI_OPS_LISTEN, which `make run` reads too).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TIMEOUT_S = 10.0

# The gateway's certificate names it so (see gateway/security/tls.py).
GATEWAY_TLS_NAME = "gateway.gongji"


def tls_folder() -> Path:
    """Where the operator's certificate is: GONGJI_TLS_DIR, else the tls folder of GONGJI_VAR (where `make run`
    makes its development CA), else var/tls."""
    named = os.environ.get("GONGJI_TLS_DIR")
    return Path(named) if named else Path(os.environ.get("GONGJI_VAR") or "var") / "tls"


def plaintext_intended() -> bool:
    """GONGJI_INSECURE_DEV_PLAINTEXT as the gateway and `make run` read it: the gateway speaks plaintext."""
    return os.environ.get("GONGJI_INSECURE_DEV_PLAINTEXT", "false").lower() in ("1", "true", "yes")


def _channel(address: str) -> grpc.Channel:
    """Mutual TLS as an operator, with operator-<GONGJI_OPERATOR>.crt/.key (default operator-operator) and ca.crt
    from `tls_folder()`; plaintext only when GONGJI_INSECURE_DEV_PLAINTEXT says the gateway speaks it. A missing
    file is one line and exit code 1, never a silent fall back to plaintext."""
    if plaintext_intended():
        return grpc.insecure_channel(address)
    folder = tls_folder()
    name = f"operator-{os.environ.get('GONGJI_OPERATOR', 'operator')}"
    files = (folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key")
    missing = next((file for file in files if not file.is_file()), None)
    if missing is not None:
        fail(f"no operator certificate: {missing} not found (the folder is $GONGJI_TLS_DIR, else $GONGJI_VAR/tls, "
             "else var/tls; GONGJI_INSECURE_DEV_PLAINTEXT=true if the gateway speaks plaintext)")
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=files[0].read_bytes(),
                                                   private_key=files[2].read_bytes(),
                                                   certificate_chain=files[1].read_bytes())
    except OSError as error:
        fail(f"cannot read the operator's certificate in {folder}: {error.strerror} ({error.filename})")
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", GATEWAY_TLS_NAME)])


@contextmanager
def operations(address: str) -> Iterator[operations_pb2_grpc.OperationsStub]:
    """A client for one command; expected failures become a one-line message and exit code 1."""
    with _channel(address) as channel:
        try:
            yield operations_pb2_grpc.OperationsStub(channel)
        except grpc.RpcError as error:
            # Loaded on a failure only: a command that succeeds (`gongji stats` every few seconds) never pays for them.
            from google.rpc import error_details_pb2
            from grpc_status import rpc_status

            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            reason = ""
            for detail in status.details if status else ():
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = f" {info.reason}"
            err_console.print(f"[red]error:[/red] {error.code().name}{shown(reason)}: {shown(error.details())}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
