"""HTTP/1.1 requests whose response body is handed over inside the socket's read callback.

Why not aiohttp (or httpx): with a streamed response each network read woke the request's task,
which resumed through the caller's whole coroutine stack (runner -> stage -> client -> transport,
nine frames) to take ~1 event from the body; ~40 us of Python per read, most of the client's CPU
at one read per event. Here `data_received` parses the bytes (httptools: llhttp, the parser
uvicorn uses, status line, headers and chunked framing in C) and passes each read's body to the
caller's `on_body` right there (which holds it, cheaply: see transport.EventReader); the task
sleeps until the response has ended.

What it does: plain HTTP or TLS (asyncio's SSL transport), keep-alive connections pooled per
endpoint (LIFO, dropped when the server closes them), a request on a pooled connection that the
server had already closed is sent once more on a fresh one (nothing of it was processed), the
longest silence bounded per exchange by one watch timer per pool (`idle_timeout_s`), batched
reads (below). What it does not: proxies, redirects, compression (every request asks for `Accept-Encoding: identity`; a
compressed answer anyway is refused by name, not parsed as garbage), pipelining.

Batched reads (`read_batch_bytes` > 1, plain http): a stream of R1 tokens arrives as ~150 small
events, each in its own TCP segment, and a client that keeps up reads each one on its own (a
wake-up, a read, a parser call: ~15 us, most of the converter's CPU per sample). The socket's
SO_RCVLOWAT makes the kernel wake the loop only once that many bytes are waiting, so one read takes
many events. The end of a response is then seen by the server's close, not by its last bytes: each
request asks for `Connection: close` and goes on a fresh connection (no pool to go stale). What the
kernel holds unread is watched once per tick (FIONREAD): bytes that grew count as activity for the
idle timeout, and bytes that stopped growing are read at once (the socket drops back to waking for
every byte), so a slow stream costs a tick, never a cut. A server whose answer does not say
`Connection: close` (it will not close) turns batching off for its pool: later requests are kept alive.
A few connections are opened ahead (`spare_connections`), so a request goes out in the loop iteration
that gave it its slot instead of waiting for a connect (two iterations: on a loaded loop, ~40 ms each).
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

from .errors import ConnectionCut, IdleTimeout, RequestError

if sys.platform != "win32":
    import fcntl
    import termios

log = logging.getLogger("coldstart.client")

# Where the kernel offers both: a wake-up threshold for reads and a count of the bytes unread.
BATCHED_READS = sys.platform != "win32" and hasattr(socket, "SO_RCVLOWAT")
# With batched reads, connections opened ahead per pool (the default), each used for one request.
SPARE_CONNECTIONS = 8
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer closed its side


class _StaleConnection(ConnectionCut):
    """A pooled connection closed before any byte of the response came back."""


class Exchange:
    """One request and the head of its response; the 2xx body goes to `on_body`, any other body is
    collected in `body` (an error message)."""

    __slots__ = ("on_body", "future", "status", "headers", "body", "last", "responded", "framed", "conn",
                 "outgoing", "unread")

    def __init__(self, on_body: Callable[[bytes], None], future: asyncio.Future[None], now: float):
        self.on_body = on_body
        self.future = future
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.last = now  # loop time of the last bytes received (or of the start)
        self.responded = False  # any byte of the response arrived
        self.framed = False  # the body has a length or chunked framing (else it ends with the connection)
        self.conn: _Connection | None = None
        self.outgoing: list[bytes] = []  # the request body, until the response starts
        self.unread = 0  # batched reads: bytes the kernel held unread at the last watch tick


class _Connection(asyncio.Protocol):
    """One keep-alive TCP (or TLS) connection carrying one exchange at a time."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.open = True
        self.fd = -1  # batched reads: the socket, while it wakes the loop only for read_batch_bytes
        self.one_shot = False  # asked for `Connection: close`: never handed back to the pool

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: the connection's state is unknown
            self.close()
            return
        ex.last = self.pool.loop.time()
        ex.unread = 0
        if not ex.responded:
            ex.responded = True
            ex.outgoing.clear()  # answered: never sent again, so not held (the transport has its copy)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.fail(exc.__context__ or exc)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionCut(f"bad HTTP response: {exc}"))
        except Exception as exc:  # on_body refused the stream (an error event, a garbled one)
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pool.forget(self)
        ex = self.exchange
        if ex is None:
            return
        if ex.status and not ex.framed:
            # A body without length or chunked framing ends with the connection (HTTP/1.0 style);
            # the caller judges whether what came is whole (a stream's last event says so).
            self.exchange = None
            self._finish(ex)
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "server closed the connection"
        err = ConnectionCut(f"stream cut: {why}") if ex.responded else _StaleConnection(f"stream cut: {why}")
        self.fail(err)

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        key = name.decode("latin-1")
        ex.headers.append((key, value.decode("latin-1")))
        low = key.lower()
        if low == "content-length" or (low == "transfer-encoding" and b"chunked" in value.lower()):
            ex.framed = True

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        ex.status = self.parser.get_status_code()
        coding = next((v for k, v in ex.headers if k.lower() == "content-encoding"), "identity").strip().lower()
        if coding != "identity":  # raised through the parser: data_received fails the exchange
            raise RequestError(f"the server answered with Content-Encoding {coding!r} although asked for identity "
                               "(a proxy that compresses?): compressed responses are not read", self.pool.authority)
        if self.one_shot and self.parser.should_keep_alive():
            # The server did not answer `Connection: close` (uvicorn, aiohttp do): it will not close
            # after the response, so each end would wait for a watch tick. Read this one (and any
            # other in flight) as it comes and keep later connections alive.
            self.pool.stop_batching()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        if 200 <= ex.status < 300:
            ex.on_body(body)  # may raise (a refused stream): the parser wraps it, data_received fails the exchange
        else:
            ex.body.append(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        self.exchange = None
        keep = self.parser.should_keep_alive() and not self.one_shot
        self._finish(ex)
        if keep and self.open:
            self.parser = httptools.HttpResponseParser(self)
            self.pool.give_back(self)
        else:
            self.close()

    # -- own ---------------------------------------------------------------------------------------
    def start(self, ex: Exchange, head: bytes, parts: list[bytes]) -> None:
        ex.conn = self
        self.exchange = ex
        assert self.transport is not None
        # Small pieces go out together; a large one (an image) on its own, never copied into another.
        pending = head
        for part in parts:
            if len(part) < 65536:
                pending += part
                continue
            self.transport.write(pending)
            self.transport.write(part)
            pending = b""
        if pending:
            self.transport.write(pending)

    def batch_reads(self, nbytes: int) -> None:
        """Wake the loop only once `nbytes` are waiting (or the connection ends); 1: every byte."""
        self.fd = -1
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:  # not offered for this socket: every read wakes the loop, as without batching
            return
        if nbytes > 1:
            self.fd = sock.fileno()

    def unread(self) -> int:
        """Bytes the kernel holds for this connection, not read yet (0 when not batching)."""
        if self.fd < 0:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def peer_closed(self) -> bool:
        """On a connection with no request on it: the server has closed it (or reset it, or sent
        bytes nobody asked for). Only for batched connections (their socket is known)."""
        if self.fd < 0:
            return False
        try:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN | _POLLRDHUP)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def read_every_byte(self) -> None:
        """Stop batching: what is waiting is read at once, as is every later byte."""
        self.batch_reads(1)

    def _finish(self, ex: Exchange) -> None:
        self.pool.active.discard(ex)
        if not ex.future.done():
            ex.future.set_result(None)  # not the exchange: it holds the future (a cycle per request for the GC)

    def fail(self, exc: BaseException) -> None:
        """End the current exchange with `exc`; the connection is not reusable."""
        ex, self.exchange = self.exchange, None
        self.abort()
        if ex is not None:
            self.pool.active.discard(ex)
            if not ex.future.done():
                ex.future.set_exception(exc)

    def close(self) -> None:
        self.open = False
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.open = False
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections to one endpoint, for one event loop."""

    def __init__(self, url: str, idle_timeout_s: float, max_idle: int = 256, read_batch_bytes: int = 0,
                 spare_connections: int = SPARE_CONNECTIONS):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        default = (parts.scheme, self.port) in (("http", 80), ("https", 443))
        self.authority = (f"[{self.host}]" if ":" in self.host else self.host) + ("" if default else f":{self.port}")
        self.idle_timeout_s = idle_timeout_s
        self.max_idle = max_idle
        # Batched reads for plain http only: over TLS a fresh connection per request would cost a
        # handshake each, more than the reads it saves.
        self.batch = read_batch_bytes if read_batch_bytes > 1 and BATCHED_READS and self.ssl is None else 0
        self.spares = spare_connections
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []  # kept-alive connections; with batched reads, spares opened ahead
        self.active: set[Exchange] = set()
        self._watch: asyncio.Task[None] | None = None
        self._opening: set[asyncio.Task[None]] = set()  # spares being connected
        self.closed = False

    def head(self, path: str, headers: dict[str, str], length: int, method: str = "POST") -> bytes:
        """The request line and headers of a request with `length` bytes of body to `path`."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.authority}", "Accept-Encoding: identity",
                 *(["Connection: close"] if self.batch else []),
                 *(f"{k}: {v}" for k, v in headers.items()),
                 *([f"Content-Length: {length}"] if length or method == "POST" else []), "", ""]
        text = "\r\n".join(lines)
        if any(c in v for v in headers.values() for c in "\r\n") or any(c in k for k in headers for c in "\r\n:"):
            raise ValueError("a header name or value holds a line break")
        return text.encode("latin-1")

    async def get(self, path: str, headers: dict[str, str]) -> tuple[Exchange, bytes]:
        """A GET; its exchange and whole body (2xx or not)."""
        pieces: list[bytes] = []
        ex = await self.request("GET", path, headers, b"", pieces.append)
        return ex, b"".join(pieces or ex.body)

    async def post(self, path: str, headers: dict[str, str], body: bytes | list[bytes],
                   on_body: Callable[[bytes], None]) -> Exchange:
        return await self.request("POST", path, headers, body, on_body)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes | list[bytes],
                      on_body: Callable[[bytes], None]) -> Exchange:
        """Send one request; return its exchange once the response has ended (its 2xx body went to
        `on_body`). Raises ConnectionCut, IdleTimeout, or what `on_body` raised.

        The body (bytes, or pieces written one after another without being joined) is held only
        until the response starts (a request on a stale pooled connection is sent again): a VLM
        request's body holds its image, and callers must not keep it either."""
        outgoing: list[bytes] = [body] if isinstance(body, bytes) else list(body)
        del body
        head = self.head(path, headers, sum(map(len, outgoing)), method)
        for attempt in range(2):
            conn, reused = await self._connection()
            ex = Exchange(on_body, self.loop.create_future(), self.loop.time())
            ex.outgoing = outgoing
            self.active.add(ex)
            self._watching()
            conn.start(ex, head, outgoing)
            if self.batch:  # a fresh connection: never sent again, so the body is not held
                outgoing.clear()
            try:
                await ex.future
                return ex
            except _StaleConnection:
                if reused and attempt == 0 and outgoing:
                    continue  # the server had closed it while it sat in the pool: nothing was processed
                raise
            finally:
                if not ex.future.done():  # cancelled while waiting: the connection is mid-response
                    conn.fail(asyncio.CancelledError())
                    ex.future.cancel()
                self.active.discard(ex)
        raise AssertionError("unreachable")

    async def _connection(self) -> tuple[_Connection, bool]:
        """A connection for one request, and whether it is a kept-alive one the server may have
        closed meanwhile (its request may then go again); a spare past its check counts as fresh."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.open or conn.transport is None or conn.transport.is_closing():
                continue
            if not self.batch:
                return conn, True  # kept alive: the server may have closed it meanwhile
            # A spare nobody has asked anything on: readable only once the server closed it. Past
            # this check it counts as fresh (its request is not sent again, its body not held).
            if conn.peer_closed():
                conn.close()
                continue
            self._open_spares()
            return conn, False
        if self.batch:
            self._open_spares()
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl else None), self.idle_timeout_s)
        except asyncio.TimeoutError as exc:
            raise IdleTimeout(f"connecting to {self.authority} took over {self.idle_timeout_s:g} s") from exc
        except OSError as exc:
            raise ConnectionCut(f"cannot connect to {self.authority}: {exc}") from exc
        if self.batch:
            conn.one_shot = True
            conn.batch_reads(self.batch)
        return conn

    def _open_spares(self) -> None:
        """Connect in the background until `spares` are ready or on their way."""
        for _ in range(self.spares - len(self.idle) - len(self._opening)):
            task = self.loop.create_task(self._open_spare())
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open_spare(self) -> None:
        try:
            conn = await self._connect()
        except RequestError:
            return  # the next request connects itself and reports what fails
        if self.closed or not self.batch:
            conn.close()  # the pool closed, or batching stopped, meanwhile
        else:
            self.idle.insert(0, conn)  # taken from the end: the oldest spare first

    def stop_batching(self) -> None:
        for ex in self.active:  # in flight: their ends would not wake the loop either
            if ex.conn is not None and ex.conn.fd >= 0:
                ex.conn.read_every_byte()
        if self.batch:
            self.batch = 0
            for conn in list(self.idle):  # spares: each set up for batched reads and one request
                conn.close()
            log.warning("%s does not close a connection after its response when asked to (Connection: close): "
                        "batched reads are off for it, its connections are kept alive", self.authority)

    def give_back(self, conn: _Connection) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _watching(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = self.loop.create_task(self._watch_idle(), name=f"idle-watch {self.authority}")

    async def _watch_idle(self) -> None:
        """Cut exchanges silent for longer than the idle timeout: one timer for all of them, waking
        every quarter timeout (at most 1 s), instead of a timer re-armed on every read. A cut lands
        between idle and idle + period. With batched reads, bytes the kernel holds unread count:
        grown since the last tick, they are activity; not grown, they are read now."""
        idle = self.idle_timeout_s
        period = min(1.0, idle / 4)
        while self.active:
            await asyncio.sleep(period)
            now = self.loop.time()
            for ex in self.active:
                conn = ex.conn
                if conn is None or conn.fd < 0 or now - ex.last < period:
                    continue
                waiting = conn.unread()
                if waiting > ex.unread:
                    ex.unread, ex.last = waiting, now
                elif waiting:
                    conn.read_every_byte()
            for ex in [e for e in self.active if now - e.last > idle]:
                self.active.discard(ex)
                err = IdleTimeout(f"no bytes from {self.authority} for {idle:g} s")
                if ex.conn is not None:
                    ex.conn.fail(err)
                elif not ex.future.done():
                    ex.future.set_exception(err)

    def close(self) -> None:
        self.closed = True
        for task in list(self._opening):
            task.cancel()
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
        if self._watch is not None:
            self._watch.cancel()


__all__ = ["ConnectionCut", "Exchange", "IdleTimeout", "Pool"]

