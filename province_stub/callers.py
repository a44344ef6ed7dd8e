"""Who is calling: the Gongji identity in the caller's verified certificate, and a gate that admits only one kind.

Identities are URI subjectAltNames only (`gongji:gateway`, `gongji:operator:<name>`, ...): a DNS name or an
e-mail address spelled the same is not an identity, since any certificate may carry names a CA checks
less strictly. A certificate naming more than one Gongji identity names none.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from cryptography import x509

from province_stub.refusals import refuse

URI_PREFIX = "gongji:"
GATEWAY_IDENTITY = "gongji:gateway"
OPERATOR_PREFIX = "gongji:operator:"


@functools.lru_cache(maxsize=64)
def _identity_in(pem: bytes) -> str | None:
    """The one `gongji:` URI subjectAltName of a PEM certificate, or None (parsed once per certificate)."""
    try:
        names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    found = [uri for uri in names.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith(URI_PREFIX)]
    return found[0] if len(found) == 1 else None


def caller_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The identity the caller's verified certificate names; None without one (or without TLS)."""
    auth = context.auth_context()
    if b"ssl" not in auth.get("transport_security_type", ()):
        return None
    certificates = list(auth.get("x509_pem_cert", ()))
    return _identity_in(certificates[0]) if certificates else None


def is_gateway(identity: str | None) -> bool:
    return identity == GATEWAY_IDENTITY


def is_operator(identity: str | None) -> bool:
    return identity is not None and identity.startswith(OPERATOR_PREFIX) and len(identity) > len(OPERATOR_PREFIX)


class CallerGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """On a mutual-TLS port: every call but health and reflection from an admitted identity, else
    PERMISSION_DENIED with `reason`. Only installed with TLS: a plaintext port has no identity to check."""

    def __init__(self, admitted: Callable[[str | None], bool], reason: str, message: str) -> None:
        self._admitted = admitted
        self._reason = reason
        self._message = message
        # Wrapped once per method, not on every call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        # grpc-stubs type handlers as synchronous; under grpc.aio their behaviours are coroutines.
        handler: Any = await continuation(details)
        method = details.method
        if handler is None or method.startswith("/grpc."):
            return handler
        if handler.unary_unary is None:
            # Every RPC of the stub's services is unary: one added streaming is refused, never let through unchecked.
            return None
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        behaviour = handler.unary_unary

        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not self._admitted(caller_identity(context)):
                await refuse(context, self._reason, self._message)
            return await behaviour(request, context)

        wrapped = grpc.unary_unary_rpc_method_handler(
            checked, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
