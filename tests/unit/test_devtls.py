"""The development CA: `python -m scripts.devtls <code>` for another stub province, and renewal of what ran out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scripts.devtls import DevCa, dev_ca_certificate, ensure_dev_pki, main


def test_a_third_province_gets_a_certificate_the_gateway_trusts(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ca = ensure_dev_pki(tmp_path, ["650000", "620000"])  # as make run leaves var/tls
    ca_before = ca.cert_file.read_bytes()
    assert main(["610000", "--tls-dir", str(tmp_path)]) == 0
    assert "province-610000.crt" in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((tmp_path / "province-610000.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))  # the same CA, not a new one
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["gongji:province:610000"]
    assert "610000.province.gongji" in names.get_values_for_type(x509.DNSName)
    assert (tmp_path / "province-610000.key").exists() and ca.cert_file.read_bytes() == ca_before


def test_without_a_development_ca_nothing_is_made(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no development CA"):
        main(["610000", "--tls-dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []
    ensure_dev_pki(tmp_path, ["650000"])
    with pytest.raises(SystemExit, match="not a 6-digit province code"):
        main(["61000x", "--tls-dir", str(tmp_path)])


def _not_after(path: Path) -> datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_a_development_certificate_is_kept_while_good_and_reissued_when_expiring_or_from_another_ca(
        tmp_path: Path) -> None:
    """A checkout left for longer than a certificate's 30 days still starts: `make run` reissues what ran out."""
    uri, dns = "gongji:province:610000", ["610000.province.gongji"]
    ca = DevCa(tmp_path / "tls")
    files = ca.ensure("province-610000", uri, dns)
    first = files.cert.read_bytes()
    assert ca.ensure("province-610000", uri, dns).cert.read_bytes() == first  # good: kept as it is
    ca.issue("province-610000", uri, dns, days=0)  # ends now
    assert _not_after(ca.ensure("province-610000", uri, dns).cert) > datetime.now(UTC) + timedelta(days=29)
    stranger = DevCa(tmp_path / "other").issue("province-610000", uri, dns)
    files.cert.write_bytes(stranger.cert.read_bytes())
    files.key.write_bytes(stranger.key.read_bytes())
    cert = x509.load_pem_x509_certificate(ca.ensure("province-610000", uri, dns).cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_file.read_bytes()))


def test_an_expiring_development_ca_is_replaced_and_its_certificates_with_it(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    ca = ensure_dev_pki(folder, ["650000"])
    key = ec.generate_private_key(ec.SECP256R1())  # the old CA, made to end within the hour
    now = datetime.now(UTC)
    ending = dev_ca_certificate(key, now - timedelta(days=364), now + timedelta(hours=1))
    ca.cert_file.write_bytes(ending.public_bytes(serialization.Encoding.PEM))
    ca.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    renewed = ensure_dev_pki(folder, ["650000"])
    new_ca = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
    assert new_ca.not_valid_after_utc > now + timedelta(days=300)
    for name_of in ("gateway", "province-650000", "operator-operator"):
        x509.load_pem_x509_certificate(renewed.files(name_of).cert.read_bytes()).verify_directly_issued_by(new_ca)
