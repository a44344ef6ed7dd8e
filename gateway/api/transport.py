"""Mutual TLS for the gateway's gRPC ports: credentials that follow their files, and who is calling."""

from __future__ import annotations

import threading
from typing import Any

import grpc

from gateway.domain import reasons
from gateway.domain.errors import PermissionDenied
from gateway.security.tls import Identity, TlsFiles, identity_of


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Client certificates required; new files are picked up on the next handshake (no restart)."""
    key, cert, ca = files.read()
    lock = threading.Lock()
    state = {"stamp": files.stamp()}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        with lock:
            try:
                stamp = files.stamp()
                if stamp == state["stamp"]:
                    return None  # unchanged: keep the current configuration
                key, cert, ca = files.read()
                state["stamp"] = stamp
            except OSError:
                return None  # being replaced: try again at the next handshake
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
    # grpc-stubs type the fetcher as never answering None, which is how it says "unchanged".
    return grpc.dynamic_ssl_server_credentials(initial, fetch,  # type: ignore[arg-type]
                                               require_client_authentication=True)


def caller(context: Any) -> Identity | None:
    """The identity the caller's verified certificate names; None on a plaintext development port."""
    auth = context.auth_context()
    if b"ssl" not in auth.get("transport_security_type", ()):
        return None
    identity = identity_of(auth)
    if identity is None:
        raise PermissionDenied("the client certificate names no Gongji identity (a gongji: URI)",
                               reason=reasons.NO_IDENTITY)
    return identity


def province_caller(context: Any) -> str | None:
    """The calling province's code (D20: it must equal the envelope's signer and the header's sender)."""
    identity = caller(context)
    if identity is None:
        return None
    if identity.kind != "province":
        raise PermissionDenied("only provinces' platforms call this service", reason=reasons.NOT_A_PROVINCE)
    return identity.name


# An operators' port in plaintext development mode authenticates no one.
UNAUTHENTICATED_OPERATOR = "operator:unauthenticated"


def operator_actor(context: Any) -> str:
    """Who is acting on the operators' port, as the audit chain names them: `operator:<name>`."""
    identity = caller(context)
    return UNAUTHENTICATED_OPERATOR if identity is None else f"{identity.kind}:{identity.name}"


def authorize_operator(method: str, context: Any) -> None:
    """The operators' port: only operator certificates (health and reflection stay open to any client)."""
    if method.startswith("/grpc."):
        return
    identity = caller(context)
    if identity is not None and identity.kind != "operator":
        raise PermissionDenied("only operators call the Operations service", reason=reasons.NOT_AN_OPERATOR)
