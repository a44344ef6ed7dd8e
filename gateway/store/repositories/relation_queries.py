"""The record of VerifyRelation queries (masked ID numbers only), appended and never read on a call's path."""

from __future__ import annotations

from gateway.domain.relations import RelationQueryRecord
from gateway.store.prepared import Cursor
from gateway.store.statements import Statements


class SqlRelationQueryLog:
    """The record of VerifyRelation queries: one insert each, nothing read back on a call's path."""

    def __init__(self, cursor: Cursor, statements: Statements) -> None:
        self._cursor, self._s = cursor, statements

    def record(self, entry: RelationQueryRecord) -> None:
        self._cursor.run(self._s.insert_relation_query, asked_at=entry.asked_at, asking_province=entry.asking_province,
                         receiver_province=entry.receiver_province, message_id=entry.message_id,
                         giver_id_masked=entry.giver_id_masked, receiver_id_masked=entry.receiver_id_masked,
                         relation_code=entry.relation_code, answer=entry.answer.value)
