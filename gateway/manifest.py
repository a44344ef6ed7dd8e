"""The declarative province manifest (TOML) loaded at start-up into the routing table."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import ConfigError
from gateway.domain.provinces import Policy, Province, ProvinceKey, ProvinceStatus
from gateway.security.keys import load_public_key


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    raise ConfigError(f"{where} must be a TOML date-time")


def _key(raw: dict[str, Any], base: Path, where: str) -> ProvinceKey:
    if "public_key_hex" in raw:
        public_key = bytes.fromhex(raw["public_key_hex"])
    elif "public_key_file" in raw:
        public_key = load_public_key(base / raw["public_key_file"])
    else:
        raise ConfigError(f"{where}: a key needs public_key_file or public_key_hex")
    return ProvinceKey(key_id=str(raw["key_id"]), public_key=public_key, alg=str(raw.get("alg", "ed25519")),
                       valid_from=_time(raw.get("valid_from"), f"{where}.valid_from"),
                       valid_until=_time(raw.get("valid_until"), f"{where}.valid_until"))


def load_manifest(path: Path) -> list[Province]:
    """Provinces declared in `path`; relative key file paths are read from the manifest's folder."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"manifest {path}: {error}") from error
    provinces = []
    for index, raw in enumerate(document.get("provinces", [])):
        where = f"{path}: provinces[{index}]"
        try:
            provinces.append(Province(
                code=str(raw["code"]), name=str(raw["name"]), endpoint=str(raw["endpoint"]),
                status=ProvinceStatus(raw.get("status", "ACTIVE")),
                keys=tuple(_key(k, path.parent, f"{where}.keys") for k in raw.get("keys", [])),
                policy=Policy(**raw.get("policy", {})),
            ))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error!r}") from error
    return provinces
