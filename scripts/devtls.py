"""Client channels for development and tests: a certificate from the development CA, or plaintext."""

from __future__ import annotations

from pathlib import Path

import grpc


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
