"""How `gongji` reaches the gateway: the operators' address, mutual TLS as an operator, gRPC failures as one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.cli.output import err_console, fail, shown
from protos.gongji.v1 import operations_pb2_grpc

OpsAddress = Annotated[str, typer.Option("--ops", envvar="GONGJI_OPS", help="The gateway's operators' port.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TIMEOUT_S = 10.0

# The gateway's certificate names it so (see gateway/security/tls.py).
GATEWAY_TLS_NAME = "gateway.gongji"


def _channel(address: str) -> grpc.Channel:
    """Mutual TLS as an operator when a certificate folder is there (GONGJI_TLS_DIR, default `make run`'s
    var/tls with operator-<GONGJI_OPERATOR>.crt/.key and ca.crt); plaintext otherwise (development)."""
    folder = Path(os.environ.get("GONGJI_TLS_DIR", "var/tls"))
    name = f"operator-{os.environ.get('GONGJI_OPERATOR', 'operator')}"
    if os.environ.get("GONGJI_INSECURE_DEV_PLAINTEXT", "").lower() == "true" or not (folder / "ca.crt").exists():
        return grpc.insecure_channel(address)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=(folder / "ca.crt").read_bytes(),
                                                   private_key=(folder / f"{name}.key").read_bytes(),
                                                   certificate_chain=(folder / f"{name}.crt").read_bytes())
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
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            reason = ""
            for detail in status.details if status else ():
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = f" {info.reason}"
            err_console.print(f"[red]error:[/red] {error.code().name}{shown(reason)}: {shown(error.details())}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
