"""The routing table as the domain sees it: provinces, their keys, status and policy."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain import reasons
from gateway.domain.envelope import ALLOWED_ALGS
from gateway.domain.errors import InvalidArgument
from gateway.domain.money import MAX_AMOUNT_FEN

PROVINCE_CODE = re.compile(r"[0-9]{2}0000")  # ASCII digits only, as in ID numbers
KEY_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# A DNS name is at most 253 characters; with ":port" (or an IPv6 literal in brackets) 261 is enough.
MAX_ENDPOINT_LENGTH = 261
NAME_MAX = 64


class ProvinceStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


class MutualAidMode(enum.Enum):
    """Q1: the regimes a province takes part in: the 2024-25 pilot's transfers, the 2026 quotas, or both."""

    TRANSFER = "TRANSFER"
    QUOTA = "QUOTA"
    BOTH = "BOTH"

    @property
    def allows_transfers(self) -> bool:
        return self is not MutualAidMode.QUOTA

    @property
    def allows_quotas(self) -> bool:
        return self is not MutualAidMode.TRANSFER


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-province policy (D8, D12, D13, Q1, Q11); None means the national default."""

    single_relation_only: bool | None = None
    daily_transfer_limit: int | None = None
    max_transfer_fen: int | None = None
    blackout_start_minute: int | None = None
    blackout_end_minute: int | None = None
    return_hour: int | None = None
    delivery_deadline_seconds: int | None = None
    mutual_aid_mode: MutualAidMode | None = None
    max_consumption_fen: int | None = None  # Q11; none by default (the effective policy keeps None)


NATIONAL_DEFAULTS = Policy(
    single_relation_only=False,
    daily_transfer_limit=3,
    max_transfer_fen=200_000,
    blackout_start_minute=22 * 60,
    blackout_end_minute=6 * 60,
    return_hour=6,
    delivery_deadline_seconds=600,
    mutual_aid_mode=MutualAidMode.BOTH,
)


def effective_policy(policy: Policy) -> Policy:
    """The province's overrides on top of the national defaults."""
    merged = {
        name: getattr(policy, name) if getattr(policy, name) is not None else getattr(NATIONAL_DEFAULTS, name)
        for name in Policy.__slots__
    }
    return Policy(**merged)


def mutual_aid_mode(policy: Policy) -> MutualAidMode:
    """Q1: the province's regimes (BOTH unless its policy says otherwise)."""
    return policy.mutual_aid_mode or MutualAidMode.BOTH


@dataclass(frozen=True, slots=True)
class ProvinceKey:
    key_id: str
    public_key: bytes
    alg: str = "ed25519"
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def is_valid_at(self, at: datetime) -> bool:
        if self.valid_from is not None and at < self.valid_from:
            return False
        return self.valid_until is None or at < self.valid_until


@dataclass(frozen=True, slots=True)
class Province:
    code: str
    name: str
    endpoint: str
    status: ProvinceStatus = ProvinceStatus.ACTIVE
    keys: tuple[ProvinceKey, ...] = ()
    policy: Policy = field(default_factory=Policy)
    updated_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.status is ProvinceStatus.ACTIVE


def validate_province_code(code: str, field_name: str = "code") -> None:
    if not PROVINCE_CODE.fullmatch(code):
        raise InvalidArgument("a province code is six digits ending in 0000", reason=reasons.INVALID_PROVINCE_CODE,
                              field=field_name)


def validate_name(name: str, field_name: str = "name") -> None:
    """A display name set by an operator (e.g. 陕西): printable text, so that no control character or
    terminal escape reaches an operator's screen or the record."""
    if not name.strip() or len(name) > NAME_MAX or not name.isprintable():
        raise InvalidArgument(f"name is required: at most {NAME_MAX} printable characters",
                              reason=reasons.INVALID_NAME, field=field_name)


def validate_endpoint(endpoint: str, field_name: str = "endpoint") -> None:
    host, sep, port = endpoint.rpartition(":")
    # The length first: int() of a port thousands of digits long raises ValueError, not a clear error.
    # ASCII without spaces: a host name is written so (an internationalised one as its xn-- form).
    if (len(endpoint) > MAX_ENDPOINT_LENGTH or not endpoint.isascii() or not endpoint.isprintable()
            or " " in endpoint or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise InvalidArgument(f"an endpoint is host:port, at most {MAX_ENDPOINT_LENGTH} ASCII characters without "
                              "spaces", reason=reasons.INVALID_ENDPOINT, field=field_name)


def validate_key(key: ProvinceKey, field_name: str = "keys") -> None:
    if not KEY_ID.fullmatch(key.key_id):
        raise InvalidArgument("key_id is 1-64 characters [A-Za-z0-9._:-]", reason=reasons.INVALID_KEY_ID,
                              field=f"{field_name}.key_id")
    if key.alg not in ALLOWED_ALGS:
        raise InvalidArgument("only ed25519 keys are accepted", reason=reasons.UNSUPPORTED_KEY_ALGORITHM,
                              field=f"{field_name}.alg")
    if len(key.public_key) != 32:
        raise InvalidArgument("an Ed25519 public key is 32 bytes", reason=reasons.INVALID_PUBLIC_KEY,
                              field=f"{field_name}.public_key")
    if key.valid_from and key.valid_until and key.valid_until <= key.valid_from:
        raise InvalidArgument("valid_until must be after valid_from", reason=reasons.INVALID_KEY_VALIDITY,
                              field=f"{field_name}.valid_until")


def validate_policy(policy: Policy) -> None:
    checks: list[tuple[str, int | None, int, int]] = [
        ("daily_transfer_limit", policy.daily_transfer_limit, 1, 1_000_000),
        ("max_transfer_fen", policy.max_transfer_fen, 1, MAX_AMOUNT_FEN),
        ("blackout_start_minute", policy.blackout_start_minute, 0, 1439),
        ("blackout_end_minute", policy.blackout_end_minute, 0, 1439),
        ("return_hour", policy.return_hour, 0, 23),
        ("delivery_deadline_seconds", policy.delivery_deadline_seconds, 1, 7 * 24 * 3600),
        ("max_consumption_fen", policy.max_consumption_fen, 1, MAX_AMOUNT_FEN),
    ]
    for name, value, low, high in checks:
        if value is not None and not low <= value <= high:
            raise InvalidArgument(f"policy.{name} must be within {low}..{high}", reason=reasons.INVALID_POLICY,
                                  field=f"policy.{name}")
