"""One streamed chat request through the openai SDK, bounded by silence, not by total time.

`stream=True` with `stream_options.include_usage`: a long R1 trace is never cut for being long,
only for going silent for `idle_timeout_s` (the HTTP read timeout, which applies to each read
of the body; it also bounds connecting and the wait for the first byte). The SDK sends the
request and raises its typed errors for HTTP statuses; the body's server-sent events are read
as raw lines and decoded with `orjson.loads` because the SDK's per-chunk model objects cost ~65 us
per token (~140 ms of CPU per sample of 2K tokens) against ~3 us for a plain dict.

Everything that means "the response was cut" is raised as an openai error that `is_retryable`
accepts: idle -> APITimeoutError, dropped connection or a stream that ends unfinished ->
APIConnectionError, an error event mid-stream -> StreamError (retried when the server says 5xx).
"""

from __future__ import annotations

import email.utils
import importlib
import os
import time
from typing import Any

import openai
import orjson

from ..config import EndpointConfig
from .completion import IncompleteStream, StreamAssembler

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


def make_api(url: str, cfg: EndpointConfig) -> openai.AsyncOpenAI:
    """One SDK client per replica, its connection pool sized to the replica's concurrency."""
    timeout = openai.Timeout(cfg.idle_timeout_s)  # connect, read (= longest silence), write, pool
    pool = cfg.max_concurrency + 8  # +8: endpoint checks and connections still closing
    limits = _http.Limits(max_connections=pool, max_keepalive_connections=pool)
    try:
        # The SDK's aiohttp transport: its C HTTP parser halves the client CPU per streamed token
        # (measured 8.4-9.3 against 18.7-19.2 us/token with the httpx transport).
        http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
    except (AttributeError, RuntimeError):  # an SDK without it, or without its aiohttp extra
        http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)
    return openai.AsyncOpenAI(
        base_url=url,
        # Keys come from the environment only; local vLLM accepts any token.
        api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
        max_retries=0,  # tenacity owns retries, so backoff and slot release are ours
        timeout=timeout,
        http_client=http_client,
    )


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


def _feed(asm: StreamAssembler, payload: str, request: Any) -> None:
    try:
        chunk = orjson.loads(payload)  # one event per token: orjson parses it several times faster than json
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError; a garbled event (a proxy cutting the body): the response is not usable
        raise openai.APIConnectionError(message=f"stream cut: malformed event {payload[:80]!r}",
                                        request=request) from exc
    if not isinstance(chunk, dict):
        raise openai.APIConnectionError(message=f"stream cut: unexpected event {payload[:80]!r}", request=request)
    if (err := _stream_error(chunk, request)) is not None:
        raise err
    asm.feed(chunk)


async def stream_chat(api: openai.AsyncOpenAI, *, model: str, messages: list[dict[str, Any]],
                      params: dict[str, Any], headers: dict[str, str], idle_timeout_s: float) -> dict[str, Any]:
    """Send one streamed request; return the completion dict once every choice has finished."""
    asm = StreamAssembler()
    async with api.chat.completions.with_streaming_response.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True},
        extra_headers=headers, timeout=openai.Timeout(idle_timeout_s), **params,
    ) as resp:
        request = resp.http_response.request
        data: list[str] = []
        done = False
        try:
            # Read to the end of the body even after [DONE], so the connection goes back to the pool.
            async for line in resp.iter_lines():
                if line.startswith("data:"):
                    data.append(line[6:] if line.startswith("data: ") else line[5:])
                    continue
                if line or not data or done:
                    continue  # comments (":"), event/id fields, keep-alives
                payload = "\n".join(data)
                data.clear()
                if payload == "[DONE]":
                    done = True
                    continue
                _feed(asm, payload, request)
        except _http.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except _http.RequestError as exc:  # connection dropped mid-body, incomplete chunked read, ...
            raise openai.APIConnectionError(message=f"stream cut: {type(exc).__name__}: {exc}",
                                            request=request) from exc
        if data and not done and (payload := "\n".join(data)) != "[DONE]":  # no blank line after the last event
            _feed(asm, payload, request)
        try:
            return asm.result()
        except IncompleteStream as exc:
            raise openai.APIConnectionError(message=f"stream cut: {exc}", request=request) from exc
