"""The stub province's insured people, loaded from a TOML seed file, and masking for logs (D19)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

SEEDS_DIR = Path(__file__).parent / "seeds"
_STATUSES = ("NORMAL", "INACTIVE")
_INSUTYPES = ("310", "390")


@dataclass(frozen=True)
class Person:
    """One insured person as this province's platform knows them."""

    id_number: str
    name: str
    pooling_area: str
    insutype: str
    status: str
    wallet_open: bool
    settlement_suspended: bool
    # The personal account's balance (个人账户), whole fen.
    account_fen: int = 0


@dataclass(frozen=True)
class Seed:
    """Everyone insured in one province, keyed by ID number (check character upper case)."""

    province: str
    people: dict[str, Person]

    def find(self, id_number: str) -> Person | None:
        return self.people.get(id_number.upper())


def default_seed_path(province: str) -> Path:
    return SEEDS_DIR / f"{province}.toml"


def load_seed(path: Path) -> Seed:
    with path.open("rb") as f:
        data = tomllib.load(f)
    province = str(data["province"])
    people: dict[str, Person] = {}
    for entry in data.get("people", []):
        person = Person(
            id_number=str(entry["id_number"]).upper(),
            name=str(entry["name"]),
            pooling_area=str(entry["pooling_area"]),
            insutype=str(entry["insutype"]),
            status=str(entry.get("status", "NORMAL")),
            wallet_open=bool(entry.get("wallet_open", True)),
            settlement_suspended=bool(entry.get("settlement_suspended", False)),
            account_fen=int(entry.get("account_fen", 0)),
        )
        # A typo in a seed file should stop the stub at start, not surface as a strange test failure.
        if person.status not in _STATUSES or person.insutype not in _INSUTYPES:
            raise ValueError(f"{path.name}: bad status or insutype for {mask_id(person.id_number)}")
        if person.id_number in people:
            raise ValueError(f"{path.name}: duplicate person {mask_id(person.id_number)}")
        people[person.id_number] = person
    return Seed(province=province, people=people)


def mask_id(id_number: str) -> str:
    """First 6 + last 4 characters, e.g. 650502********1230."""
    if len(id_number) < 10:
        return "*" * len(id_number)
    return id_number[:6] + "*" * 8 + id_number[-4:]


def mask_name(name: str) -> str:
    """First character + "*", e.g. 张*."""
    return name[:1] + "*" if name else ""
