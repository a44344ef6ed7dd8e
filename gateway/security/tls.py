"""Mutual TLS: who is calling (from its certificate), and credentials that follow their files.

Identities are URIs in the certificate's subjectAltName: `gongji:province:650000` for a province's
platform, `gongji:operator:<name>` for an operator, `gongji:gateway` for the gateway. Province
servers also carry the DNS name `<code>.province.gongji`, which the gateway checks when it calls
them, and the gateway carries `gateway.gongji`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

URI_PREFIX = "gongji:"
GATEWAY_DNS = "gateway.gongji"


def province_dns(code: str) -> str:
    return f"{code}.province.gongji"


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str  # province, operator, gateway
    name: str  # the province code, the operator's name, or "gateway"


def identity_of(auth_context: Mapping[str, Iterable[bytes]]) -> Identity | None:
    """The one Gongji identity a verified client certificate names in a URI subjectAltName, or None.

    Read from the certificate itself: gRPC's `x509_subject_alternative_name` mixes every kind of name, and a
    DNS or e-mail name spelled `gongji:operator:x` is no identity.
    """
    pem = next(iter(auth_context.get("x509_pem_cert", ())), None)
    return None if pem is None else _identity_in(bytes(pem))


@functools.lru_cache(maxsize=1024)  # one parse per certificate, not per call
def _identity_in(pem: bytes) -> Identity | None:
    try:
        names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return None
    found = []
    for value in names:
        if value.startswith(URI_PREFIX):
            kind, _, name = value.removeprefix(URI_PREFIX).partition(":")
            found.append(Identity(kind, name or kind))
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes(), self.ca.read_bytes()

    def stamp(self) -> tuple[int, ...]:
        return tuple(p.stat().st_mtime_ns for p in (self.cert, self.key, self.ca))
