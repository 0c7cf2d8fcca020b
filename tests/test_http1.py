"""The HTTP/1.1 layer under the streamed requests (`pipeline.llm.http1`), against real servers on
loopback: keep-alive connections are reused, a pooled connection the server closed is replaced
without an error or a second request the server processed, bodies framed by length, by chunks or
by the connection's end all arrive whole, what is not HTTP is an error, a cancelled request's
connection is not reused, and headers cannot smuggle lines. Batched reads (`read_batch_bytes`, the
default for plain http): many events per read, a response's end seen at once from the server's
close, a slow stream below the threshold not cut, a silent one cut, a server that ignores
`Connection: close` still read."""

import asyncio
import json
import time

import pytest
from aiohttp import web

from pipeline.config import EndpointConfig
from pipeline.llm.errors import ConnectionCut, IdleTimeout
from pipeline.llm.http1 import SPARE_CONNECTIONS, Pool
from pipeline.llm.transport import Connection, stream_chat

from .conftest import ChatServer

pytestmark = pytest.mark.usefixtures("each_event_loop")  # every case on asyncio and on uvloop

USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def _sse(text: str) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]}
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": USAGE}
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (chunk, usage)) + b"data: [DONE]\n\n"


class CountingServer(ChatServer):
    """aiohttp server answering each chat request with one short stream; notes the client port
    of every request (one port = one TCP connection)."""

    def __init__(self, keepalive_timeout: float = 75.0, hold_s: float = 0.0):
        self.peers: list[int] = []
        self.runner_kw, self.hold_s = {"keepalive_timeout": keepalive_timeout}, hold_s

    async def handler(self, request):
        body = await request.json()
        self.peers.append(request.transport.get_extra_info("peername")[1])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.hold_s:
            await resp.write(b": working\n\n")
            await asyncio.sleep(self.hold_s)
        await resp.write(_sse(body["messages"][0]["content"]))
        await resp.write_eof()
        return resp


async def _ask(conn: Connection, text: str) -> str:
    out = await stream_chat(conn, model="m", messages=[{"role": "user", "content": text}], params={}, headers={})
    return out["choices"][0]["message"]["content"]


BATCH = EndpointConfig().read_batch_bytes  # the default: batched reads, a connection per request


def _conn(url: str, idle: float = 5, batch: int = BATCH) -> Connection:
    return Connection(url, EndpointConfig(url=url, model="m", idle_timeout_s=idle, read_batch_bytes=batch))


def test_sequential_requests_reuse_one_connection_and_concurrent_ones_open_more():
    async def main():
        async with CountingServer(hold_s=0.2) as server:
            conn = _conn(server.url, batch=0)
            try:
                assert [await _ask(conn, f"q{i}") for i in range(5)] == [f"q{i}" for i in range(5)]
                sequential = list(server.peers)
                answers = await asyncio.gather(*(_ask(conn, f"p{i}") for i in range(4)))
                return sequential, server.peers[5:], answers
            finally:
                await conn.close()
    sequential, concurrent, answers = asyncio.run(main())
    assert len(set(sequential)) == 1  # keep-alive: one connection served all five
    assert len(set(concurrent)) == 4  # four at once need four connections
    assert answers == [f"p{i}" for i in range(4)]


def test_a_pooled_connection_the_server_closed_is_replaced_without_error_or_a_second_request():
    async def main():
        async with CountingServer(keepalive_timeout=0.1) as server:
            conn = _conn(server.url, batch=0)
            try:
                first = await _ask(conn, "one")
                await asyncio.sleep(0.5)  # the server closes the idle connection meanwhile
                second = await _ask(conn, "two")
                return first, second, list(server.peers)
            finally:
                await conn.close()
    first, second, peers = asyncio.run(main())
    assert (first, second) == ("one", "two")
    assert len(peers) == 2 and peers[0] != peers[1]  # each request reached the server once


class TCPServer:
    """A bare asyncio server on a free loopback port, for answers aiohttp's server would never write."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        raise NotImplementedError

    @staticmethod
    async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict]:
        """One request: its head and its JSON body (read by Content-Length)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        return head, json.loads(await reader.readexactly(length))

    @staticmethod
    async def answer(writer: asyncio.StreamWriter, text: str, head: bytes = b"") -> None:
        """A 200 whose body, framed by its length, is the stream of `text`; `head`: more header lines."""
        body = _sse(text)
        writer.write(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
        await writer.drain()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


class RaceServer(TCPServer):
    """Keeps the first connection open after its first answer, then closes it on the next request
    without a byte of reply: the race where a server drops an idle keep-alive connection just as
    the client sends on it."""

    def __init__(self):
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        first = self.connections == 1
        for n in range(2 if first else 1):
            text = (await self.read_request(reader))[1]["messages"][0]["content"]
            if first and n == 1:
                writer.close()
                return
            await self.answer(writer, text)
        await asyncio.sleep(5)


def test_a_pooled_connection_closed_as_the_request_goes_out_is_retried_once_on_a_fresh_one():
    async def main():
        async with RaceServer() as server:
            conn = _conn(server.url, batch=0)
            try:
                return await _ask(conn, "one"), await _ask(conn, "two"), server.connections
            finally:
                await conn.close()
    assert asyncio.run(main()) == ("one", "two", 2)


def test_a_fresh_connection_closed_without_a_reply_is_not_retried_by_the_pool():
    # Only a reused connection may have gone stale; on a fresh one the server chose to close.
    with pytest.raises(ConnectionCut, match="server closed the connection"):
        _raw(b"")


class RawServer(TCPServer):
    """Answers every connection with fixed bytes (then closes it, or not): responses aiohttp's
    server would never write."""

    def __init__(self, reply: bytes, close: bool = True):
        self.reply, self.close, self.requests = reply, close, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.head, self.body = await self.read_request(reader)
        self.requests += 1
        writer.write(self.reply)
        await writer.drain()
        if self.close:
            writer.close()
        else:
            await asyncio.sleep(30)


def _raw(reply: bytes, close: bool = True, idle: float = 1, batch: int = BATCH):
    # A server that keeps the connection open after its answer ignores `Connection: close`: with
    # batched reads its answer is read at a watch tick (idle / 4), not at its close.
    async def main():
        async with RawServer(reply, close) as server:
            conn = _conn(server.url, idle, batch)
            try:
                return await _ask(conn, "hi"), server
            finally:
                await conn.close()
    return asyncio.run(main())


def test_bodies_framed_by_length_by_chunks_and_by_the_connection_end_arrive_whole():
    body = _sse("framed")
    by_length = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10]) for i in range(0, len(body), 10)) + b"0\r\n\r\n"
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body
    for reply in (by_length, chunked, until_close):
        for batch in (0, BATCH):
            text, server = _raw(reply, close=reply is until_close, batch=batch)
            assert text == "framed"
    # What went out is an HTTP/1.1 POST of the JSON body, with the host and our headers.
    head = server.head.decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: {server.url.split('/')[2]}\r\n" in head and "Authorization: Bearer " in head
    assert server.body["stream"] is True and server.body["messages"] == [{"role": "user", "content": "hi"}]


def test_a_body_cut_before_its_length_or_last_chunk_is_a_connection_error():
    body = _sse("cut")
    short = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) + 50, body)
    for reply in (short, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:"):
        with pytest.raises(ConnectionCut, match="stream cut"):
            _raw(reply)


def test_a_compressed_answer_is_refused_by_name_and_not_retried():
    import gzip

    from pipeline.llm.errors import RequestError, is_retryable

    body = gzip.compress(_sse("zipped"))
    reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with pytest.raises(RequestError, match="Content-Encoding 'gzip'") as exc:
        _raw(reply, close=False)
    assert not is_retryable(exc.value)  # it would come back compressed again
    text, server = _raw(b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(_sse("plain")), _sse("plain")), close=False)
    assert text == "plain" and b"Accept-Encoding: identity\r\n" in server.head


def test_bytes_that_are_not_http_are_a_connection_error_not_a_hang():
    with pytest.raises(ConnectionCut, match="bad HTTP response"):
        _raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", close=False)


def test_a_refused_connection_is_a_connection_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        conn = _conn(f"http://127.0.0.1:{port}/v1")
        try:
            await _ask(conn, "hi")
        finally:
            await conn.close()
    with pytest.raises(ConnectionCut, match="cannot connect"):
        asyncio.run(main())


@pytest.mark.parametrize("batch", [0, BATCH])
def test_a_cancelled_request_drops_its_connection_and_the_next_one_works(batch):
    async def main():
        async with CountingServer(hold_s=1.0) as server:
            conn = _conn(server.url, batch=batch)
            try:
                task = asyncio.create_task(_ask(conn, "slow"))
                await asyncio.sleep(0.3)  # mid-stream: headers and a comment came
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                pool = conn.pool()
                # Not handed back half-read (with batched reads the pool holds only unused spares).
                assert pool.active == set() and all(c.exchange is None and c.open for c in pool.idle)
                assert len(pool.idle) == (0 if batch == 0 else len(pool.idle)) <= SPARE_CONNECTIONS
                return await _ask(conn, "next"), server.peers
            finally:
                await conn.close()
    text, peers = asyncio.run(main())
    assert text == "next" and peers[0] != peers[1]


def test_the_idle_watch_cuts_a_silent_exchange_at_the_pool_level():
    async def main():
        async with RawServer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", close=False) as server:
            pool = Pool(server.url + "/chat/completions", idle_timeout_s=0.4)
            body = b"{}"
            try:
                t0 = asyncio.get_running_loop().time()
                with pytest.raises(IdleTimeout):
                    await pool.post("/v1/chat/completions", {}, body, lambda b: None)
                return asyncio.get_running_loop().time() - t0, pool
            finally:
                pool.close()
    waited, pool = asyncio.run(main())
    assert 0.4 <= waited < 1.5 and pool.active == set()


def test_headers_cannot_smuggle_lines_and_urls_must_be_http():
    async def main():
        pool = Pool("http://127.0.0.1:9/v1/chat/completions", idle_timeout_s=1)
        with pytest.raises(ValueError, match="line break"):
            pool.head("/v1/chat/completions", {"X-Key": "a\r\nX-Evil: 1"}, 2)
        assert pool.head("/p", {"A": "b"}, 2) == (b"POST /p HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAccept-Encoding: identity\r\n"
                                                  b"A: b\r\nContent-Length: 2\r\n\r\n")
        with pytest.raises(ValueError, match="not an http"):
            Pool("ftp://host/v1", idle_timeout_s=1)
        assert Pool("https://example.org/v1", idle_timeout_s=1).authority == "example.org"
        assert Pool("http://[::1]:8000/v1", idle_timeout_s=1).authority == "[::1]:8000"
        batched = Pool("http://127.0.0.1:9/v1/chat/completions", idle_timeout_s=1, read_batch_bytes=4096)
        assert batched.head("/p", {}, 2) == (b"POST /p HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAccept-Encoding: identity\r\n"
                                             b"Connection: close\r\nContent-Length: 2\r\n\r\n")
        # Over TLS each request on its own connection would cost a handshake: no batching there.
        assert Pool("https://example.org/v1", idle_timeout_s=1, read_batch_bytes=4096).batch == 0
    asyncio.run(main())


def test_connection_cut_is_the_error_of_an_unreachable_pool():
    async def main():
        pool = Pool("http://127.0.0.1:1/v1/chat/completions", idle_timeout_s=1)
        with pytest.raises(ConnectionCut):
            await pool.post("/v1/chat/completions", {}, b"{}", lambda b: None)
    asyncio.run(main())


@pytest.mark.parametrize("batch", [0, BATCH])
def test_a_request_body_is_let_go_once_the_response_starts(batch):
    # A VLM request's body is its image again; held for a 20 s stream by 256 slots it was ~128 MB.
    # Batched reads may read nothing before the end: there the body goes once written (a fresh
    # connection is never sent on again).
    async def main():
        async with CountingServer(hold_s=0.5) as server:
            conn = _conn(server.url, batch=batch)
            try:
                await _ask(conn, "warm")  # with batched reads the next request goes on a spare
                await asyncio.sleep(0.1)
                assert len(conn.pool().idle) == (SPARE_CONNECTIONS if batch else 1)
                task = asyncio.create_task(_ask(conn, "x" * 100_000))
                await asyncio.sleep(0.25)  # headers and a comment came; the answer has not
                (ex,) = conn.pool().active
                held_mid_stream = list(ex.outgoing)
                return held_mid_stream, await task
            finally:
                await conn.close()
    held, text = asyncio.run(main())
    assert held == [] and text == "x" * 100_000


def test_an_image_data_url_is_spliced_into_the_body_byte_for_byte_as_json_would_write_it():
    import base64
    import os

    import orjson

    from pipeline.llm.transport import request_body

    url = b"data:image/png;base64," + base64.b64encode(os.urandom(300_000))
    tricky = 'marker look-alikes: \x000\x00 "\\u00000\\u0000" \\ " é'
    payload = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": tricky},
        {"type": "image_url", "image_url": {"url": url[:1000]}}]}], "stream": True}
    parts = request_body(payload)
    assert url in parts  # the image itself, not a copy inside a larger piece
    as_text = {**payload, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url.decode()}}, {"type": "text", "text": tricky},
        {"type": "image_url", "image_url": {"url": url[:1000].decode()}}]}]}
    assert b"".join(parts) == orjson.dumps(as_text)
    assert request_body({"a": "no bytes"}) == [orjson.dumps({"a": "no bytes"})]
    with pytest.raises(ValueError, match="ASCII without quotes"):
        request_body({"url": b'data:x","injected":"1'})
    # An image's DataUrl (base64 by construction, not checked again per request): the same bytes.
    from pipeline.llm.dataurl import DataUrl

    image = DataUrl.encode("png", os.urandom(300_000), "k")
    assert image.startswith(b"data:image/png;base64,")
    parts = request_body({"url": image})
    assert any(p is image for p in parts) and b"".join(parts) == orjson.dumps({"url": image.decode()})


def test_the_server_reads_the_spliced_image_as_the_json_string_it_was():
    import base64
    import os

    url = b"data:image/jpeg;base64," + base64.b64encode(os.urandom(200_000))
    body = _sse("seen")

    async def main():
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        async with RawServer(reply, close=False) as server:
            conn = _conn(server.url, idle=1)
            try:
                out = await stream_chat(conn, model="m", params={}, headers={}, messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]}])
                return out, server.body
            finally:
                await conn.close()
    out, received = asyncio.run(main())
    assert out["choices"][0]["message"]["content"] == "seen"
    assert received["messages"][0]["content"][0]["image_url"]["url"] == url.decode()


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 (and localhost), made here: the client must verify it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coldstart-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_endpoints_are_verified_and_streamed(tmp_path, monkeypatch):
    # A hosted reasoner (the DeepSeek API) is reached over TLS; its certificate is checked.
    import ssl

    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    body = _sse("over tls")
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(body[i:i + 50]), body[i:i + 50]) for i in range(0, len(body), 50)) + b"0\r\n\r\n"

    async def main(trust: bool):
        raw = RawServer(reply, close=False)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=server_ctx)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        if trust:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # read when the pool makes its context
        else:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        conn = _conn(url)
        try:
            return await _ask(conn, "hi"), raw.head
        finally:
            await conn.close()
            server.close()

    text, head = asyncio.run(main(trust=True))
    assert text == "over tls" and head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Connection: close" not in head  # kept alive: no batched reads over TLS
    with pytest.raises(ConnectionCut, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        asyncio.run(main(trust=False))


# ---- batched reads ------------------------------------------------------------------------------

class TrickleServer(ChatServer):
    """Streams `events` SSE events of ~100 bytes, `gap_s` apart, each written on its own (one TCP
    segment each, as vLLM's server writes them), then the finish; optionally goes silent for good
    after `silent_after` events. Notes each request's `Connection` header and client port."""

    def __init__(self, events: int, gap_s: float, silent_after: int = -1):
        self.events, self.gap_s, self.silent_after = events, gap_s, silent_after
        self.released = asyncio.Event()  # set when the test ends: a silent handler returns then
        self.connection_headers: list[str | None] = []
        self.peers: list[int] = []

    async def handler(self, request):
        await request.read()
        self.connection_headers.append(request.headers.get("Connection"))
        self.peers.append(request.transport.get_extra_info("peername")[1])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.events):
            if i == self.silent_after:  # until the test ends (the client cut it long before)
                await self.released.wait()
                return resp
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": f"t{i:04d} "}, "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(self.gap_s)
        await resp.write(_sse(""))
        await resp.write_eof()
        return resp

    async def __aexit__(self, *exc):
        self.released.set()
        await super().__aexit__(*exc)


def _count_reads(monkeypatch) -> list[int]:
    from pipeline.llm import http1

    reads = []
    original = http1._Connection.data_received

    def counted(self, data):
        reads.append(len(data))
        return original(self, data)
    monkeypatch.setattr(http1._Connection, "data_received", counted)
    return reads


def _trickle(server_kw: dict, idle: float, batch: int, asks: int = 1):
    async def main():
        async with TrickleServer(**server_kw) as server:
            conn = _conn(server.url, idle, batch)
            try:
                t0 = time.monotonic()
                texts = [await _ask(conn, "q") for _ in range(asks)]
                return texts, time.monotonic() - t0, server
            finally:
                await conn.close()
    return asyncio.run(main())


def test_batched_reads_take_many_events_per_read_and_see_the_end_at_once(monkeypatch):
    # 300 events ~2 ms apart (~40 KB in ~0.6 s). Unbatched: about a read per event. Batched: a
    # read per 16 KB, and the last bytes at the server's close: the end is not left for a watch tick
    # (idle 30 s: ticks 1 s apart, a read of what stopped growing only at the second).
    expected = "".join(f"t{i:04d} " for i in range(300))
    reads = _count_reads(monkeypatch)
    (plain,), _, plain_server = _trickle({"events": 300, "gap_s": 0.002}, idle=30, batch=0)
    unbatched = len(reads)
    reads.clear()
    (text, again), elapsed, server = _trickle({"events": 300, "gap_s": 0.002}, idle=30, batch=16384, asks=2)
    assert plain == text == again == expected
    assert unbatched >= 100 and len(reads) <= 12, (unbatched, len(reads))
    assert elapsed < 2 * 1.5  # two streams of ~0.6 s each, neither waited for a watch tick
    assert server.connection_headers == ["close", "close"] and len(set(server.peers)) == 2
    assert plain_server.connection_headers == [None]


def test_a_batched_stream_slower_than_the_idle_timeout_is_not_cut_and_a_silent_one_is():
    # ~2 KB over 2 s, an event every 0.2 s, under a 0.5 s idle timeout: never 16 KB waiting, so
    # the kernel never wakes the loop for it; the watch counts the growing unread bytes as activity.
    expected = "".join(f"t{i:04d} " for i in range(10))
    (text,), elapsed, _ = _trickle({"events": 10, "gap_s": 0.2}, idle=0.5, batch=16384)
    assert text == expected and elapsed >= 2.0
    # Three events, then silence with the connection open: cut once idle for 0.5 s.
    t0 = time.monotonic()
    with pytest.raises(IdleTimeout):
        _trickle({"events": 10, "gap_s": 0.01, "silent_after": 3}, idle=0.5, batch=16384)
    assert time.monotonic() - t0 < 2.5


def test_a_server_that_ignores_connection_close_is_read_at_a_watch_tick_and_then_kept_alive(caplog):
    # Its first answer sits below the threshold on an open connection: read once it stops growing
    # (two ticks of 0.5 s, not the idle cut). Its answer did not say `Connection: close`, so the
    # pool stops batching: the next request goes out kept alive and is read as it comes.
    body = _sse("kept open")
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def main():
        async with RawServer(reply, close=False) as server:
            conn = _conn(server.url, idle=2)
            try:
                t0 = time.monotonic()
                first = await _ask(conn, "one")
                t1 = time.monotonic()
                first_head, batch_after = server.head, conn.pool().batch
                second = await _ask(conn, "two")
                return first, second, t1 - t0, time.monotonic() - t1, first_head, server.head, batch_after
            finally:
                await conn.close()
    first, second, t_first, t_second, head1, head2, batch_after = asyncio.run(main())
    assert first == second == "kept open"
    assert 0.4 < t_first < 2 and t_second < 0.4
    assert b"Connection: close\r\n" in head1 and b"Connection: close" not in head2 and batch_after == 0
    assert "batched reads are off" in caplog.text


def test_a_server_that_answers_connection_close_keeps_batched_reads_on():
    body = _sse("closed")
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def main():
        async with RawServer(reply, close=True) as server:
            conn = _conn(server.url, idle=2)
            try:
                return [await _ask(conn, "q") for _ in range(2)], server.head, conn.pool().batch
            finally:
                await conn.close()
    texts, head, batch = asyncio.run(main())
    assert texts == ["closed", "closed"] and b"Connection: close\r\n" in head and batch == BATCH


class KeepOpenServer(TCPServer):
    """Never closes a connection and never says `Connection: close`: asked "fast", it answers at
    once; asked "slow", it streams eight events 0.2 s apart first."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        text = (await self.read_request(reader))[1]["messages"][0]["content"]
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        if text == "slow":
            for i in range(8):
                await asyncio.sleep(0.2)
                writer.write(b"%x\r\n%s\r\n" % (len(b": tick\n\n"), b": tick\n\n"))
        body = _sse(text)
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(30)


def test_batching_turned_off_mid_run_reads_the_streams_already_in_flight():
    # "fast" shows the server will not close (batching goes off); "slow", in flight meanwhile on a
    # batched connection, must still be read when it ends, not left below the threshold until the
    # idle cut (idle 3 s: it would be cut, and sent again, at ~4.6 s).
    async def main():
        async with KeepOpenServer() as server:
            conn = _conn(server.url, idle=3)
            try:
                t0 = time.monotonic()
                slow = asyncio.create_task(_ask(conn, "slow"))
                await asyncio.sleep(0.05)
                fast = await _ask(conn, "fast")
                return fast, await slow, time.monotonic() - t0, conn.pool().batch
            finally:
                await conn.close()
    fast, slow, elapsed, batch = asyncio.run(main())
    assert (fast, slow, batch) == ("fast", "slow", 0) and elapsed < 2.5


# ---- connections opened ahead (batched reads) -------------------------------------------------

class IdleCloser(TCPServer):
    """Closes a connection that has asked nothing within `grace` seconds (servers drop idle
    connections); answers each request on the others once, then closes."""

    def __init__(self, grace: float):
        self.grace, self.requests, self.connections = grace, 0, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            _, body = await asyncio.wait_for(self.read_request(reader), self.grace)
        except asyncio.TimeoutError:
            writer.close()
            return
        self.requests += 1
        await self.answer(writer, body["messages"][0]["content"], b"Connection: close\r\n")
        writer.close()


def test_requests_go_out_on_connections_opened_ahead_without_waiting_for_a_connect(monkeypatch):
    async def main():
        async with IdleCloser(grace=30) as server:
            conn = _conn(server.url)
            try:
                first = await _ask(conn, "one")  # no spare yet: connects itself, then opens spares
                pool = conn.pool()
                for _ in range(100):
                    if len(pool.idle) == SPARE_CONNECTIONS and server.connections == 1 + SPARE_CONNECTIONS:
                        break
                    await asyncio.sleep(0.01)
                assert len(pool.idle) == SPARE_CONNECTIONS and server.connections == 1 + SPARE_CONNECTIONS

                async def never(self):  # from here a connect would never finish
                    await asyncio.sleep(3600)
                monkeypatch.setattr(Pool, "_connect", never)
                answers = [await asyncio.wait_for(_ask(conn, f"q{i}"), 5) for i in range(3)]
                return first, answers, server.requests
            finally:
                await conn.close()
    first, answers, requests = asyncio.run(main())
    assert first == "one" and answers == ["q0", "q1", "q2"] and requests == 4


def test_spares_the_server_closed_are_skipped_and_each_request_goes_once():
    async def main():
        async with IdleCloser(grace=0.2) as server:
            conn = _conn(server.url)
            try:
                first = await _ask(conn, "one")
                await asyncio.sleep(0.5)  # the server drops every spare meanwhile
                second = await _ask(conn, "two")
                return first, second, server.requests, len(conn.pool().idle)
            finally:
                await conn.close()
    first, second, requests, spares = asyncio.run(main())
    assert (first, second, requests) == ("one", "two", 2) and spares <= SPARE_CONNECTIONS


def test_a_spare_closed_by_the_server_is_seen_before_the_loop_hears_of_it():
    # The server's close may still be on its way to the loop when a request takes the spare: the
    # socket itself says so (readable with nothing asked), and the spare is not used.
    import socket as socket_mod
    import threading
    import time

    listener = socket_mod.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []

    def serve():
        for _ in range(2):
            s, _ = listener.accept()
            accepted.append(s)
    thread = threading.Thread(target=serve)
    thread.start()

    async def main():
        pool = Pool(f"http://127.0.0.1:{port}/v1", idle_timeout_s=5, read_batch_bytes=BATCH)
        try:
            kept, dropped = await pool._connect(), await pool._connect()
            thread.join(5)
            accepted[1].close()  # the server drops the second
            time.sleep(0.2)  # the loop does not run: it has not heard
            seen = kept.open, dropped.open, kept.peer_closed(), dropped.peer_closed()
            pool.idle[:] = [kept, dropped]  # both spares; the dropped one would be taken first
            taken, fresh = await pool._connection()  # (no await inside before a spare is chosen)
            return seen, taken is kept, fresh, dropped.open
        finally:
            pool.close()
    try:
        assert asyncio.run(main()) == ((True, True, False, True), True, False, False)
    finally:
        for s in accepted:
            s.close()
        listener.close()


def test_spare_connections_zero_connects_per_request_and_is_a_config_setting():
    async def main():
        async with IdleCloser(grace=30) as server:
            conn = Connection(server.url, EndpointConfig(url=server.url, model="m", spare_connections=0))
            try:
                answers = [await _ask(conn, f"q{i}") for i in range(3)]
                await asyncio.sleep(0.1)
                return answers, server.connections, conn.pool().idle
            finally:
                await conn.close()
    answers, connections, idle = asyncio.run(main())
    assert answers == ["q0", "q1", "q2"] and connections == 3 and idle == []
    assert EndpointConfig().spare_connections == SPARE_CONNECTIONS
    with pytest.raises(ValueError):
        EndpointConfig(spare_connections=-1)
