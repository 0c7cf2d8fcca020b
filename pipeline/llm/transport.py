"""One streamed chat request, bounded by silence, not by total time.

`stream=True` with `stream_options.include_usage`: a long R1 trace is never cut for being long,
only for going silent for `idle_timeout_s` (waiting for the headers or for the next bytes of the
body); connecting is bounded by the same figure. The request goes out over `http1` (keep-alive
connections per replica and event loop, the body handed over in the read callback), and HTTP
statuses become the openai SDK's typed errors, as `chat.completions.create` would raise them; the
server-sent events are parsed here, a read's worth at a time, because the SDK's per-chunk model objects cost ~65 us per token and its line iterator
plus one `orjson.loads` per event still ~9 us (see `stream_chat`). The SDK client itself serves the
endpoint check (`/v1/models`).

Everything that means "the response was cut" is raised as an openai error that `is_retryable`
accepts: idle -> APITimeoutError, dropped connection or a stream that ends unfinished ->
APIConnectionError, an error event mid-stream -> StreamError (retried when the server says 5xx).
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import os
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

import openai
import orjson

from ..config import EndpointConfig
from .completion import IncompleteStream, StreamAssembler
from .http1 import ConnectionCut, IdleTimeout, Pool

# The HTTP library the installed openai SDK is built on (httpx for 1.x, httpx2 for newer ones),
# taken from the SDK's own client class rather than imported by a name the SDK may not use.
_http = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])


class StreamError(openai.APIError):
    """An error event inside a stream the server had accepted (HTTP 200 already sent)."""

    def __init__(self, message: str, request: Any, body: Any, code: int | None):
        super().__init__(message, request, body=body)
        self.status_code = code


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    if isinstance(exc, StreamError):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code in (408, 409, 429)
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class Connection:
    """One replica: the SDK client (endpoint checks, error types) and, per event loop, a pool of
    keep-alive connections for the streamed chat requests (`http1.Pool`; see `stream_chat`)."""

    def __init__(self, url: str, cfg: EndpointConfig):
        timeout = openai.Timeout(cfg.idle_timeout_s)  # connect, read (= longest silence), write, pool
        # Keys come from the environment only; local vLLM accepts any token.
        key = os.environ.get(cfg.api_key_env) or "EMPTY"
        self.api = openai.AsyncOpenAI(
            base_url=url, api_key=key,
            max_retries=0,  # tenacity owns retries, so backoff and slot release are ours
            timeout=timeout,
        )
        self.chat_url = str(self.api.base_url).rstrip("/") + "/chat/completions"
        self.path = urlsplit(self.chat_url).path
        self.request = _http.Request("POST", self.chat_url)  # what the errors name, as the SDK's do
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                        "Accept": "text/event-stream", "User-Agent": "coldstart"}
        self.idle_timeout_s = cfg.idle_timeout_s
        self.max_idle = cfg.max_concurrency + 8
        # One pool per event loop (a shard thread runs its own loop); dropped with its loop.
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = weakref.WeakKeyDictionary()

    def pool(self) -> Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = Pool(self.chat_url, self.idle_timeout_s, self.max_idle)
        return pool

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if (pool := self._pools.pop(loop, None)) is not None:
            pool.close()
        await self.api.close()


# The SDK's own classes for each status, so callers see the same errors as from `chat.completions`.
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def _status_error(status: int, headers: list[tuple[str, str]], content: bytes, request: Any
                  ) -> openai.APIStatusError:
    response = _http.Response(status, headers=headers, content=content, request=request)
    try:
        body: Any = orjson.loads(content)
    except ValueError:
        body = response.text or None
    data = body.get("error", body) if isinstance(body, dict) else body  # as the SDK does
    cls = _STATUS_ERRORS.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(f"Error code: {status} - {body}", response=response, body=data)


def _stream_error(data: dict[str, Any], request: Any) -> StreamError | None:
    # vLLM sends {"error": {...}} (newer) or an ErrorResponse {"object": "error", ...} (older).
    err = data.get("error")
    if err is None and data.get("object") == "error":
        err = data
    if err is None:
        return None
    info = err if isinstance(err, dict) else {"message": str(err)}
    code = info.get("code")
    return StreamError(f"error event mid-stream: {str(info.get('message'))[:300]}", request, info,
                       int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else None)


def _malformed(payload: bytes, request: Any) -> openai.APIConnectionError:
    # A garbled event (a proxy cutting the body): the response is not usable.
    return openai.APIConnectionError(message=f"stream cut: malformed event {payload[:80]!r}", request=request)


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
        raise openai.APIConnectionError(message=f"stream cut: unexpected event {bad[:80]!r}", request=request)
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
    before reaching the bytes. Here each read's body is parsed where it arrives (`http1`), its
    complete events together, so the cost per event is a slice and a few dict reads. Statuses and
    cuts become the SDK's typed errors, as `chat.completions.create` would raise them."""
    request = conn.request
    pool = conn.pool()
    reader = EventReader(request)
    try:
        # The body is built in the call, not kept here: it holds the images again (see Pool.post).
        ex = await pool.post(conn.path, {**conn.headers, **headers} if headers else conn.headers,
                             request_body({"model": model, "messages": messages, "stream": True,
                                           "stream_options": {"include_usage": True}, **params}),
                             reader.feed)
    except IdleTimeout as exc:
        raise openai.APITimeoutError(request=request) from exc
    except ConnectionCut as exc:  # refused, dropped mid-body, not HTTP
        raise openai.APIConnectionError(message=str(exc), request=request) from exc
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
        # Written between quotes as it is: nothing in it may end or escape the JSON string (~25 us
        # for 0.5 MB; base64 holds none of these).
        if not value.isascii() or b'"' in value or b"\\" in value:
            raise ValueError("a bytes value in a request must be ASCII without quotes or backslashes (a data URL)")
        parts += [body[at:j + 1], value]
        at = j + len(marker) - 1
    parts.append(body[at:])
    return parts


class EventReader:
    """Server-sent events of one response, fed a read at a time, folded into a completion."""

    __slots__ = ("request", "asm", "buf", "done")

    def __init__(self, request: Any):
        self.request = request
        self.asm = StreamAssembler()
        self.buf = b""
        self.done = False  # [DONE] seen: what follows is ignored (the body is still read to its end)

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        buf = self.buf + chunk
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
        if not self.done and (last := _event_data(self.buf.strip(b"\n"))) not in (None, b"[DONE]"):
            _feed(self.asm, [last], self.request)  # no blank line after the last event
        try:
            return self.asm.result()
        except IncompleteStream as exc:
            raise openai.APIConnectionError(message=f"stream cut: {exc}", request=self.request) from exc


def _feed(asm: StreamAssembler, payloads: list[bytes], request: Any) -> None:
    chunks = _decode(payloads, request)
    # An error event is an object with an "error" key or "object": "error"; neither can appear
    # unless the bytes hold `"error"`, so the common case skips the per-event check.
    if any(b'"error"' in p for p in payloads):
        for chunk in chunks:
            if (err := _stream_error(chunk, request)) is not None:
                raise err
    asm.feed_many(chunks)
