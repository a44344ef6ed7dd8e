"""The bytes an audit entry's hash covers, split where the database that chains entries takes over."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.audit import AuditEvent, canonical, canonical_tail

TEXT = st.text(max_size=40)


@given(seq=st.integers(min_value=1, max_value=2**63 - 1), kind=TEXT, subject_id=TEXT, action=TEXT, detail=TEXT,
       at=st.datetimes(timezones=st.just(UTC)))
def test_the_canonical_bytes_are_the_compact_json_array_and_the_tail_is_all_after_the_position(
        seq: int, kind: str, subject_id: str, action: str, detail: str, at: datetime) -> None:
    event = AuditEvent(kind, subject_id, action, at, detail)
    # The form every stored hash was made with: it must not change.
    as_json = json.dumps([seq, at.isoformat(timespec="microseconds"), kind, subject_id, action, detail],
                         ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    assert canonical(seq, event) == as_json
    # What PostgreSQL is given and prefixes with '[' and the position it assigns (statements.py, DatabaseChaining).
    assert b"[" + str(seq).encode("ascii") + canonical_tail(event) == as_json
