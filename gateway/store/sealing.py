"""How the store seals the personal data it keeps (instruction and proposal payloads): the Sealer it is given."""

from __future__ import annotations

from typing import Protocol


class Sealer(Protocol):
    """Encrypts stored values that hold personal data; `place` binds a value to its table, column and row."""

    def seal(self, plaintext: bytes, place: bytes) -> bytes: ...
    def open(self, sealed: bytes, place: bytes) -> bytes: ...


class NoSealer:
    """For a store that must never read or write personal data (e.g. verifying the audit chain)."""

    def seal(self, plaintext: bytes, place: bytes) -> bytes:
        raise RuntimeError("no sealer configured for this database: personal data is never stored in clear")

    def open(self, sealed: bytes, place: bytes) -> bytes:
        return self.seal(sealed, place)
