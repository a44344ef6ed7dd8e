"""Unit tests of the one table from domain errors to gRPC statuses with ErrorInfo details (api.md, Errors)."""

from __future__ import annotations

import inspect
import re

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.api.status import ERROR_DOMAIN, STATUS_BY_ERROR, status_code_for, status_for
from gateway.domain import errors

# api.md's mapping, restated independently of gateway/api/status.py.
EXPECTED: dict[type[errors.GongjiError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ModifiedRequest: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RequestInFlight: grpc.StatusCode.ABORTED,
    errors.Contention: grpc.StatusCode.ABORTED,  # retried by the gateway first; then the client retries
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DatabaseBusy: grpc.StatusCode.UNAVAILABLE,  # a lock held elsewhere outlasted the gateway's wait
    errors.DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,  # the database unreachable, or the connection lost
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,  # a province over its rate limit (issue 5)
}

UPPER_SNAKE_CASE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


def defined_error_classes() -> list[type[errors.GongjiError]]:
    """Every GongjiError subclass defined in gateway/domain/errors.py, found by introspection."""
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.GongjiError) and cls is not errors.GongjiError and cls.__module__ == errors.__name__
    ]


def error_info_of(status: grpc.Status) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    """Decode the status trailer a client would see: google.rpc.Status with exactly one ErrorInfo."""
    trailers = dict(status.trailing_metadata)
    rich = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert len(rich.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info), "the detail must be a google.rpc.ErrorInfo"
    return rich, info


def test_the_module_defines_the_errors_api_md_names() -> None:
    # Guards the introspection below: if it found nothing, the completeness test would pass vacuously.
    assert set(EXPECTED) <= set(defined_error_classes())


@pytest.mark.parametrize("cls", defined_error_classes(), ids=lambda cls: cls.__name__)
def test_every_domain_error_has_a_mapping(cls: type[errors.GongjiError]) -> None:
    assert cls in EXPECTED, f"{cls.__name__} is new: add its api.md status to EXPECTED and to STATUS_BY_ERROR"
    assert any(base in STATUS_BY_ERROR for base in cls.__mro__), f"{cls.__name__} is missing from the table"
    assert status_code_for(cls("x")) is not grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("cls", "code"), list(EXPECTED.items()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_error_maps_to_the_status_of_api_md(cls: type[errors.GongjiError], code: grpc.StatusCode) -> None:
    assert status_code_for(cls("x")) is code
    assert status_for(cls("x")).code is code


def test_a_subclass_outside_the_module_inherits_its_base_status() -> None:
    class LimitReached(errors.FailedPrecondition):
        default_reason = "DAILY_LIMIT_REACHED"

    assert status_code_for(LimitReached("limit")) is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("cls", defined_error_classes(), ids=lambda cls: cls.__name__)
def test_default_reasons_are_stable_upper_snake_case(cls: type[errors.GongjiError]) -> None:
    assert UPPER_SNAKE_CASE.fullmatch(cls("x").reason)


def test_the_reasons_api_md_spells_out() -> None:
    assert errors.ModifiedRequest("x").reason == "MODIFIED_REQUEST"
    assert errors.RequestInFlight("x").reason == "REQUEST_IN_FLIGHT"


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_status_carries_an_error_info_with_domain_reason_and_field(cls: type[errors.GongjiError]) -> None:
    error = cls("amount_fen must be positive", reason="SOME_REASON", field="amount_fen")
    status = status_for(error)
    rich, info = error_info_of(status)
    assert rich.code == EXPECTED[cls].value[0]
    assert rich.message == status.details == "amount_fen must be positive"
    assert info.domain == ERROR_DOMAIN == "gongji.v1"
    assert info.reason == "SOME_REASON"
    assert dict(info.metadata) == {"field": "amount_fen"}


def test_default_reason_and_no_field_give_empty_metadata() -> None:
    _, info = error_info_of(status_for(errors.NotFound("no such transfer")))
    assert info.reason == "NOT_FOUND"
    assert dict(info.metadata) == {}


def test_a_replayed_refusal_is_marked() -> None:
    error = errors.FailedPrecondition("daily limit reached", reason="DAILY_LIMIT_REACHED", field="amount_fen")
    error.replay = True
    status = status_for(error)
    _, info = error_info_of(status)
    assert status.code is grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "DAILY_LIMIT_REACHED"
    assert dict(info.metadata) == {"field": "amount_fen", "replay": "true"}


def test_a_replay_without_field_is_marked_too() -> None:
    error = errors.ModifiedRequest("used before with different content")
    error.replay = True
    _, info = error_info_of(status_for(error))
    assert dict(info.metadata) == {"replay": "true"}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RuntimeError("connection to postgresql://secret@db failed for 650502199001011230"), id="runtime"),
        pytest.param(KeyError("650502199001011230"), id="key error"),
        pytest.param(ValueError("naive datetime given to the store"), id="value error"),
    ],
)
def test_an_unexpected_exception_becomes_a_generic_internal(error: Exception) -> None:
    status = status_for(error)
    rich, info = error_info_of(status)
    assert status.code is grpc.StatusCode.INTERNAL
    assert rich.code == grpc.StatusCode.INTERNAL.value[0]
    assert info.domain == "gongji.v1"
    assert info.reason == "INTERNAL"
    assert dict(info.metadata) == {}
    text = str(error)
    for shown in (status.details, rich.message):
        assert shown
        assert text not in shown
        assert "650502199001011230" not in shown
        assert "secret" not in shown
