"""Routing-table use cases: register, update, list, and apply the start-up manifest."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.domain import reasons
from gateway.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from gateway.domain.provinces import (
    Policy,
    Province,
    ProvinceKey,
    ProvinceStatus,
    mutual_aid_mode,
    validate_endpoint,
    validate_key,
    validate_name,
    validate_policy,
    validate_province_code,
)
from gateway.usecases.context import UseCaseContext
from gateway.usecases.ports import UnitOfWork

# Who changes the routing table when no operator does: the start-up manifest.
MANIFEST_ACTOR = "gateway:manifest"


@dataclass(frozen=True)
class ProvinceChanges:
    """An UpdateProvince request: None (or empty) leaves a thing as it is."""

    name: str | None = None
    endpoint: str | None = None
    status: ProvinceStatus | None = None
    add_keys: Sequence[ProvinceKey] = ()
    retire_key_ids: Sequence[str] = ()
    policy: Policy | None = None


@dataclass(frozen=True)
class ManifestResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def _validate(province: Province) -> None:
    validate_province_code(province.code, "province.code")
    validate_name(province.name, "province.name")
    validate_endpoint(province.endpoint, "province.endpoint")
    if not province.keys:
        raise InvalidArgument("a province needs at least one signing key", reason=reasons.MISSING_FIELD,
                              field="province.keys")
    for key in province.keys:
        validate_key(key, "province.keys")
    validate_policy(province.policy)


def _check_key_ids_free(uow: UnitOfWork, code: str, keys: Sequence[ProvinceKey]) -> None:
    seen: set[str] = set()
    for key in keys:
        owner = uow.provinces.key_owner(key.key_id)
        if key.key_id in seen or (owner is not None and owner[0] != code):
            raise AlreadyExists("key_id is already registered",
                                reason=reasons.KEY_ID_TAKEN, field="province.keys.key_id")
        seen.add(key.key_id)


def require_active(province: Province | None, code: str, field: str) -> Province:
    """A province that may take part now: in the routing table and not suspended (stored refusals)."""
    if province is None:
        raise FailedPrecondition(f"province {code} is not in the routing table", reason=reasons.UNKNOWN_PROVINCE,
                                 field=field)
    if not province.is_active:
        raise FailedPrecondition(f"province {code} is suspended", reason=reasons.PROVINCE_SUSPENDED, field=field)
    return province


def require_regime(giver: Province, receiver: Province, *, quota: bool) -> None:
    """Q1: both provinces take part in the regime (the quotas, or the pilot's transfers): stored refusals."""
    for province in (giver, receiver):
        mode = mutual_aid_mode(province.policy)
        if quota and not mode.allows_quotas:
            raise FailedPrecondition(f"province {province.code} does not take part in the quota regime (Q1)",
                                     reason=reasons.QUOTA_NOT_ALLOWED, field="binding_id")
        if not quota and not mode.allows_transfers:
            raise FailedPrecondition(f"province {province.code} takes part in the quota regime only (Q1)",
                                     reason=reasons.TRANSFERS_NOT_ALLOWED, field="header.receiver"
                                     if province is receiver else "header.sender")


def register_province(ctx: UseCaseContext, province: Province, actor: str) -> Province:
    """`actor`: who asks (an operator's identity), named in the audit entry."""
    _validate(province)
    with ctx.uow() as uow:
        uow.audit.act_as(actor)
        uow.provinces.lock()  # two operators registering one province: one succeeds, the other is told
        if uow.provinces.get(province.code) is not None:
            raise AlreadyExists("the province is already registered",
                                reason=reasons.PROVINCE_EXISTS, field="province.code")
        _check_key_ids_free(uow, province.code, province.keys)
        stored = dataclasses.replace(province, updated_at=ctx.clock.now())
        uow.provinces.add(stored)
        uow.commit()
    return stored


def update_province(ctx: UseCaseContext, code: str, changes: ProvinceChanges, actor: str) -> Province:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        uow.audit.act_as(actor)
        uow.provinces.lock()
        current = uow.provinces.get(code)
        if current is None:
            raise NotFound("no such province", reason=reasons.PROVINCE_NOT_FOUND, field="code")
        keys = {k.key_id: k for k in current.keys}
        for key_id in changes.retire_key_ids:
            if key_id not in keys:
                raise NotFound("no such key for this province", reason=reasons.KEY_NOT_FOUND, field="retire_key_ids")
            keys[key_id] = dataclasses.replace(keys[key_id], valid_until=now)
        for key in changes.add_keys:
            validate_key(key, "add_keys")
            if key.key_id in keys:
                raise AlreadyExists("key_id is already registered",
                                    reason=reasons.KEY_ID_TAKEN, field="add_keys.key_id")
        _check_key_ids_free(uow, code, changes.add_keys)
        keys.update({k.key_id: k for k in changes.add_keys})
        updated = dataclasses.replace(
            current,
            name=changes.name if changes.name is not None else current.name,
            endpoint=changes.endpoint if changes.endpoint is not None else current.endpoint,
            status=changes.status or current.status,
            keys=tuple(keys.values()),
            policy=changes.policy if changes.policy is not None else current.policy,
            updated_at=now,
        )
        _validate(updated)
        uow.provinces.update(updated)
        uow.commit()
    return updated


def list_provinces(ctx: UseCaseContext) -> list[Province]:
    with ctx.uow(read_only=True) as uow:
        return uow.provinces.list()


def apply_manifest(ctx: UseCaseContext, declared: Sequence[Province]) -> ManifestResult:
    """Make the routing table hold what the manifest declares.

    Name, endpoint, policy and keys follow the manifest; an existing province keeps its status, which
    operators own at run time (a suspension survives a restart). Keys not in the manifest are kept.
    """
    result = ManifestResult()
    now = ctx.clock.now()
    for province in declared:
        _validate(province)
    with ctx.uow() as uow:
        uow.audit.act_as(MANIFEST_ACTOR)
        uow.provinces.lock()  # gateways starting together apply the same manifest: one adds, the others find
        for province in declared:
            _check_key_ids_free(uow, province.code, province.keys)
            current = uow.provinces.get(province.code)
            if current is None:
                uow.provinces.add(dataclasses.replace(province, updated_at=now))
                result.created.append(province.code)
                continue
            keys = {k.key_id: k for k in current.keys} | {k.key_id: k for k in province.keys}
            wanted = dataclasses.replace(current, name=province.name, endpoint=province.endpoint,
                                         policy=province.policy, keys=tuple(keys.values()))
            if wanted != current:
                uow.provinces.update(dataclasses.replace(wanted, updated_at=now))
                result.updated.append(province.code)
        uow.commit()
    return result
