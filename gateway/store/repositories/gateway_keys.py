"""The gateway's own public keys, current and retiring."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Dialect

from gateway.domain.provinces import ProvinceKey
from gateway.store.prepared import Cursor, Prepared
from gateway.store.repositories.audit import SqlAuditLog
from gateway.store.statements import Statements
from gateway.store.tables import gateway_keys_t


class SqlGatewayKeyRepository:
    """The gateway's own public keys (rarely read or written: statements compiled per call)."""

    def __init__(self, cursor: Cursor, statements: Statements, dialect: Dialect, audit: SqlAuditLog) -> None:
        self._cursor, self._dialect, self._audit, self._s = cursor, dialect, audit, statements

    def lock(self) -> None:
        """Until the transaction ends, no other transaction changes the gateway's keys. SQLite needs no lock:
        its transactions take the write lock when they begin."""
        if self._s.lock_gateway_keys is not None:
            self._cursor.run(self._s.lock_gateway_keys)

    def list(self) -> list[ProvinceKey]:
        g = gateway_keys_t.c
        statement = Prepared(select(g.key_id, g.public_key, g.valid_from, g.valid_until)
                             .order_by(g.valid_from.desc(), g.key_id), self._dialect)
        return [ProvinceKey(key_id, bytes(public_key), "ed25519", valid_from, valid_until)
                for key_id, public_key, valid_from, valid_until in self._cursor.all(statement)]

    def add(self, key: ProvinceKey, at: datetime) -> None:
        self._cursor.run(Prepared(gateway_keys_t.insert(), self._dialect), key_id=key.key_id,
                         public_key=key.public_key, valid_from=key.valid_from, valid_until=key.valid_until)
        self._audit.record("gateway", key.key_id, "KEY_ADDED", at, f"public_key={key.public_key.hex()}")

    def retire(self, key_id: str, until: datetime, at: datetime) -> None:
        g = gateway_keys_t.c
        self._cursor.run(Prepared(update(gateway_keys_t).where(g.key_id == key_id).values(valid_until=until),
                                  self._dialect))
        self._audit.record("gateway", key_id, "KEY_RETIRING", at, f"valid_until={until.isoformat()}")
