"""Settlement suspensions (D3) as each province reported them, by keyed hash of the person."""

from __future__ import annotations

from datetime import datetime

from gateway.store.prepared import Cursor
from gateway.store.statements import Statements


class SqlMemberRepository:
    """Settlement suspensions (D3) by keyed hash of the person."""

    def __init__(self, cursor: Cursor, statements: Statements) -> None:
        self._cursor, self._s = cursor, statements

    def suspend(self, person_ref: bytes, province: str, at: datetime) -> None:
        self._cursor.run(self._s.suspend_member, person_ref=person_ref, province=province, since=at)

    def resume(self, person_ref: bytes, province: str) -> None:
        self._cursor.run(self._s.resume_member, ref=person_ref, province=province)

    def is_suspended(self, person_ref: bytes, province: str) -> bool:
        return self._cursor.first(self._s.member_suspended, ref=person_ref, province=province) is not None

    def suspended_party(self, giver_ref: bytes, giver_province: str, receiver_ref: bytes,
                        receiver_province: str) -> str | None:
        row = self._cursor.first(self._s.parties_suspended, giver_ref=giver_ref, giver_province=giver_province,
                                 receiver_ref=receiver_ref, receiver_province=receiver_province)
        assert row is not None, "a SELECT of two EXISTS has its row"
        return "giver" if row[0] else "receiver" if row[1] else None
