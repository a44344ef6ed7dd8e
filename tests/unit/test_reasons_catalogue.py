"""The reasons catalogue and the code agree: every reason raised is catalogued with its kind, every entry is raised
or computed, and docs/errors.md is what the catalogue generates."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.api.status import status_code_for
from gateway.domain import errors
from gateway.domain.reasons import CATALOGUE
from gateway.domain.references import validate_reference
from province_stub.refusals import REFUSALS
from scripts import errors_doc

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE_MODULE = "gateway/domain/reasons.py"
# Helpers that raise the reason they are given (or their default one) as this kind of error.
RAISING_HELPERS: dict[str, tuple[type[errors.GongjiError], Callable[..., None]]] = {
    "validate_reference": (errors.InvalidArgument, validate_reference)}


def _error_classes() -> dict[str, type[errors.GongjiError]]:
    found: dict[str, type[errors.GongjiError]] = {}
    pending: list[type[errors.GongjiError]] = [errors.GongjiError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found


def _name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


@dataclass
class Scan:
    raised: dict[str, set[str]]  # reason -> the kinds it is built as (raised, or returned by a helper)
    free: list[str]  # a reason spelled out, or in a constant of its own, instead of from the catalogue
    verdict_sites: list[str]  # kinds built with a rule's computed verdict (violations[0].reason)
    verdicts: dict[str, set[str]]  # reason -> the rules whose verdict it is (Violation(reasons.X, "D1", ...))
    referenced: set[str]  # every reasons.X named anywhere


def scan_gateway() -> Scan:
    classes = _error_classes()
    scan = Scan({}, [], [], {}, set())
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        if where == CATALOGUE_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "reasons":
                scan.referenced.add(node.attr)
            if not isinstance(node, ast.Call):
                continue
            called = _name(node.func)
            if called == "Violation" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                reason = node.args[0]
                if isinstance(reason, ast.Attribute) and _name(reason.value) == "reasons":
                    scan.verdicts.setdefault(reason.attr, set()).add(str(node.args[1].value))
                else:
                    scan.free.append(f"{where}:{node.lineno} Violation({ast.unparse(reason)}")
                continue
            helper = RAISING_HELPERS.get(called or "")
            kind = classes.get(called or "") or (helper[0] if helper else None)
            if kind is None:
                continue
            given = next((k.value for k in node.keywords if k.arg == "reason"), None)
            if given is None:  # the class's default reason, or the helper's
                default = inspect.signature(helper[1]).parameters["reason"].default if helper else kind.default_reason
                scan.raised.setdefault(default, set()).add(kind.__name__)
            elif isinstance(given, ast.Attribute) and _name(given.value) == "reasons":
                scan.raised.setdefault(given.attr, set()).add(kind.__name__)
            elif isinstance(given, ast.Attribute) and given.attr == "reason":
                scan.verdict_sites.append(kind.__name__)  # violations[0].reason, limits[0].reason
            elif isinstance(given, ast.Name) and given.id.islower():
                pass  # a parameter passed on (validate_reference's `reason`, the idempotency replay's)
            else:
                scan.free.append(f"{where}:{node.lineno} reason={ast.unparse(given)}")
    return scan


SCAN = scan_gateway()


def test_the_scan_sees_the_gateways_refusals() -> None:
    # Guards the scan: if it found nothing, the tests below would pass vacuously.
    assert {"SHUTTING_DOWN", "TRANSFER_ID_TAKEN", "BINDING_ID_TAKEN", "CONFIRMATION_DEADLINE_PASSED",
            "REQUEST_IN_FLIGHT", "MODIFIED_REQUEST", "INVALID_BANK"} <= set(SCAN.raised)
    assert len(SCAN.raised) > 80
    assert {"INVALID_ID_NUMBER", "RECEIVER_NOT_ELIGIBLE", "DAILY_LIMIT_REACHED", "FACE_REQUIRED"} <= set(SCAN.verdicts)


def test_raise_sites_name_their_reason_from_the_catalogue() -> None:
    assert SCAN.free == []


def test_every_reason_raised_is_catalogued_with_its_one_kind() -> None:
    """A stable reason means one thing: it is raised as one kind of error (one status), the catalogue's."""
    wrong = {reason: sorted(kinds) for reason, kinds in SCAN.raised.items()
             if reason not in CATALOGUE or {CATALOGUE[reason].kind.__name__ if CATALOGUE[reason].kind else None}
             != kinds}
    assert wrong == {}


def test_every_verdict_is_catalogued_with_its_rule() -> None:
    assert {reason: sorted(rules) for reason, rules in SCAN.verdicts.items()} == {
        entry.name: [entry.rule] for entry in CATALOGUE.values() if entry.rule}
    # A rule's verdict refuses a call as FAILED_PRECONDITION (ProposeBinding, AcceptBinding, SubmitTransfer).
    assert SCAN.verdict_sites and set(SCAN.verdict_sites) == {"FailedPrecondition"}


def test_every_catalogued_reason_is_raised_or_computed() -> None:
    never = [entry.name for entry in CATALOGUE.values()
             if entry.name not in SCAN.raised and not (entry.rule and entry.name in SCAN.verdicts)]
    assert never == []
    assert not set(CATALOGUE) - SCAN.referenced - {cls.default_reason for cls in _error_classes().values()}


def test_every_entry_has_a_status_a_constant_and_a_line_of_when() -> None:
    from gateway.domain import reasons

    for entry in CATALOGUE.values():
        assert getattr(reasons, entry.name) == entry.name
        assert entry.when and "\n" not in entry.when
        assert entry.kind is not None or entry.rule, entry.name
        if entry.kind is not None:
            assert status_code_for(entry.kind("x")) is not grpc.StatusCode.INTERNAL


def test_the_stubs_refusals_are_its_table() -> None:
    used = set()
    for path in sorted((ROOT / "province_stub").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # refuse(context, reason, ...) and CallerGate(admitted, reason, ...)
            if (isinstance(node, ast.Call) and _name(node.func) in ("refuse", "CallerGate")
                    and isinstance(node.args[1], ast.Constant)):
                used.add(node.args[1].value)
    assert used == set(REFUSALS)


def test_the_errors_document_is_generated_from_the_catalogue() -> None:
    document = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert document == errors_doc.render(), "docs/errors.md is stale: run `make errors-doc`"
    for entry in CATALOGUE.values():
        assert f"`{entry.name}`" in document
