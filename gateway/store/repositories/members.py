"""Settlement suspensions (D3) as each province reported them, by keyed hash of the person."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.store.prepared import Cursor, Prepared
from gateway.store.statements import Statements


def parties_suspended(statements: Statements, giver_ref: bytes, giver_province: str, receiver_ref: bytes,
                      receiver_province: str) -> tuple[Prepared, dict[str, Any]]:
    """The statement reading both parties' suspensions at once, with its values (read alone or in a batch)."""
    return statements.parties_suspended, {"giver_ref": giver_ref, "giver_province": giver_province,
                                          "receiver_ref": receiver_ref, "receiver_province": receiver_province}


def party_named(row: Sequence[Any] | None) -> str | None:
    """parties_suspended's row as the party suspended: "giver" (first), "receiver", or None."""
    assert row is not None, "a SELECT of two EXISTS has its row"
    return "giver" if row[0] else "receiver" if row[1] else None


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
        statement, values = parties_suspended(self._s, giver_ref, giver_province, receiver_ref, receiver_province)
        return party_named(self._cursor.first(statement, **values))
