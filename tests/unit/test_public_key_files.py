"""One reader of public-key files: the manifest and the CLI accept the same formats and refuse the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.cli.provinces import load_public_key as cli_load_public_key
from gateway.config import ConfigError
from gateway.manifest import load_manifest


def _manifest(directory: Path, key_file: str) -> Path:
    path = directory / "provinces.toml"
    path.write_text(f"""
[[provinces]]
code = "610000"
name = "陕西"
endpoint = "127.0.0.1:50063"
keys = [{{ key_id = "610000-k1", public_key_file = "{key_file}" }}]
""", encoding="utf-8")
    return path


def _key_files(directory: Path) -> tuple[bytes, list[str]]:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    files = {
        "raw.bin": raw,
        "hex.pub": (raw.hex() + "\n").encode(),  # what the gateway and the stubs write (var/keys/*.pub)
        "spki.pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "spki.der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return raw, list(files)


def test_the_manifest_reads_every_format_the_cli_reads(tmp_path: Path) -> None:
    raw, names = _key_files(tmp_path)
    for name in names:
        (province,) = load_manifest(_manifest(tmp_path, name))
        assert province.keys[0].public_key == raw == cli_load_public_key(tmp_path / name), name


def test_both_refuse_what_is_not_an_ed25519_public_key(tmp_path: Path) -> None:
    # An X25519 key has the same shape under another algorithm; a private key file is refused by its name.
    (tmp_path / "x25519.pem").write_bytes(X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "province.key").write_text(bytes(32).hex())
    (tmp_path / "short.pub").write_text(bytes(31).hex())
    for name in ("x25519.pem", "province.key", "short.pub"):
        with pytest.raises(ConfigError):
            load_manifest(_manifest(tmp_path, name))
        with pytest.raises(typer.Exit):
            cli_load_public_key(tmp_path / name)
