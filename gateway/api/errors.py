"""The one table from domain errors to gRPC status codes, applied by one server interceptor."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.domain import errors, reasons

log = logging.getLogger(__name__)

ERROR_DOMAIN = "gongji.v1"

STATUS_BY_ERROR: dict[type[errors.GongjiError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RequestInFlight: grpc.StatusCode.ABORTED,
    errors.Contention: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code_for(error: errors.GongjiError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> grpc.Status:
    """A status carrying a google.rpc.ErrorInfo detail (domain gongji.v1, a stable reason)."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def status_for(error: Exception) -> grpc.Status:
    if isinstance(error, errors.GongjiError):
        metadata = {}
        if error.field:
            metadata["field"] = error.field
        if error.replay:
            metadata["replay"] = "true"
        return rich_status(status_code_for(error), error.message, error.reason, metadata)
    return rich_status(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {})


def _decode(deserialize: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    """The request message, parsed here rather than by gRPC: left to gRPC, bytes that do not parse end the
    call as UNKNOWN with the parser's exception text; here they are an INVALID_ARGUMENT like any bad input."""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except DecodeError:  # corrupt wire format, wrong wire types, bad UTF-8 in a string field
        raise errors.InvalidArgument("the request does not parse as this method's request message",
                                     reason=reasons.MALFORMED_REQUEST) from None


def _failure(error: Exception, method: str) -> grpc.Status:
    """The status a failed call ends with; an unexpected error's traceback goes to the log."""
    if not isinstance(error, errors.GongjiError):
        log.error("unexpected error in %s", method, exc_info=error)
    return status_for(error)


class CallGate:
    """Lets calls in until the gateway starts stopping; then answers new ones UNAVAILABLE itself.

    grpc.aio's own stop cancels the calls gRPC core holds but has not handed to Python (a busy event
    loop takes them one at a time), and calls that reach the server in the instant it stops, before
    their client has seen its GOAWAY: such a client sees CANCELLED and cannot tell whether anything
    happened. So stopping goes in steps:

    1. `drain`: the gate closes; new calls are refused UNAVAILABLE / SHUTTING_DOWN (nothing was done:
       retry later or elsewhere) while the unary calls inside finish, until the calls queued at the
       close have come through (no refusal for QUIET_SECONDS, or REFUSE_AT_MOST_SECONDS of a caller
       that keeps retrying);
    2. then, for HOLD_SECONDS, new calls are held instead of refused, so a retrying caller has no call
       on its way when the server stops;
    3. the server stops (its GOAWAY tells clients to go elsewhere) and `release` answers the held
       calls UNAVAILABLE / SHUTTING_DOWN.
    """

    QUIET_SECONDS = 0.1
    REFUSE_AT_MOST_SECONDS = 1.0
    HOLD_SECONDS = 0.2

    def __init__(self) -> None:
        self.closed = False
        self.active = 0
        self._last_refusal = 0.0
        self._held: asyncio.Event | None = None

    def enter(self, method: str) -> None:
        """Count a call in; raises Unavailable once closed (see refuse for held calls)."""
        if self.closed and not method.startswith("/grpc.health."):
            self._last_refusal = time.monotonic()
            raise errors.Unavailable("the gateway is stopping; nothing was done: retry later or on another "
                                     "gateway", reason=reasons.SHUTTING_DOWN)
        self.active += 1

    async def refuse(self, method: str) -> None:
        """A closed gate's answer: at once while draining, after the server stopped once holding."""
        if self._held is not None and not method.startswith("/grpc.health."):
            await self._held.wait()
        self.enter(method)

    def leave(self) -> None:
        self.active -= 1

    async def drain(self, timeout: float) -> None:
        """Close; wait (≤ timeout) until no unary call is inside and the queued ones were answered; then
        hold new calls for HOLD_SECONDS (the caller stops the server next, then calls release)."""
        self.closed = True
        closed_at = self._last_refusal = time.monotonic()
        deadline = closed_at + timeout
        while (now := time.monotonic()) < deadline:
            if self.active == 0 and (now - self._last_refusal >= self.QUIET_SECONDS
                                     or now - closed_at >= self.REFUSE_AT_MOST_SECONDS):
                break
            await asyncio.sleep(0.01)
        self._held = asyncio.Event()
        await asyncio.sleep(min(self.HOLD_SECONDS, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        """Answer the held calls (call once the server has begun to stop)."""
        if self._held is not None:
            self._held.set()


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns exceptions raised by servicers into statuses; nothing unexpected reaches the client as is."""

    def __init__(self, observe: Callable[[str, str, float], None] | None = None,
                 authorize: Callable[[str, Any], None] | None = None, gate: CallGate | None = None) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        # Told (method, status code name, seconds) after every unary call: the RPC metrics.
        self._observe = observe
        # Called with (method, context) before every call; raises PermissionDenied to refuse it.
        self._authorize = authorize
        self.gate = gate or CallGate()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc-stubs type handlers as synchronous; under grpc.aio their behaviours are coroutines.
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # wrapping anew on every call was a measurable share of each RPC's cost
        wrapped = self._wrap(handler, method, self._observe, self._authorize, self.gate)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @staticmethod
    def _wrap(handler: Any, method: str, observe: Callable[[str, str, float], None] | None,
              authorize: Callable[[str, Any], None] | None, gate: CallGate) -> Any:
        deserialize = handler.request_deserializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                code = "OK"
                counted = False
                entered = False
                try:
                    if gate.closed:
                        await gate.refuse(method)
                    else:
                        gate.enter(method)
                    entered = True
                    if authorize is not None:
                        authorize(method, context)
                    return await inner(_decode(deserialize, raw), context)
                except Exception as error:
                    if isinstance(error, grpc.aio.AbortError):
                        code = "ABORTED_BY_HANDLER"
                        raise
                    status = _failure(error, method)
                    code = status.code.name
                    # Counted before the status goes out (abort sends it at once): a client holding its
                    # answer finds the call in the metrics, as it does a successful one.
                    if observe is not None:
                        observe(method, code, time.perf_counter() - started)
                        counted = True
                    await context.abort(status.code, status.details, status.trailing_metadata)
                finally:
                    if entered:
                        gate.leave()
                    if observe is not None and not counted:
                        observe(method, code, time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=None, response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    if authorize is not None:
                        authorize(method, context)
                    responses = inner_stream(_decode(deserialize, raw), context)
                    if hasattr(responses, "__aiter__"):
                        async for item in responses:
                            yield item
                    else:  # a coroutine that streams with context.write (e.g. health Watch)
                        await responses
                except Exception as error:
                    if isinstance(error, grpc.aio.AbortError):
                        raise
                    status = _failure(error, method)
                    await context.abort(status.code, status.details, status.trailing_metadata)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=None, response_serializer=handler.response_serializer)
        return handler
