"""The gateway's own signing keys: the current one registered at start-up, older ones retiring."""

from __future__ import annotations

from datetime import timedelta

from gateway.domain.provinces import ProvinceKey
from gateway.usecases.context import UseCaseContext


def register_gateway_key(ctx: UseCaseContext, key_id: str, public_key: bytes, overlap: timedelta) -> None:
    """Make `key_id` the current key; every other key stays good for `overlap` more, then expires.

    Provinces that fetched the old key keep verifying what it signed until then (ListGatewayKeys).
    Starting again with the same key changes nothing.
    """
    now = ctx.clock.now()
    with ctx.uow() as uow:
        uow.gateway_keys.lock()  # gateways starting together on one database: one registers, the others find it
        keys = {key.key_id: key for key in uow.gateway_keys.list()}
        known = keys.get(key_id)
        if known is not None and known.public_key != public_key:
            raise ValueError(f"gateway key {key_id} is registered with another public key: give a new key a new id")
        if known is not None and known.valid_until is None:
            return
        if known is None:
            uow.gateway_keys.add(ProvinceKey(key_id, public_key, "ed25519", now, None), now)
        for other in keys.values():
            if other.key_id != key_id and (other.valid_until is None or other.valid_until > now + overlap):
                uow.gateway_keys.retire(other.key_id, now + overlap, now)
        uow.commit()


def gateway_keys(ctx: UseCaseContext, include_expired: bool = False) -> list[ProvinceKey]:
    """Newest first; without `include_expired`, only keys whose signatures are still good."""
    now = ctx.clock.now()
    with ctx.uow(read_only=True) as uow:
        keys = uow.gateway_keys.list()
    return [k for k in keys if include_expired or k.valid_until is None or k.valid_until > now]
