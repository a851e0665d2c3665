"""The HTTP/1.1 server under the REST API: aiohttp's protocol, made to hold against hostile and
unlucky clients, as a trusted front server (nginx) would:

- a request's headers must arrive within `header_timeout` of its first byte, else 408 and
  close (nginx client_header_timeout); a connection that sends nothing is closed after
  `keepalive_timeout`, as an idle keep-alive connection is (keepalive_timeout);
- the body is read with `body_timeout` between reads (client_body_timeout; see RestApi);
- at most `max_connections` connections are open: one more is answered 503 with
  Retry-After and closed at once, so the accept loop never starves on file descriptors;
- a request the HTTP parser rejects (bad method, oversized header line, too many headers,
  an unsupported Transfer-Encoding) is answered with the same `{"error": ...}` JSON as any
  other client error (400, 431 or 501), and one rate-limited log line without a traceback.

aiohttp's low-level `web.Server` and `RequestHandler` are used through their public
constructors and methods; `ConnectionHandler` only adds the timers and the connection cap.
"""

import asyncio
import dataclasses
import logging
import resource
from collections.abc import Awaitable, Callable

from aiohttp import http_exceptions, web, web_protocol

from serving import logs, tensor_json
from serving import status as serving_status

logger = logging.getLogger(__name__)
logger.addFilter(logs.RateLimitFilter())  # refusals and timeouts come in floods

# Descriptors kept for everything that is not a REST connection (models, gRPC, logs).
RESERVED_FILE_DESCRIPTORS = 512
# A refused connection is closed this long after its answer, its input read and dropped
# meanwhile, so that the answer is not lost to a reset.
REFUSED_CLOSE_SECONDS = 1.0
# Past this many refused connections lingering, new refusals close at once (a flood).
MAX_LINGERING = 256
MAX_CONNECTIONS_CAP = 10000
JSON_CONTENT_TYPE = "application/json"


def raw_json_response(http_status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for use outside a request."""
    body = tensor_json.error_body(serving_status.bounded(message))
    head = (
        f"HTTP/1.1 {http_status} {reason}\r\nContent-Type: {JSON_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def default_max_connections() -> int:
    """Raises the soft limit on open files to the hard one, then leaves a reserve below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(64, min(soft - RESERVED_FILE_DESCRIPTORS, MAX_CONNECTIONS_CAP))


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Timeouts (seconds) and sizes of the HTTP server (nginx's defaults for the timeouts)."""

    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = MAX_CONNECTIONS_CAP
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128
    lingering_time: float = 2.0  # reading an unread body after an early answer, at most


class _Connections:
    """How many connections are open, against the cap."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.lingering = 0


class ConnectionHandler(web_protocol.RequestHandler):
    """aiohttp's protocol plus a header timer, the connection cap and JSON parser errors."""

    def __init__(self, manager: web.Server, *, limits: HttpLimits, connections: _Connections, **kw):
        super().__init__(
            manager,
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            lingering_time=limits.lingering_time,
            access_log=None,
            **kw,
        )
        self._limits = limits
        self._connections = connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._admitted = False
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._connections.open >= self._connections.limit:
            self._connections.refused += 1
            logger.warning(
                "Refusing a connection: %d connections are open (--rest_api_max_connections)",
                self._connections.open,
            )
            self._refuse(
                raw_json_response(
                    503,
                    "Service Unavailable",
                    "Too many open connections; try again later",
                    "Retry-After: 1\r\n",
                )
            )
            return
        self._admitted = True
        self._connections.open += 1

    def _refuse(self, response: bytes) -> None:
        """Answers and closes without a reset: the client's input is read and dropped until
        the close, and the write side is shut first."""
        self._refused = True
        self.transport.write(response)
        if self._connections.lingering >= MAX_LINGERING:
            self.force_close()
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._connections.lingering += 1

        def close() -> None:
            self._connections.lingering -= 1
            self.force_close()

        asyncio.get_running_loop().call_later(REFUSED_CLOSE_SECONDS, close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._connections.open -= 1
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # dropped until the close
        if data and not self._in_request and self._header_timer is None and self._admitted:
            # A request has begun: the header timer now guards the connection, not the
            # idle timer (keep_alive(True) cancels it; aiohttp re-arms it after the answer).
            self.keep_alive(True)
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self._limits.header_timeout, self._header_late)
        super().data_received(data)

    def request_started(self) -> None:
        """The handler has the request: its headers arrived in time."""
        self._in_request = True
        self._cancel_header_timer()

    async def finish_response(self, request, resp, start_time):
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._in_request = False

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_late(self) -> None:
        self._header_timer = None
        if self._in_request or self.transport is None:
            return
        logger.warning(
            "Closing a connection whose request headers did not arrive within %g s "
            "(--rest_api_header_timeout_seconds)",
            self._limits.header_timeout,
        )
        self._refuse(
            raw_json_response(
                408,
                "Request Timeout",
                f"The request headers did not arrive within {self._limits.header_timeout:g} s",
            )
        )

    def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
        """A request the parser (or, for 500, the handler) could not take, as JSON."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response")
        if status >= 500 and not isinstance(exc, http_exceptions.HttpProcessingError):
            logger.error("Error handling a request", exc_info=exc)
            http_status, text = 500, "Internal error"
        else:
            http_status, text = parser_error(exc, message)
            logger.warning("Rejected a request: %d %s", http_status, text)
        response = web.Response(
            status=http_status,
            body=tensor_json.error_body(serving_status.bounded(text)),
            content_type=JSON_CONTENT_TYPE,
        )
        response.force_close()
        return response


def parser_error(exc: BaseException | None, message: str | None) -> tuple[int, str]:
    """The status and message for a request aiohttp's HTTP parser rejected."""
    text = str(getattr(exc, "message", "") or message or exc or "Bad request").strip()
    if isinstance(exc, http_exceptions.LineTooLong) or "Too many headers" in text:
        return 431, f"Request header fields too large: {text}"
    if "transfer-encoding" in text.lower() or "transfer encoding" in text.lower():
        return 501, f"Unsupported Transfer-Encoding: {text}"
    return 400, f"Bad request: {text}"


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class HttpServer:
    """One listening socket, the connections on it, and their limits.

    Args:
      handler: answers a request (the REST API).
      limits: the timeouts and caps above.
    """

    def __init__(self, handler: Handler, limits: HttpLimits):
        self.limits = limits
        self._handler = handler
        self._connections = _Connections(limits.max_connections)
        self._web_server: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.port: int | None = None

    @property
    def open_connections(self) -> int:
        return self._connections.open

    @property
    def refused_connections(self) -> int:
        return self._connections.refused

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, ConnectionHandler):
            protocol.request_started()
        return await self._handler(request)

    async def start(self, host: str, port: int) -> int:
        """Listens on host:port (0: any free port); returns the port.

        Raises:
          OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._web_server = web.Server(self._handle, loop=loop)

        def protocol() -> ConnectionHandler:
            return ConnectionHandler(
                self._web_server, loop=loop, limits=self.limits, connections=self._connections
            )

        self._listener = await loop.create_server(protocol, host, port, backlog=1024)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self.port

    def stop_accepting(self) -> None:
        """Closes the listening socket; open connections go on."""
        if self._listener is not None:
            self._listener.close()

    async def shutdown(self, timeout: float) -> None:
        """Closes idle connections, lets requests in flight end within `timeout`, then
        closes everything."""
        self.stop_accepting()
        if self._web_server is not None:
            self._web_server.pre_shutdown()
            await self._web_server.shutdown(max(timeout, 0.0))
        if self._listener is not None:
            await self._listener.wait_closed()
