"""The signed envelope and message header as the domain sees them (api.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

GATEWAY = "gateway"
ALG_ED25519 = "ed25519"
ALLOWED_ALGS = frozenset({ALG_ED25519})
MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed payload; `payload` is kept byte for byte as received."""

    payload: bytes
    payload_type: str
    signer: str
    key_id: str
    alg: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class Header:
    """The header every business message opens with."""

    message_id: str
    sender: str
    receiver: str
    created_at: datetime
