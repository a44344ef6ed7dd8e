"""`python -m scripts.devtls <code>`: a certificate for another stub province from make run's development CA."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from gateway.security.tls import ensure_dev_pki
from scripts.devtls import main


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
