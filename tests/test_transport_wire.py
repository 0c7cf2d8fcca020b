"""The streamed-request transport against byte-exact server-sent events over real HTTP: the SSE
forms a server may write (CRLF, comments, fields, events split anywhere across reads, a last event
without its blank line) assemble the same completion; garbage and error events are errors of the
right kind; HTTP statuses become the SDK's typed errors with their headers."""

import asyncio
import json
import time

import pytest
from aiohttp import web

from pipeline.config import EndpointConfig
from pipeline.llm.errors import ConnectionCut, IdleTimeout, StatusError, StreamError, is_retryable, retry_after_seconds
from pipeline.llm import transport
from pipeline.llm.transport import Connection, stream_chat

from .conftest import ChatServer

pytestmark = pytest.mark.usefixtures("each_event_loop")  # every case on asyncio and on uvloop


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(delta, finish=None, index=0):
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}


TOKENS = ["The", " error", " is", " \"error\"", " in", " line\n2", " é", "✓"]
USAGE = {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


def _body(reasoning=True) -> bytes:
    out = [_event(_chunk({"role": "assistant", "content": ""}))]
    if reasoning:
        out += [_event(_chunk({"reasoning_content": t})) for t in ("think", " hard")]
    out += [_event(_chunk({"content": t})) for t in TOKENS]
    out += [_event(_chunk({"content": ""}, "stop")),
            _event({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                    "usage": USAGE}),
            b"data: [DONE]\n\n"]
    return b"".join(out)


class WireServer(ChatServer):
    """Writes the given bytes as the body, in pieces of `piece` bytes, one HTTP chunk each."""

    def __init__(self, body: bytes, piece: int = 0, status: int = 200, headers=None, pause_s: float = 0,
                 pause_at: int = 0):
        self.body, self.piece, self.status, self.headers = body, piece, status, headers or {}
        self.pause_s, self.pause_at = pause_s, pause_at  # silence before the headers (-1) or at that byte

    async def handler(self, request):
        self.request_body, self.request_headers = await request.json(), request.headers.copy()
        if self.pause_at < 0:
            await asyncio.sleep(self.pause_s)
        if self.status != 200:
            return web.Response(status=self.status, body=self.body, headers=self.headers,
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        step = self.piece or len(self.body)
        for i in range(0, len(self.body), step):
            if self.pause_s and self.pause_at >= 0 and i <= self.pause_at < i + step:
                await asyncio.sleep(self.pause_s)
            await resp.write(self.body[i:i + step])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp


async def _send(server: WireServer, idle: float = 5):
    conn = Connection(server.url, EndpointConfig(url=server.url, model="m", idle_timeout_s=idle))
    try:
        return await stream_chat(conn, model="m", messages=[{"role": "user", "content": "hi"}], params={},
                                 headers={})
    finally:
        await conn.close()


def run(body: bytes, idle: float = 5, **kw):
    async def main():
        async with WireServer(body, **kw) as server:
            return await _send(server, idle)
    return asyncio.run(main())


EXPECTED = "".join(TOKENS)


@pytest.mark.parametrize("piece", [0, 1, 7, 64])
def test_events_split_anywhere_across_reads_assemble_the_same_completion(piece):
    out = run(_body(), piece=piece)
    msg = out["choices"][0]["message"]
    assert msg["content"] == EXPECTED
    assert msg["reasoning_content"] == "think hard"
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"] == USAGE


@pytest.mark.parametrize("piece", [0, 1, 5])
def test_crlf_comments_fields_and_a_last_event_without_blank_line(piece):
    body = _body(reasoning=False).replace(b"\n", b"\r\n")
    body = b": keep-alive\r\n\r\nevent: message\r\nid: 1\r\n" + body  # comment, then fields on the first event
    body = body.replace(b"data: [DONE]\r\n\r\n", b"")  # a server that ends without [DONE] or a blank line
    body = body[:-2]
    out = run(body, piece=piece)
    assert out["choices"][0]["message"]["content"] == EXPECTED
    assert out["usage"] == USAGE


@pytest.mark.parametrize("batch", [1, 37, 300])
@pytest.mark.parametrize("piece", [1, 5, 64])
def test_events_parsed_in_batches_of_any_size_assemble_the_same_completion(monkeypatch, batch, piece):
    # The reader holds reads until PARSE_BATCH_BYTES; batch edges may fall inside an event, a field
    # or a CRLF, and an error event may wait in a batch: none of it may change what comes out.
    monkeypatch.setattr(transport, "PARSE_BATCH_BYTES", batch)
    crlf = _body(reasoning=True).replace(b"\n", b"\r\n")
    out = run(b": keep-alive\r\n\r\n" + crlf, piece=piece)
    assert out["choices"][0]["message"]["content"] == EXPECTED
    assert out["choices"][0]["message"]["reasoning_content"] == "think hard" and out["usage"] == USAGE
    long = b"".join(_event(_chunk({"content": f"t{i} "})) for i in range(2000))  # ~230 KB: many batches
    head = _event(_chunk({"role": "assistant", "content": ""})) + long
    out = run(head + _event(_chunk({"content": ""}, "stop")) + b"data: [DONE]\n\n", piece=4096)
    assert out["choices"][0]["message"]["content"] == "".join(f"t{i} " for i in range(2000))
    with pytest.raises(StreamError, match="engine died"):
        run(head + _event({"error": {"message": "engine died", "code": 500}}) + b"data: [DONE]\n\n", piece=4096)


def test_a_long_stream_is_held_in_bounded_batches(monkeypatch):
    # What the reader holds unparsed never grows past one batch plus one read.
    seen = []
    orig = transport.EventReader._parse

    def parse(self):
        seen.append(self.held_bytes)
        orig(self)

    monkeypatch.setattr(transport.EventReader, "_parse", parse)
    body = (_event(_chunk({"role": "assistant", "content": ""})) + b"".join(_event(_chunk({"content": "x"}))
                                                                        for _ in range(3000))
            + _event(_chunk({}, "stop")) + b"data: [DONE]\n\n")
    reader = transport.EventReader("test")
    for i in range(0, len(body), 1000):
        reader.feed(body[i:i + 1000])
    assert reader.result()["choices"][0]["message"]["content"] == "x" * 3000
    assert len(seen) == len(body) // transport.PARSE_BATCH_BYTES + 1  # full batches, then the rest at the end
    assert max(seen) < transport.PARSE_BATCH_BYTES + 1000


def test_multi_line_data_fields_are_joined_with_newlines():
    event = json.dumps(_chunk({"content": "x"}), indent=1).encode()
    block = b"".join(b"data: " + line + b"\n" for line in event.split(b"\n")) + b"\n"
    body = block + _event(_chunk({}, "stop")) + b"data: [DONE]\n\n"
    assert run(body)["choices"][0]["message"]["content"] == "x"


def test_events_after_done_are_ignored():
    body = _body(reasoning=False) + _event(_chunk({"content": "LATE"}))
    assert run(body)["choices"][0]["message"]["content"] == EXPECTED


def test_a_garbled_event_is_a_retryable_cut():
    body = _body(reasoning=False).replace(b'{"content": " is"}', b'{"content": " is"', 1)
    with pytest.raises(ConnectionCut, match="malformed event") as exc:
        run(body)
    assert is_retryable(exc.value)


def test_a_stream_that_ends_before_finish_is_a_retryable_cut():
    body = _body(reasoning=False).split(b'"finish_reason": "stop"')[0].rsplit(b"data:", 1)[0]
    with pytest.raises(ConnectionCut, match="without finish_reason") as exc:
        run(body)
    assert is_retryable(exc.value)


@pytest.mark.parametrize("code,retry", [(400, False), (500, True)])
def test_an_error_event_mid_stream(code, retry):
    head = _body(reasoning=False).split(b'data: {"id": "c1", "object": "chat.completion.chunk", "created": 1, '
                                        b'"model": "m", "choices": [{"index": 0, "delta": {"content": " in"}')[0]
    body = head + _event({"error": {"message": "engine died", "type": "X", "code": code}}) + b"data: [DONE]\n\n"
    with pytest.raises(StreamError, match="engine died") as exc:
        run(body)
    assert exc.value.status_code == code and is_retryable(exc.value) is retry


def test_content_that_merely_says_error_is_not_an_error_event():
    # the tokens hold `"error"` in their text: the fast check sees the bytes, the real check clears them
    assert run(_body())["choices"][0]["message"]["content"] == EXPECTED


@pytest.mark.parametrize("status", [429, 503, 404, 401, 400, 409])
def test_http_statuses_become_status_errors_with_headers_and_body(status):
    body = json.dumps({"error": {"message": "nope", "type": "t", "code": status}}).encode()
    with pytest.raises(StatusError) as exc:
        run(body, status=status, headers={"Retry-After": "7"})
    assert exc.value.status_code == status
    assert exc.value.body == {"message": "nope", "type": "t", "code": status}
    assert retry_after_seconds(exc.value) == 7.0
    assert is_retryable(exc.value) is (status in (429, 503, 409))
    assert exc.value.url.endswith("/v1/chat/completions") and f"HTTP {status}" in str(exc.value)


def test_a_status_error_with_a_text_body_and_retry_dates():
    with pytest.raises(StatusError) as exc:
        run(b"Bad Gateway", status=502, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert exc.value.body == "Bad Gateway" and is_retryable(exc.value)
    assert retry_after_seconds(exc.value) == 0.0  # a date in the past: no wait
    with pytest.raises(StatusError) as exc:
        run(b"{}", status=429, headers={"Retry-After-Ms": "1500", "Retry-After": "9"})
    assert retry_after_seconds(exc.value) == 1.5  # the finer header wins


def test_the_request_body_is_the_openai_chat_request():
    async def main():
        async with WireServer(_body()) as server:
            conn = Connection(server.url, EndpointConfig(url=server.url, model="m", idle_timeout_s=5))
            try:
                await stream_chat(conn, model="m", messages=[{"role": "user", "content": "hi"}],
                                  params={"temperature": 0.5, "max_tokens": 9}, headers={"X-K": "v"})
            finally:
                await conn.close()
            return server
    server = asyncio.run(main())
    assert server.request_body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                   "stream_options": {"include_usage": True}, "temperature": 0.5, "max_tokens": 9}
    assert server.request_headers["X-K"] == "v" and server.request_headers["Authorization"] == "Bearer EMPTY"


@pytest.mark.parametrize("pause_at", [-1, 300])
def test_silence_before_the_headers_or_mid_body_is_cut_after_the_idle_timeout(pause_at):
    async def main():
        async with WireServer(_body(), piece=100, pause_s=3, pause_at=pause_at) as server:
            t0 = time.monotonic()
            with pytest.raises(IdleTimeout) as exc:
                await _send(server, 0.4)
            return time.monotonic() - t0, exc.value
    waited, exc = asyncio.run(main())
    assert 0.4 <= waited < 1.0 and is_retryable(exc)


def test_a_slow_stream_that_keeps_sending_is_not_cut():
    # 30 pieces, a pause of 0.3 s before one of them: 0.9 s of silence in all, never 0.4 s at once
    body = _body()
    out = run(body, idle=0.4, piece=len(body) // 3, pause_s=0.3, pause_at=len(body) // 2)
    assert out["choices"][0]["message"]["content"] == EXPECTED


def test_an_idle_cut_does_not_leak_a_cancellation_into_the_caller():
    async def main():
        async with WireServer(_body(), piece=100, pause_s=3, pause_at=300) as server:
            with pytest.raises(IdleTimeout):
                await _send(server, 0.3)
            assert asyncio.current_task().cancelling() == 0
            await asyncio.sleep(0.05)  # a leaked cancellation would strike here
            return "alive"
    assert asyncio.run(main()) == "alive"
