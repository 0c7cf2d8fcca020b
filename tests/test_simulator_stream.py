"""The simulator's streaming: vLLM's --stream-interval batching (first token at once, N tokens to an
event, the rest when a choice ends), one engine loop pacing every stream of a server, and the
service times it records staying at ttft + tokens * per_token_s under 64 concurrent streams."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time

import aiohttp
import pytest

from pipeline.llm.completion import StreamAssembler
from pipeline.simulator import SimConfig, SimServer

PROMPT = [{"role": "user", "content": "Looking closely, the decisive detail for the question is 7. Question: what is it?"}]


async def _events(url: str, n: int = 1, key: str = "k1", session: aiohttp.ClientSession | None = None,
                  keep: int | None = None) -> list[tuple[float, bytes]]:
    """(seconds since the request was sent, event data) for each `data:` line of one stream."""
    body = {"model": "r1", "messages": PROMPT, "stream": True, "n": n, "stream_options": {"include_usage": True}}
    own = session is None
    session = session or aiohttp.ClientSession()
    out: list[tuple[float, bytes]] = []
    try:
        t0 = time.monotonic()
        async with session.post(url + "/chat/completions", json=body, headers={"X-Coldstart-Request-Key": key}) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    out.append((time.monotonic() - t0, line[6:].rstrip()))
                    if keep is not None and len(out) >= keep:
                        break
    finally:
        if own:
            await session.close()
    return out


def _assemble(events: list[tuple[float, bytes]]) -> dict:
    """The completion, without `created` (the second the request began: two requests may straddle one)."""
    asm = StreamAssembler()
    for _, data in events:
        if data != b"[DONE]":
            asm.feed(json.loads(data))
    out = asm.result()
    del out["created"]
    return out


def _token_events(events: list[tuple[float, bytes]], index: int = 0) -> list[tuple[float, dict]]:
    """The events that carry generated text for one choice (not the role, finish or usage ones)."""
    out = []
    for t, data in events:
        if data == b"[DONE]":
            continue
        for c in json.loads(data)["choices"]:
            if c["index"] == index and (c["delta"].get("content") or c["delta"].get("reasoning_content")):
                out.append((t, c["delta"]))
    return out


def _stream(cfg: SimConfig, **kw) -> list[tuple[float, bytes]]:
    with SimServer(cfg) as sim:
        return asyncio.run(_events(sim.url, **kw))


def test_interval_batches_tokens_into_fewer_events_with_the_same_text():
    base = dict(models=["r1"], length_mu=math.log(150), length_sigma=0.01)
    one = _stream(SimConfig(**base))
    four = _stream(SimConfig(**base, stream_interval=4))
    assert _assemble(four) == _assemble(one)
    tokens = len(_token_events(one))  # interval 1: one event per token
    assert tokens > 100
    # vLLM's rule: token 0 alone, then tokens 1..4, 5..8, ..., then whatever is left at the end.
    batches = _token_events(four)
    assert len(batches) == 1 + math.ceil((tokens - 1) / 4)
    # role + token batches + finish + usage + [DONE]
    assert len(four) == len(batches) + 4 and len(one) == tokens + 4
    # An event can span the end of the reasoning: then it carries both fields, reasoning first.
    for _, delta in batches:
        assert set(delta) <= {"reasoning_content", "content"}
        assert list(delta) == [f for f in ("reasoning_content", "content") if f in delta]
    texts = [d.get("reasoning_content", "") + d.get("content", "") for _, d in batches]
    singles = [d.get("reasoning_content", "") + d.get("content", "") for _, d in _token_events(one)]
    assert texts[0] == singles[0] and texts[1] == "".join(singles[1:5])


def test_interval_with_several_choices_keeps_each_choice_apart():
    base = dict(models=["r1"], length_mu=math.log(60), length_sigma=0.3, wrong_rate=0.5)
    one = _stream(SimConfig(**base), n=3)
    eight = _stream(SimConfig(**base, stream_interval=8), n=3)
    assert _assemble(eight) == _assemble(one)
    for i in range(3):
        tokens = len(_token_events(one, i))
        assert len(_token_events(eight, i)) == 1 + math.ceil((tokens - 1) / 8)


def test_first_token_is_sent_at_once_and_the_next_batch_after_interval_tokens():
    cfg = SimConfig(models=["r1"], length_mu=math.log(40), length_sigma=0.01, ttft_s=0.05, per_token_s=0.02,
                    stream_interval=8)
    batches = _token_events(_stream(cfg))
    (t0, first), (t1, second) = batches[0], batches[1]
    assert len(first["reasoning_content"].split()) == 1  # one token, not held back for the batch
    assert t0 < 0.05 + 0.1  # at ttft, not after the first 8 tokens (0.21 s)
    assert t1 - t0 > 0.1  # the next 8 tokens come together, 8 * 20 ms later
    assert len(second["reasoning_content"].split()) == 8


def test_a_client_going_away_mid_stream_frees_its_slot_and_engine_entry():
    cfg = SimConfig(models=["r1"], length_mu=math.log(400), length_sigma=0.01, per_token_s=0.01)
    with SimServer(cfg) as sim:
        got = asyncio.run(_events(sim.url, keep=5))
        assert len(got) == 5
        deadline = time.monotonic() + 5
        while (sim.active or sim._engine.gens) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.active == 0 and not sim._engine.gens
        assert sim.stats()["completed"] == 0 and sim.stats()["service"] == []


@pytest.mark.parametrize("interval", [1, 8])
def test_one_engine_paces_64_streams_at_their_nominal_service_time(interval):
    # 64 concurrent streams of ~120 tokens at 4 ms a token (~0.5 s each), all on one server.
    ttft, pts = 0.02, 0.004
    cfg = SimConfig(models=["r1"], slots=64, ttft_s=ttft, per_token_s=pts, length_mu=math.log(120),
                    length_sigma=0.2, stream_interval=interval)

    async def run_all(url):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(_events(url, key=f"k{i}", session=session) for i in range(64)))

    with SimServer(cfg) as sim:
        streams = asyncio.run(run_all(sim.url))
        stats = sim.stats()
    assert all(s[-1][1] == b"[DONE]" for s in streams)
    assert stats["completed"] == 64 and stats["max_active"] == 64
    over = [s["end"] - s["start"] - (ttft + s["tokens"] * pts) for s in stats["service"]]
    # Each request holds its slot for its nominal time, not much more (a step runs late at worst
    # by a step or a busy event loop's lag) and never less.
    assert min(over) > -0.01, over
    assert statistics.median(over) < 0.1 and max(over) < 0.4, over


def test_coldstart_simulate_serves_streams_from_its_own_process(tmp_path):
    """`coldstart simulate` (how the benchmark runs its servers) serves from its own process: health,
    a streamed completion assembled whole, and the stats."""
    import socket
    import subprocess
    import sys
    import urllib.request

    import yaml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(yaml.safe_dump({"role": "reasoner", "models": ["r1"], "slots": 4, "stream_interval": 3}))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "simulate", "--config", str(cfg), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"no health: {proc.stderr.read().decode() if proc.poll() is not None else ''}")
        events = asyncio.run(_events(base + "/v1"))
        asm = StreamAssembler()
        for _, data in events:
            if data != b"[DONE]":
                asm.feed(json.loads(data))
        done = asm.result()
        assert events[-1][1] == b"[DONE]" and done["choices"][0]["finish_reason"] == "stop"
        assert "7" in done["choices"][0]["message"]["content"]
        with urllib.request.urlopen(base + "/sim/stats", timeout=5) as r:
            assert json.loads(r.read())["requests"] == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_body_that_is_not_json_gets_a_400_as_from_vllm_and_the_server_goes_on():
    async def post(url: str, data: bytes) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/chat/completions", data=data,
                              headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json()

    with SimServer(SimConfig(models=["r1"], length_mu=math.log(20), length_sigma=0.01)) as sim:
        status, err = asyncio.run(post(sim.url, b'{"model": "r1", "messages": [truncated'))
        assert status == 400 and "JSON" in err["error"]["message"]
        status, _ = asyncio.run(post(sim.url, b'\xff\xfe not utf-8'))
        assert status == 400
        assert sim.stats()["status_counts"] == {"400": 2}
        assert _assemble(asyncio.run(_events(sim.url)))["choices"][0]["finish_reason"] == "stop"
