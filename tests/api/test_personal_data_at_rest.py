"""D19 at rest: after real bindings and transfers, the database holds no clear ID number or name."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from protos.gongji.v1 import transfers_pb2
from tests.support import CLEAR_PERSONAL_DATA, MOTHER, Stack


def test_the_database_holds_no_clear_personal_data(stack: Stack, db_url: str) -> None:
    # Relation queries are recorded too: an eligible relative and a suspended stranger of Gansu's.
    for person, code in ((MOTHER, "52"), (("620102199207070511", "620100"), "70")):
        stack.verify_relation(person, relation_code=code)
    for _ in range(3):
        stack.wait_for_state(stack.submit(stack.instruction(amount_fen=1_000)).transfer_id,
                             transfers_pb2.TRANSFER_STATE_COMMITTED)
    # The gateway still reads what it sealed: the instruction it passes on verifies at the province.
    assert stack.snapshot("620000").deliveries_received >= 3

    with stack.gateway.engine.connect() as conn:
        sealed = [bytes(v) for (v,) in conn.execute(text("SELECT instruction_payload FROM transfers"))]
        sealed += [bytes(v) for (v,) in conn.execute(text("SELECT proposal_payload FROM bindings"))]
        if db_url.startswith("postgresql"):
            # Every value of every table as the database returns it; bytes as they are (their repr
            # would hide a UTF-8 name behind escapes), the rest as UTF-8 text.
            raw = b"\n".join(as_bytes(value) for table in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
                for row in conn.execute(text(f'SELECT * FROM "{table}"')) for value in row)
    assert sealed and all(value.startswith(b"g1") for value in sealed)
    if db_url.startswith("sqlite"):
        # The database file and its write-ahead log, byte for byte.
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    leaked = [v for v in CLEAR_PERSONAL_DATA if v.encode() in raw]
    assert not leaked, f"clear personal data at rest: {[v[:6] + '…' for v in leaked]}"


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()
