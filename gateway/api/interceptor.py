"""The server interceptor: decodes each request itself, lets it through the gate, and sends errors as statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.api.gate import CallGate, OpenStream, shutting_down
from gateway.api.status import status_for
from gateway.domain import errors, reasons

log = logging.getLogger(__name__)


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
                stream: OpenStream | None = None
                try:
                    stream = await gate.open_stream(method)
                    if authorize is not None:
                        authorize(method, context)
                    responses = inner_stream(_decode(deserialize, raw), context)
                    if hasattr(responses, "__aiter__"):
                        items = responses.__aiter__()
                        while not stream.ended:
                            stream.waiting = True
                            try:
                                item = await items.__anext__()
                            except StopAsyncIteration:
                                return
                            finally:
                                stream.waiting = False
                            yield item
                    else:  # a coroutine that streams with context.write (e.g. health Watch)
                        stream.waiting = True
                        await responses
                    if stream.ended:
                        raise shutting_down()
                except asyncio.CancelledError:
                    if stream is None or not stream.ended:
                        raise  # the client went away
                    status = _failure(shutting_down(), method)  # the stop ended it
                    await context.abort(status.code, status.details, status.trailing_metadata)
                except Exception as error:
                    if isinstance(error, grpc.aio.AbortError):
                        raise
                    status = _failure(error, method)
                    await context.abort(status.code, status.details, status.trailing_metadata)
                finally:
                    if stream is not None:
                        gate.close_stream(stream)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=None, response_serializer=handler.response_serializer)
        return handler
