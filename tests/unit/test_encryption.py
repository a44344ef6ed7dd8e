"""Personal data at rest: AES-256-GCM values that name their key, bound to their place, and rotate."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.security.encryption import FieldCipher, SealedValueError, load_or_create_keys

PLACE = b"transfers.instruction_payload:tr-1"


def test_a_sealed_value_opens_only_in_its_place_and_unaltered() -> None:
    cipher = FieldCipher.generate("k1")
    sealed = cipher.seal(b"650502199001011230 \xe5\xbc\xa0\xe4\xbc\x9f", PLACE)
    assert b"650502199001011230" not in sealed and FieldCipher.key_of(sealed) == "k1"
    assert cipher.open(sealed, PLACE) == b"650502199001011230 \xe5\xbc\xa0\xe4\xbc\x9f"
    assert cipher.seal(b"same", PLACE) != cipher.seal(b"same", PLACE)  # a fresh nonce every time
    with pytest.raises(SealedValueError):
        cipher.open(sealed, b"transfers.instruction_payload:tr-2")  # copied onto another row
    for index in (len(sealed) - 1, 20):
        altered = bytearray(sealed)
        altered[index] ^= 0x01
        with pytest.raises(SealedValueError):
            cipher.open(bytes(altered), PLACE)
    with pytest.raises(SealedValueError):
        cipher.open(b"650502199001011230", PLACE)  # a clear value is never taken for a sealed one


def test_keys_rotate_new_values_take_the_new_key_and_old_ones_still_open(tmp_path: Path) -> None:
    path = tmp_path / "data.keys"
    first = load_or_create_keys(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    old_value = first.seal(b"secret", PLACE)
    old_line = path.read_text()
    path.write_text(f"k-2027 {'ab' * 32}\n" + old_line)  # the new key goes first
    rotated = load_or_create_keys(path)
    assert rotated.current == "k-2027"
    assert rotated.open(old_value, PLACE) == b"secret"
    new_value = rotated.seal(b"secret", PLACE)
    assert FieldCipher.key_of(new_value) == "k-2027"
    with pytest.raises(SealedValueError, match="not in the key file"):
        first.open(new_value, PLACE)


def test_a_bad_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.keys"
    for text in ("k1 nothex\n", "just-one-field\n", "# only a comment\n", "k1 abcd\n"):
        path.write_text(text)
        with pytest.raises(ValueError):
            load_or_create_keys(path)
