"""One streamed chat request, bounded by silence, not by total time.

`stream=True` with `stream_options.include_usage`: a long R1 trace is never cut for being long,
only for going silent for `idle_timeout_s` (waiting for the headers or for the next bytes of the
body); connecting is bounded by the same figure. The request goes out over `http1` (keep-alive
connections per replica and event loop, the body handed over in the read callback); the
server-sent events are parsed here, ~32 KB of them at a time (`EventReader`). The endpoint check
(`/v1/models`) goes over the same connections.

What is not a completion is one of `errors`: idle -> IdleTimeout, refused or dropped connection,
a garbled event or a stream that ends unfinished -> ConnectionCut, a non-2xx status ->
StatusError, an error event mid-stream -> StreamError; `errors.is_retryable` decides.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config import EndpointConfig
from .dataurl import DataUrl
from .completion import IncompleteStream, StreamAssembler
from .errors import ConnectionCut, IdleTimeout, StatusError, StreamError, is_retryable, retry_after_seconds
from .http1 import Pool

__all__ = ["Connection", "EventReader", "is_retryable", "request_body", "retry_after_seconds", "stream_chat",
           "StreamError"]


class Connection:
    """One replica: per event loop, a pool of keep-alive connections (`http1.Pool`) for the
    streamed chat requests and the endpoint check."""

    def __init__(self, url: str, cfg: EndpointConfig):
        # Keys come from the environment only; local vLLM accepts any token.
        key = os.environ.get(cfg.api_key_env) or "EMPTY"
        self.base_url = url.rstrip("/")
        self.chat_url = self.base_url + "/chat/completions"
        self.path = urlsplit(self.chat_url).path
        self.models_path = urlsplit(self.base_url + "/models").path
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                        "Accept": "text/event-stream", "User-Agent": "coldstart"}
        self.idle_timeout_s = cfg.idle_timeout_s
        self.max_idle = cfg.max_concurrency + 8
        self.read_batch_bytes = cfg.read_batch_bytes
        self.spare_connections = cfg.spare_connections
        # One pool per event loop (a shard thread runs its own loop); dropped with its loop.
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = weakref.WeakKeyDictionary()

    def pool(self) -> Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = Pool(self.chat_url, self.idle_timeout_s, self.max_idle,
                                                 self.read_batch_bytes, self.spare_connections)
        return pool

    async def model_ids(self, timeout_s: float = 15.0) -> list[str]:
        """The ids `/v1/models` lists. StatusError for a non-2xx answer, ConnectionCut or
        IdleTimeout when the endpoint cannot be reached or is silent for `timeout_s`."""
        pool = self.pool()
        headers = {k: v for k, v in self.headers.items() if k != "Accept"}
        try:
            ex, body = await asyncio.wait_for(pool.get(self.models_path, headers), timeout_s)
        except asyncio.TimeoutError:
            raise IdleTimeout(f"no answer from {self.base_url}/models within {timeout_s:g} s",
                              self.base_url + "/models") from None
        if not 200 <= ex.status < 300:
            raise _status_error(ex.status, ex.headers, body, self.base_url + "/models")
        try:
            data = orjson.loads(body)
            return [str(m["id"]) for m in data["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectionCut(f"{self.base_url}/models answered something else than a model list: "
                                f"{body[:200]!r}", self.base_url + "/models") from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if (pool := self._pools.pop(loop, None)) is not None:
            pool.close()


def _status_error(status: int, headers: list[tuple[str, str]], content: bytes, url: str) -> StatusError:
    try:
        body: Any = orjson.loads(content)
    except ValueError:
        body = content.decode("utf-8", "replace") or None
    # An OpenAI-style body is {"error": {...}}: its inner object is what callers read.
    data = body.get("error", body) if isinstance(body, dict) else body
    return StatusError(status, {k.lower(): v for k, v in headers}, data, url)


def _stream_error(data: dict[str, Any], request: Any) -> StreamError | None:
    # vLLM sends {"error": {...}} (newer) or an ErrorResponse {"object": "error", ...} (older).
    err = data.get("error")
    if err is None and data.get("object") == "error":
        err = data
    if err is None:
        return None
    info = err if isinstance(err, dict) else {"message": str(err)}
    code = info.get("code")
    return StreamError(f"error event mid-stream: {str(info.get('message'))[:300]}", info,
                       int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else None,
                       request)


def _malformed(payload: bytes, request: Any) -> ConnectionCut:
    # A garbled event (a proxy cutting the body): the response is not usable.
    return ConnectionCut(f"stream cut: malformed event {payload[:80]!r}", request)


def _decode(payloads: list[bytes], request: Any) -> list[dict[str, Any]]:
    """The events' JSON objects, parsed in one orjson call (a read holds many events; parsing them
    one by one cost ~1 us each in Python calls alone)."""
    try:
        chunks = orjson.loads(b"[" + b",".join(payloads) + b"]")
    except ValueError:
        chunks = []
        for p in payloads:  # find the bad one
            try:
                chunks.append(orjson.loads(p))
            except ValueError as exc:
                raise _malformed(p, request) from exc
        raise _malformed(b",".join(payloads), request)  # each parses alone but not together
    if len(chunks) != len(payloads) or not all(type(c) is dict for c in chunks):
        bad = next((p for p, c in zip(payloads, chunks) if type(c) is not dict), b",".join(payloads))
        raise ConnectionCut(f"stream cut: unexpected event {bad[:80]!r}", request)
    return chunks


def _event_data(block: bytes) -> bytes | None:
    """The `data` of one server-sent event (its `data:` lines joined by newlines), or None for an
    event without data (comments, keep-alives, `event:`/`id:` fields)."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the form vLLM writes: one `data: {...}` line
    data = [line[6:] if line.startswith(b"data: ") else line[5:]
            for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


async def stream_chat(conn: Connection, *, model: str, messages: list[dict[str, Any]],
                      params: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """Send one streamed request; return the completion dict once every choice has finished.

    Not through `chat.completions.create`: the SDK's recursive parameter transform and `json.dumps`
    of a body holding a base64 image cost ~4 ms per request (`orjson.dumps` ~0.1 ms), and each read
    of a stream went through four async iterator layers (SDK, httpx, its aiohttp adapter, aiohttp)
    before reaching the bytes. Here each read's body is handed over where it arrives (`http1`) and
    the events are parsed in batches (`EventReader`), so the cost per event is a few dict reads."""
    request = conn.chat_url  # what the errors name
    pool = conn.pool()
    reader = EventReader(request)
    try:
        # The body is built in the call, not kept here: it holds the images again (see Pool.post).
        ex = await pool.post(conn.path, {**conn.headers, **headers} if headers else conn.headers,
                             request_body({"model": model, "messages": messages, "stream": True,
                                           "stream_options": {"include_usage": True}, **params}),
                             reader.feed)
    except (IdleTimeout, ConnectionCut) as exc:  # silent; refused, dropped mid-body, not HTTP
        exc.url = exc.url or request
        raise
    if not 200 <= ex.status < 300:
        raise _status_error(ex.status, ex.headers, b"".join(ex.body), request)
    return reader.result()


def request_body(payload: dict[str, Any]) -> list[bytes]:
    """The JSON body as pieces to write one after another: a bytes value (an image's data URL,
    ASCII; see images.EncodedImage) is its own piece, written as a JSON string without being
    copied into the rest (a 0.5 MB copy per VLM request, and a peak of one per slot at start)."""
    spliced: list[bytes] = []

    def splice(value: Any) -> str:
        if isinstance(value, (bytes, bytearray, memoryview)):
            spliced.append(bytes(value) if not isinstance(value, bytes) else value)
            return f"\x00{len(spliced) - 1}\x00"  # written by orjson as "\u0000N\u0000"
        raise TypeError(f"not JSON serializable: {type(value).__name__}")

    body = orjson.dumps(payload, default=splice)
    if not spliced:
        return [body]
    parts: list[bytes] = []
    at = 0
    for i, value in enumerate(spliced):
        # The marker with its quotes: a text holding these characters is written with \\ and \" .
        marker = b'"\\u0000%d\\u0000"' % i
        j = body.index(marker, at)
        # Written between quotes as it is: nothing in it may end or escape the JSON string. A DataUrl
        # is base64 (none of these); other bytes are checked (~25 us for 0.5 MB).
        if type(value) is not DataUrl and (not value.isascii() or b'"' in value or b"\\" in value):
            raise ValueError("a bytes value in a request must be ASCII without quotes or backslashes (a data URL)")
        parts += [body[at:j + 1], value]
        at = j + len(marker) - 1
    parts.append(body[at:])
    return parts


# Body bytes held before their events are parsed together. At one read per event (a paced
# stream) parsing each read on arrival cost ~10 us of Python per event; parsed ~100 at a time they
# cost ~2 us. Error events wait for the next parse (at the latest the response's end), which is
# when the stream ends anyway; the bytes held are bounded by this figure per response.
PARSE_BATCH_BYTES = 32768


class EventReader:
    """Server-sent events of one response, fed reads as they come, folded into a completion."""

    __slots__ = ("request", "asm", "buf", "done", "held", "held_bytes")

    def __init__(self, request: Any):
        self.request = request
        self.asm = StreamAssembler()
        self.buf = b""  # an event's start whose end has not come yet
        self.done = False  # [DONE] seen: what follows is ignored (the body is still read to its end)
        self.held: list[bytes] = []  # reads not parsed yet
        self.held_bytes = 0

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self.held.append(chunk)
        self.held_bytes += len(chunk)
        if self.held_bytes >= PARSE_BATCH_BYTES:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf + b"".join(self.held)
        self.held.clear()
        self.held_bytes = 0
        if b"\r" in buf:  # SSE allows CRLF and CR line ends; keep a trailing CR (half a CRLF)
            tail = b"\r" if buf.endswith(b"\r") else b""
            buf = (buf[:-1] if tail else buf).replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        if b"\n\n" not in buf:
            self.buf = buf
            return
        *blocks, self.buf = buf.split(b"\n\n")
        payloads = [d for b in blocks if (d := _event_data(b)) is not None]
        if b"[DONE]" in payloads:
            payloads = payloads[:payloads.index(b"[DONE]")]
            self.done = True
        if payloads:
            _feed(self.asm, payloads, self.request)

    def result(self) -> dict[str, Any]:
        if self.held and not self.done:
            self._parse()
        if not self.done and (last := _event_data(self.buf.strip(b"\n"))) not in (None, b"[DONE]"):
            _feed(self.asm, [last], self.request)  # no blank line after the last event
        try:
            return self.asm.result()
        except IncompleteStream as exc:
            raise ConnectionCut(f"stream cut: {exc}", self.request) from exc


def _feed(asm: StreamAssembler, payloads: list[bytes], request: Any) -> None:
    chunks = _decode(payloads, request)
    # An error event is an object with an "error" key or "object": "error"; neither can appear
    # unless the bytes hold `"error"`, so the common case skips the per-event check.
    if any(b'"error"' in p for p in payloads):
        for chunk in chunks:
            if (err := _stream_error(chunk, request)) is not None:
                raise err
    asm.feed_many(chunks)
