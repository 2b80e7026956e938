"""Malformed requests: bytes that do not parse as the method's request message are answered INVALID_ARGUMENT in one
line, before any work, and logged at most once every few seconds with a count.

gRPC Python parses each request with its handler's ``request_deserializer``; when that raises, it answers
INTERNAL "Exception deserializing request!" (the client is told the server failed) and logs a six-line traceback
for every such call, so random bytes from one client could fill the log. ``MalformedRequests`` is a server
interceptor that wraps the deserializer of every method (DualVec, health, reflection) so that a parse failure
becomes a marker instead of an exception, and wraps the method so that the marker is answered INVALID_ARGUMENT
at once. A streaming method's request stream ends at a malformed message: what came before it is answered, and
the call ends INVALID_ARGUMENT.

It sits after the token check (a caller without a token learns nothing, whatever it sends) and before admission
control (a malformed request takes no place in the queue). ``RepeatFilter`` keeps other repeated errors (gRPC's
own, and the servicer's "internal error") to one line every ``every`` seconds with a count of those it held back.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Iterator

import grpc

log = logging.getLogger("dualvec.server.malformed")

# loggers whose repeated errors RepeatFilter holds back: gRPC's server and message (de)serialization, the servicer
REPEAT_FILTERED = ("grpc._server", "grpc._common", "dualvec.server.servicer")


class Malformed:
    """What a wrapped deserializer returns for bytes that do not parse. (No ``DESCRIPTOR``: dualvec.server.metrics
    labels it as a request it could not read.)"""

    __slots__ = ("method", "size", "reason", "message_type")

    def __init__(self, method: str, size: int, reason: str, message_type: str):
        self.method = method
        self.size = size
        self.reason = reason
        self.message_type = message_type

    @property
    def details(self) -> str:
        """The status message: one line naming the expected message and the parser's reason."""
        return (f"malformed request: {self.size:,} bytes that do not parse as {self.message_type} "
                f"({self.reason})")


class MalformedRequests(grpc.ServerInterceptor):
    """Answers requests that do not parse INVALID_ARGUMENT before any work; logs them at most once every
    ``log_every`` seconds (the first at once) with how many there were. Thread-safe; one per server."""

    def __init__(self, *, log_every: float = 10.0):
        self.refused = 0
        self._report = RateLimitedLog(log, log_every)
        self._lock = threading.Lock()
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        install_repeat_filter(every=log_every)

    # --------------------------------------------------------------------------------------------- interceptor
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < 256:  # the methods served are few, and their handlers long-lived
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse = self._parser(method, handler.request_deserializer)
        serialize = handler.response_serializer
        if not handler.request_streaming:
            behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

            def unary(request, context):
                if isinstance(request, Malformed):
                    self._refuse(request, context)
                return behavior(request, context)

            factory = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
                       else grpc.unary_unary_rpc_method_handler)
            return factory(unary, request_deserializer=parse, response_serializer=serialize)

        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary

        def streaming(request_iterator, context):
            return behavior(self._until_malformed(request_iterator, context), context)

        factory = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                   else grpc.stream_unary_rpc_method_handler)
        return factory(streaming, request_deserializer=parse, response_serializer=serialize)

    def _parser(self, method: str, deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
        owner = getattr(deserialize, "__self__", None)  # Message.FromString is bound to the message class
        descriptor = getattr(owner, "DESCRIPTOR", None)
        message_type = getattr(descriptor, "full_name", None) or f"the request of {method}"

        def parse(data: bytes):
            try:
                return deserialize(data)
            except Exception as exc:  # noqa: BLE001 - whatever the parser says, the bytes are the client's fault
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                reason = reason.split(f"{message_type}': ", 1)[-1][:200]  # protobuf's own names the type again
                return Malformed(method, len(data), reason, message_type)

        return parse

    # ---------------------------------------------------------------------------------------------- refusing
    def _refuse(self, request: Malformed, context) -> None:
        self._count(request)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)

    def _until_malformed(self, requests: Iterable, context) -> Iterator:
        """The requests up to the first malformed one; that one sets the call's status INVALID_ARGUMENT (sent
        when the method returns, after its answers to the requests before it)."""
        for request in requests:
            if isinstance(request, Malformed):
                self._count(request)
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(request.details)
                return
            yield request

    def _count(self, request: Malformed) -> None:
        with self._lock:
            self.refused += 1
        self._report.note(lambda n: f"refused {n:,} malformed request(s) with INVALID_ARGUMENT since the last "
                                    f"report; the last: {request.method}, {request.details}")


class RateLimitedLog:
    """Logs an event that may repeat: the first at once, then at most one line every ``every`` seconds, saying how
    many happened since the line before (a timer tells the last of a burst once its interval has passed)."""

    def __init__(self, logger: logging.Logger, every: float, level: int = logging.WARNING):
        self.logger = logger
        self.every = every
        self.level = level
        self._lock = threading.Lock()
        self._pending = 0
        self._last = -float("inf")
        self._line: Callable[[int], str] | None = None
        self._timer: threading.Timer | None = None

    def note(self, line: Callable[[int], str]) -> None:
        """One more event; ``line(count)`` is the text of the report, when one is due."""
        now = time.monotonic()
        with self._lock:
            self._pending += 1
            self._line = line
            wait = self._last + self.every - now
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            count, self._pending, self._last = self._pending, 0, now
        self.logger.log(self.level, "%s", line(count))

    def flush(self) -> None:
        """Tell the events not yet told, if any."""
        with self._lock:
            self._timer = None
            count, line = self._pending, self._line
            if not count or line is None:
                return
            self._pending, self._last = 0, time.monotonic()
        self.logger.log(self.level, "%s", line(count))


class RepeatFilter(logging.Filter):
    """Lets through one record of a kind (logger, level and message template) every ``every`` seconds; the next
    one let through says how many were held back."""

    def __init__(self, every: float = 10.0, level: int = logging.ERROR):
        super().__init__()
        self.every = every
        self.level = level
        self._lock = threading.Lock()
        self._seen: dict[tuple, list] = {}  # kind -> [last let through (monotonic), held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(kind)
            if state is None:
                if len(self._seen) >= 1024:  # many distinct messages: forget the oldest kinds
                    self._seen.clear()
                self._seen[kind] = [now, 0]
                return True
            if now - state[0] < self.every:
                state[1] += 1
                return False
            held, state[0], state[1] = state[1], now, 0
        if held:
            record.msg = f"{record.msg} ({held:,} more like it held back in the last {self.every:g} s)"
        return True


_installed: dict[str, RepeatFilter] = {}
_install_lock = threading.Lock()


def install_repeat_filter(names: Iterable[str] = REPEAT_FILTERED, every: float = 10.0) -> None:
    """A RepeatFilter on each named logger (once per logger, however often called)."""
    with _install_lock:
        for name in names:
            if name not in _installed:
                _installed[name] = RepeatFilter(every)
                logging.getLogger(name).addFilter(_installed[name])
