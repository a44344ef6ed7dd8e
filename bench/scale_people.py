"""The scale bench's people: givers insured in Xinjiang, each with a parent insured in Gansu, added to the stubs'
seeds and bound through them. The provinces' traffic is then many givers' transfers, as it is in service (three a
giver a day at most, D12), not one giver's: one giver's submissions are decided one at a time (its row of the day
is locked until the commit), so a single giver at 50 a second measures its own queue, not the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

from bench.phases import bind_giver_and_receiver
from bench.transfers import GANSU, XINJIANG, Pair
from gateway.domain.identity import Sex
from protos.gongji.v1 import common_pb2
from province_stub.people import default_seed_path
from scripts.idgen import id_numbers, pooling_area, seed_entries

GIVERS_AREA, RECEIVERS_AREA = "650502", "620102"  # Hami, Lanzhou (the seeds' pair's)
GIVERS_BORN, RECEIVERS_BORN = date(1988, 3, 14), date(1961, 9, 2)
BINDING_AT_ONCE = 8  # proposals in flight while binding


def people(count: int) -> list[tuple[common_pb2.PersonRef, common_pb2.PersonRef]]:
    """`count` (giver, receiver) pairs, the same for the same count (at most scripts.idgen.MAX_COUNT)."""
    givers = id_numbers(GIVERS_AREA, GIVERS_BORN, Sex.MALE, count)
    receivers = id_numbers(RECEIVERS_AREA, RECEIVERS_BORN, Sex.FEMALE, count)
    return [(common_pb2.PersonRef(id_number=giver, pooling_area=pooling_area(giver)),
             common_pb2.PersonRef(id_number=receiver, pooling_area=pooling_area(receiver)))
            for giver, receiver in zip(givers, receivers, strict=True)]


def seed_files(folder: Path, pairs: Sequence[tuple[common_pb2.PersonRef, common_pb2.PersonRef]]) -> dict[str, Path]:
    """Each stub's packaged seed with these people added, written in `folder`: {province: path}."""
    added = {XINJIANG: [giver.id_number for giver, _ in pairs], GANSU: [receiver.id_number for _, receiver in pairs]}
    paths = {}
    for province, numbers in added.items():
        path = folder / f"seed-{province}.toml"
        path.write_text(default_seed_path(province).read_text(encoding="utf-8") + seed_entries(numbers),
                        encoding="utf-8")
        paths[province] = path
    return paths


async def bind(stub_controls: Mapping[str, str],
               pairs: Sequence[tuple[common_pb2.PersonRef, common_pb2.PersonRef]]) -> list[Pair]:
    """Every pair bound (Xinjiang proposes, Gansu's stub consents), BINDING_AT_ONCE at a time."""
    at_once = asyncio.Semaphore(BINDING_AT_ONCE)

    async def one(giver: common_pb2.PersonRef, receiver: common_pb2.PersonRef) -> Pair:
        async with at_once:
            return Pair(await bind_giver_and_receiver(stub_controls, giver, receiver), giver, receiver)

    return list(await asyncio.gather(*(one(giver, receiver) for giver, receiver in pairs)))

