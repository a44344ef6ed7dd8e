"""The routing table: provinces, their keys and policies, cached per store and reloaded when its version moves."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any

from gateway.domain.provinces import MutualAidMode, Policy, Province, ProvinceKey, ProvinceStatus
from gateway.store.prepared import Cursor
from gateway.store.repositories.audit import SqlAuditLog
from gateway.store.statements import Statements


def _policy_to_json(policy: Policy) -> str:
    values = {name: getattr(policy, name) for name in Policy.__slots__ if getattr(policy, name) is not None}
    if policy.mutual_aid_mode is not None:
        values["mutual_aid_mode"] = policy.mutual_aid_mode.value
    return json.dumps(values, sort_keys=True)


def _policy_from_json(text: str) -> Policy:
    values = {k: v for k, v in json.loads(text or "{}").items() if k in Policy.__slots__}
    if values.get("mutual_aid_mode") is not None:
        values["mutual_aid_mode"] = MutualAidMode(values["mutual_aid_mode"])
    return Policy(**values)


class RoutingCache:
    """The routing table of one database, shared by threads. Any gateway process's change moves the version row,
    so it is seen on the next call without reading every row every time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: int | None = None
        self._provinces: dict[str, Province] = {}
        self._key_owners: dict[str, tuple[str, ProvinceKey]] = {}

    def snapshot(self, cursor: Cursor, statements: Statements,
                 version: int | None = None) -> tuple[dict[str, Province], dict[str, tuple[str, ProvinceKey]]]:
        """The table as of `version` (read in this transaction already), else as of the version read now."""
        if version is None:
            row = cursor.first(statements.routing_version)
            version = int(row[0]) if row else 0
        with self._lock:
            if version == self._version:
                return self._provinces, self._key_owners
        keys: dict[str, list[ProvinceKey]] = {}
        owners: dict[str, tuple[str, ProvinceKey]] = {}
        names = statements.all_keys.columns
        for raw in cursor.all(statements.all_keys):
            k = dict(zip(names, raw, strict=True))
            key = ProvinceKey(k["key_id"], bytes(k["public_key"]), k["alg"], k["valid_from"], k["valid_until"])
            keys.setdefault(k["province_code"], []).append(key)
            owners[key.key_id] = (k["province_code"], key)
        provinces = {}
        names = statements.all_provinces.columns
        for raw in cursor.all(statements.all_provinces):
            v = dict(zip(names, raw, strict=True))
            provinces[v["code"]] = Province(
                code=v["code"], name=v["name"], endpoint=v["endpoint"], status=ProvinceStatus(v["status"]),
                keys=tuple(keys.get(v["code"], ())), policy=_policy_from_json(v["policy_json"]),
                updated_at=v["updated_at"])
        with self._lock:
            self._version, self._provinces, self._key_owners = version, provinces, owners
        return provinces, owners


def _when(province: Province) -> datetime:
    if province.updated_at is None:
        raise ValueError("a province is stored with the time of its change")
    return province.updated_at


class SqlProvinceRepository:
    def __init__(self, cursor: Cursor, statements: Statements, cache: RoutingCache, audit: SqlAuditLog,
                 version_at_begin: int | None = None) -> None:
        self._cursor, self._s, self._cache, self._audit = cursor, statements, cache, audit
        self._snapshot: tuple[dict[str, Province], dict[str, tuple[str, ProvinceKey]]] | None = None
        # The version the transaction read with its BEGIN (PostgreSQL), if any: no query of its own then.
        self._version_at_begin = version_at_begin

    def _routing(self) -> tuple[dict[str, Province], dict[str, tuple[str, ProvinceKey]]]:
        # Read the version once per unit of work: one cheap query instead of the whole table.
        if self._snapshot is None:
            self._snapshot = self._cache.snapshot(self._cursor, self._s, self._version_at_begin)
        return self._snapshot

    def lock(self) -> None:
        """Until the transaction ends, no other transaction changes the routing table (taken before reading
        it, so what is read is what is changed). SQLite needs no lock: its writers take it at BEGIN."""
        assert self._snapshot is None, "lock before the first read"
        if self._s.lock_routing is not None:
            self._cursor.run(self._s.lock_routing)
        self._version_at_begin = None  # read before the lock: another change may have come between

    def get(self, code: str) -> Province | None:
        return self._routing()[0].get(code)

    def list(self) -> list[Province]:
        return sorted(self._routing()[0].values(), key=lambda p: p.code)

    def key_owner(self, key_id: str) -> tuple[str, ProvinceKey] | None:
        return self._routing()[1].get(key_id)

    def _values(self, province: Province) -> dict[str, Any]:
        return {"name": province.name, "endpoint": province.endpoint, "status": province.status.value,
                "policy_json": _policy_to_json(province.policy), "updated_at": province.updated_at}

    def add(self, province: Province) -> None:
        self._cursor.run(self._s.insert_province, code=province.code, **self._values(province))
        self._write_keys(province, existing=set())
        self._changed()
        self._audit.record("province", province.code, "REGISTERED", _when(province), self._describe(province))

    @staticmethod
    def _describe(province: Province) -> str:
        keys = ",".join(f"{k.key_id}:{k.public_key.hex()}:{k.valid_from.isoformat() if k.valid_from else ''}:"
                        f"{k.valid_until.isoformat() if k.valid_until else ''}" for k in province.keys)
        return f"name={json.dumps(province.name, ensure_ascii=False)} status={province.status.value} " \
               f"endpoint={province.endpoint} keys={keys} policy={_policy_to_json(province.policy)}"

    def update(self, province: Province) -> None:
        self._cursor.run(self._s.update_province, w_code=province.code, **self._values(province))
        current = self._routing()[0].get(province.code)
        self._write_keys(province, existing={k.key_id for k in current.keys} if current else set())
        self._changed()
        self._audit.record("province", province.code, "UPDATED", _when(province), self._describe(province))

    def _write_keys(self, province: Province, existing: set[str]) -> None:
        for key in province.keys:
            values = {"alg": key.alg, "public_key": key.public_key, "valid_from": key.valid_from,
                      "valid_until": key.valid_until}
            if key.key_id in existing:
                self._cursor.run(self._s.update_key, w_key_id=key.key_id, **values)
            else:
                self._cursor.run(self._s.insert_key, key_id=key.key_id, province_code=province.code, **values)

    def _changed(self) -> None:
        self._cursor.run(self._s.bump_routing_version)
        self._snapshot = None
