"""Development mutual TLS: the development CA, channels presenting its certificates, `python -m scripts.devtls`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.security.tls import GATEWAY_DNS, URI_PREFIX, TlsFiles, province_dns

# -- the development CA (make run, tests) --------------------------------------------------------------


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a reader never sees half a file (credentials follow their files)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def dev_ca_certificate(key: ec.EllipticCurvePrivateKey, not_before: datetime, not_after: datetime) -> x509.Certificate:
    """The development CA's self-signed certificate, valid from `not_before` to `not_after`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Gongji development CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


class DevCa:
    """A CA for development and tests only: it lives in a folder and issues short-lived certificates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cert_file, self.key_file = folder / "ca.crt", folder / "ca.key"
        # A CA near its end is replaced (a checkout left for a year still starts); `ensure` then reissues
        # every certificate, since none verifies against the new CA.
        if not self.cert_file.exists() or _expiring(x509.load_pem_x509_certificate(self.cert_file.read_bytes())):
            self._create()
        self._key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        self._cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def _create(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = dev_ca_certificate(key, now - timedelta(minutes=5), now + timedelta(days=365))
        _write(self.key_file, _pem_key(key), private=True)
        _write(self.cert_file, cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, uri: str, dns: Sequence[str] = (), days: int = 30) -> TlsFiles:
        """A certificate for both ends of a connection (server and client), written as <name>.crt/.key."""
        alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return self.issue_names(name, alt + [x509.DNSName(d) for d in dns], days)

    def issue_names(self, name: str, alt: Sequence[x509.GeneralName], days: int = 30) -> TlsFiles:
        """A certificate naming exactly `alt` in its subjectAltName, written as <name>.crt/.key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self._cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self._key, hashes.SHA256()))  # type: ignore[arg-type]
        files = TlsFiles(self.folder / f"{name}.crt", self.folder / f"{name}.key", self.cert_file)
        _write(files.key, _pem_key(key), private=True)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        return files

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.folder / f"{name}.crt", self.folder / f"{name}.key", self.cert_file)

    def ensure(self, name: str, uri: str, dns: Sequence[str] = ()) -> TlsFiles:
        """`name`'s certificate, issued anew when missing, near its end, or not from this CA."""
        files = self.files(name)
        if files.cert.exists() and files.key.exists() and self._current(files.cert):
            return files
        return self.issue(name, uri, dns)

    def _current(self, cert_file: Path) -> bool:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return not _expiring(cert)


def _expiring(cert: x509.Certificate) -> bool:
    """Expired, or expiring within a day: a development stack started now would soon stop handshaking."""
    return cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=1)


def ensure_dev_pki(folder: Path, provinces: Iterable[str], operators: Iterable[str] = ("operator",)) -> DevCa:
    """The development CA with certificates for the gateway, each province and each operator."""
    ca = DevCa(folder)
    ca.ensure("gateway", f"{URI_PREFIX}gateway", [GATEWAY_DNS])
    for code in provinces:
        ca.ensure(f"province-{code}", f"{URI_PREFIX}province:{code}", [province_dns(code)])
    for name in operators:
        ca.ensure(f"operator-{name}", f"{URI_PREFIX}operator:{name}")
    return ca


# -- channels and the command line -----------------------------------------------------------------


def channel_as(address: str, server_name: str, tls_dir: Path | None, identity: str = "operator-operator",
               options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel presenting `identity`'s certificate from `tls_dir` (as DevCa writes it), expecting the server's
    certificate to name `server_name`; plaintext when `tls_dir` is None. `options`: gRPC channel arguments."""
    if tls_dir is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=(tls_dir / "ca.crt").read_bytes(),
                                               private_key=(tls_dir / f"{identity}.key").read_bytes(),
                                               certificate_chain=(tls_dir / f"{identity}.crt").read_bytes())
    return grpc.secure_channel(address, credentials,
                               options=[*options, ("grpc.ssl_target_name_override", server_name)])


def issue_province_certificate(tls_dir: Path, code: str) -> Path:
    """A certificate for province `code` from the development CA in `tls_dir` (made by `make run`).

    Refuses when there is no CA there: a new CA would be one the running gateway does not trust.
    """
    if not (tls_dir / "ca.crt").exists() or not (tls_dir / "ca.key").exists():
        raise SystemExit(f"error: no development CA in {tls_dir} (start `make run` once to create it)")
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        raise SystemExit(f"error: {code!r} is not a 6-digit province code")
    return ensure_dev_pki(tls_dir, [code], operators=()).files(f"province-{code}").cert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.devtls",
        description="Issue a development certificate for another stub province (mutual TLS with `make run`).")
    parser.add_argument("province", help="the province code, e.g. 610000")
    parser.add_argument("--tls-dir", type=Path, default=Path("var/tls"), help="the development CA (default var/tls)")
    args = parser.parse_args(argv)
    cert = issue_province_certificate(args.tls_dir, args.province)
    print(f"{cert} (and its key beside it): start the stub with --tls-dir {args.tls_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
