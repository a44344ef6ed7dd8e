"""The tamper-evident record: every state change as an entry of a SHA-256 hash chain, with signed checkpoints.

entry_hash(n) = SHA-256(entry_hash(n-1) || canonical(n)); the chain starts from 32 zero bytes. A
checkpoint is the gateway's signature over (size, head hash, time): whoever rewrites entries up to a
checkpoint cannot forge it, and whoever removes entries after one leaves the chain shorter than it.
Entries hold identifiers, states, provinces, amounts and digests — never personal data (D19).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

GENESIS = bytes(32)
CHECKPOINT_TYPE = "gongji.audit.Checkpoint"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before it has a place in the chain."""

    kind: str  # transfer, binding, province, settlement
    subject_id: str
    action: str  # the state entered, or what was done
    at: datetime
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    kind: str
    subject_id: str
    action: str
    at: datetime
    detail: str
    prev_hash: bytes
    entry_hash: bytes


def canonical(seq: int, event: AuditEvent) -> bytes:
    """The bytes an entry's hash covers: position, time (UTC, microseconds) and content, unambiguously: the JSON
    array [seq, at, kind, subject_id, action, detail], compact, in UTF-8."""
    return b"[" + str(seq).encode("ascii") + canonical_tail(event)


def canonical_tail(event: AuditEvent) -> bytes:
    """canonical()'s bytes after the position, which does not depend on where the entry lands: a database that
    chains entries itself (PostgreSQL, gateway/store/repositories/audit.py) is given these and writes the rest."""
    return b"," + json.dumps([event.at.isoformat(timespec="microseconds"), event.kind, event.subject_id, event.action,
                              event.detail], ensure_ascii=False, separators=(",", ":")).encode("utf-8")[1:]


def chain(prev_hash: bytes, seq: int, event: AuditEvent) -> AuditEntry:
    entry_hash = hashlib.sha256(prev_hash + canonical(seq, event)).digest()
    return AuditEntry(seq, event.kind, event.subject_id, event.action, event.at, event.detail, prev_hash, entry_hash)


def checkpoint_payload(size: int, head: bytes, at: datetime) -> bytes:
    return json.dumps({"size": size, "head_sha256": head.hex(), "at": at.isoformat(timespec="microseconds")},
                      sort_keys=True, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    size: int
    head: bytes
    at: datetime
    payload: bytes  # as signed
    key_id: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class Finding:
    """The first thing wrong, named by the entry where it shows."""

    seq: int
    problem: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    entries: int
    head: bytes
    checkpoints: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_chain(entries: Iterable[AuditEntry], checkpoints: Iterable[Checkpoint], recorded_size: int,
                 recorded_head: bytes, signature_ok: Callable[[Checkpoint], bool]) -> VerifyReport:
    """Recompute the chain from the start; name the first entry altered, removed or inserted.

    `recorded_size` / `recorded_head` are what the database says the chain's end is; checkpoints say
    what it was when the gateway signed them.
    """
    findings: list[Finding] = []
    heads: dict[int, bytes] = {0: GENESIS}
    expected_seq, running = 1, GENESIS
    for entry in entries:
        if entry.seq != expected_seq:
            problem = (f"entry {expected_seq} is missing (removed)" if entry.seq > expected_seq
                       else f"entry {entry.seq} appears again (inserted)")
            findings.append(Finding(min(entry.seq, expected_seq), problem))
            break
        recomputed = chain(running, entry.seq, AuditEvent(entry.kind, entry.subject_id, entry.action, entry.at,
                                                          entry.detail))
        if entry.prev_hash != running:
            findings.append(Finding(entry.seq, f"entry {entry.seq} does not follow entry {entry.seq - 1} "
                                               "(an entry before it was removed or inserted)"))
            break
        if recomputed.entry_hash != entry.entry_hash:
            findings.append(Finding(entry.seq, f"entry {entry.seq} was altered (its hash does not match its content)"))
            break
        running = entry.entry_hash
        heads[entry.seq] = running
        expected_seq += 1
    size = expected_seq - 1
    if not findings and (recorded_size, recorded_head) != (size, running):
        where = min(size, recorded_size) + 1
        findings.append(Finding(where, f"the chain holds {size} entries but its head records {recorded_size}: "
                                       f"entries from {where} on were removed or inserted"))
    count = 0
    for checkpoint in checkpoints:
        count += 1
        if not signature_ok(checkpoint):
            findings.append(Finding(checkpoint.size, f"checkpoint at {checkpoint.size} does not verify "
                                                     "(its signature or payload was altered)"))
        elif checkpoint.size not in heads:
            if not findings:
                findings.append(Finding(size + 1, f"a signed checkpoint covers {checkpoint.size} entries but only "
                                                  f"{size} verify: entries from {size + 1} on were removed"))
        elif heads[checkpoint.size] != checkpoint.head:
            findings.append(Finding(checkpoint.size, f"the chain up to entry {checkpoint.size} differs from what the "
                                                     "gateway signed then (rewritten)"))
    return VerifyReport(size, running, count, tuple(sorted(findings, key=lambda f: f.seq)))
