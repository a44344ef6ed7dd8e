"""The gateway's secret files (data keys, ID hash secret, signing key) created once, whole, when several
gateways start at the same moment on one folder (two gateways on one PostgreSQL share their keys)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.security.encryption import load_or_create_keys
from gateway.security.hashing import load_or_create_secret
from gateway.security.keys import ensure_key_pair, public_bytes

STARTERS = 8
ROUNDS = 5


def _data_key(folder: str) -> str:
    """What a starter could read back: sealed by its key, opened by the key on disk once all have started."""
    return load_or_create_keys(Path(folder) / "data.keys").seal(b"one key for all", b"place").hex()


def _id_secret(folder: str) -> str:
    return load_or_create_secret(Path(folder) / "id-hash.key").hex()


def _signing_key(folder: str) -> str:
    """The key a starter loaded, and the public key file as it read it just after."""
    loaded = public_bytes(ensure_key_pair(Path(folder) / "gateway.key", Path(folder) / "gateway.pub")).hex()
    return loaded + "|" + (Path(folder) / "gateway.pub").read_text().strip()


def _start(barrier: multiprocessing.synchronize.Barrier, load: Callable[[str], str], folder: str,
           results: multiprocessing.queues.Queue[str]) -> None:
    barrier.wait()
    try:
        results.put(load(folder))
    except Exception as error:  # reported to the test, which names it
        results.put(f"ERROR {type(error).__name__}: {error}")


@pytest.mark.parametrize("load", [_data_key, _id_secret, _signing_key], ids=["data keys", "id hash", "signing key"])
def test_gateways_starting_together_share_one_secret(tmp_path: Path, load: Callable[[str], str]) -> None:
    context = multiprocessing.get_context("fork")
    for round_number in range(ROUNDS):
        folder = tmp_path / f"round-{round_number}"
        barrier = context.Barrier(STARTERS)
        results: multiprocessing.queues.Queue[str] = context.Queue()
        starters = [context.Process(target=_start, args=(barrier, load, str(folder), results))
                    for _ in range(STARTERS)]
        for process in starters:
            process.start()
        seen = [results.get(timeout=30) for _ in starters]
        for process in starters:
            process.join(10)
        assert [s for s in seen if s.startswith("ERROR")] == []
        if load is _data_key:  # each seal is different (random nonces): every one must open with the file's key
            on_disk = load_or_create_keys(folder / "data.keys")
            assert {on_disk.open(bytes.fromhex(s), b"place") for s in seen} == {b"one key for all"}
        else:
            assert len(set(seen)) == 1, seen
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "no temporary file is left"
