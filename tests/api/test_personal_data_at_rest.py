"""D19 at rest: after real bindings, transfers and quotas, the database holds no clear ID number, name or birth date.

A birth date is the 8 digits a masked ID number (first 6 + last 4) hides: stored beside it in any form, it
gives the whole number back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import Connection, text

from gateway.domain.identity import IdNumber
from protos.gongji.v1 import transfers_pb2
from tests.api.quota_calls import consumption_message, grant, reverse, send_consumption
from tests.support import CLEAR_PERSONAL_DATA, GANSU, GIVER, MOTHER, XINJIANG, Stack

CHILD = ("620102201508160027", "620100")  # a girl of Lanzhou, under 16: a guardian attests for her


def test_the_database_holds_no_clear_personal_data(stack: Stack, db_url: str) -> None:
    daughter = stack.bind(GIVER, CHILD, "30", XINJIANG, GANSU)  # 30: daughter
    # Quotas (Q13): granted, drawn on, reversed and released; every quota table gets rows.
    for binding_id, person in ((stack.binding_id, MOTHER), (daughter, CHILD)):
        grant(stack, 50_000, binding_id)
        drawn = consumption_message(stack, 20_000, binding_id, person=person)
        send_consumption(stack, drawn)
        reverse(stack, drawn.settlement_ref, 5_000, binding_id)
    stack.dissolve(daughter)
    # Relation queries are recorded too: an eligible relative and a suspended stranger of Gansu's.
    for person, code in ((MOTHER, "52"), (("620102199207070511", "620100"), "70")):
        stack.verify_relation(person, relation_code=code)
    for _ in range(3):
        stack.wait_for_state(stack.submit(stack.instruction(amount_fen=1_000)).transfer_id,
                             transfers_pb2.TRANSFER_STATE_COMMITTED)
    # The gateway still reads what it sealed: the instruction it passes on verifies at the province.
    assert stack.snapshot("620000").deliveries_received >= 3

    with stack.gateway.engine.connect() as conn:
        for table in ("quotas", "quota_changes", "consumptions", "consumption_reversals", "quota_totals",
                      "clearing_totals"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() > 0, table
        sealed = [bytes(v) for (v,) in conn.execute(text("SELECT instruction_payload FROM transfers"))]
        sealed += [bytes(v) for (v,) in conn.execute(text("SELECT proposal_payload FROM bindings"))]
        values = list(every_value(conn, db_url))
    assert sealed and all(value.startswith(b"g1") for value in sealed)
    # Every value of every table as the database returns it; bytes as they are (their repr would hide a
    # UTF-8 name behind escapes), the rest as UTF-8 text.
    raw = b"\n".join(as_bytes(value) for value in values)
    if db_url.startswith("sqlite"):
        # And the database file and its write-ahead log, byte for byte.
        path = Path(db_url.removeprefix("sqlite:///"))
        raw += b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    leaked = [v for v in CLEAR_PERSONAL_DATA if v.encode() in raw]
    assert not leaked, f"clear personal data at rest: {[v[:6] + '…' for v in leaked]}"

    for id_number, _ in (GIVER, MOTHER, CHILD):
        birth = IdNumber(id_number).birth_date
        hidden = id_number[6:14]  # the digits the mask hides: the birth date as YYYYMMDD
        assert hidden == birth.strftime("%Y%m%d")
        for form in (hidden, birth.isoformat()):
            assert form.encode() not in raw, f"a birth date at rest ({form[:4]}…): with the masked ID, the whole ID"
        as_dates = [v for v in values if isinstance(v, date) and
                    (v.date() if isinstance(v, datetime) else v) == birth]
        assert not as_dates, f"a birth date stored as a date value ({birth.year}-…)"


def every_value(conn: Connection, db_url: str) -> Iterator[object]:
    if db_url.startswith("postgresql"):
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
    else:
        tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars()
    for table in list(tables):
        for row in conn.execute(text(f'SELECT * FROM "{table}"')):
            yield from row


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()
