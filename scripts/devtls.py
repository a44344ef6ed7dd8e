"""Development mutual TLS: client channels with a certificate from the development CA (or plaintext), and
`python -m scripts.devtls <code>` issuing a certificate for another stub province."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from gateway.security.tls import ensure_dev_pki


def channel_as(address: str, server_name: str, tls_dir: Path | None,
               identity: str = "operator-operator") -> grpc.Channel:
    """A channel presenting `identity`'s certificate from `tls_dir` (as gateway/security/tls.py DevCa writes
    it), expecting the server's certificate to name `server_name`; plaintext when `tls_dir` is None."""
    if tls_dir is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(root_certificates=(tls_dir / "ca.crt").read_bytes(),
                                               private_key=(tls_dir / f"{identity}.key").read_bytes(),
                                               certificate_chain=(tls_dir / f"{identity}.crt").read_bytes())
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server_name)])


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
