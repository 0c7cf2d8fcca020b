"""The model client against the simulated endpoint over real HTTP: streamed responses, idle
cuts and retries, the response store, replica scheduling shared between event loops."""

import asyncio
import math
import re
import socket
import threading
import time

import pytest

from pipeline.config import ConvertConfig, EndpointConfig, SamplingConfig
from pipeline.llm import (EndpointCheckFailed, ModelClient, PrioritySlots, ReplicaScheduler, RequestFailed,
                          ResponseStore, split_reasoning)
from pipeline.llm.completion import IncompleteStream, StreamAssembler
from pipeline.simulator import SimConfig, SimServer
from pipeline.stages import Stages, StageRejected

from .conftest import serve_app

PROMPT = [{"role": "user", "content": "Looking closely, the decisive detail for the question is 7. Question: what is it?"}]


def endpoint(sim, **kw):
    base = {"url": sim.url, "model": "r1", "max_concurrency": 4, "max_backoff_s": 2.0}
    return EndpointConfig(**{**base, **kw})


@pytest.fixture
def store(tmp_path):
    s = ResponseStore(tmp_path / "responses.sqlite")
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


async def _chat(cfg, store, messages=PROMPT, **kw):
    client = ModelClient(cfg, "reasoner", store)
    try:
        return await client.chat(messages, stage="reasoning", priority=0, order=0, **kw), client
    finally:
        await client.close()


@pytest.mark.parametrize("stream_interval", [1, 8])
@pytest.mark.parametrize("fault", ["p429", "p500", "pdrop", "pstall", "perror"])
def test_retries_each_fault_kind_then_succeeds(store, fault, stream_interval):
    # pdrop: the connection drops mid-stream; pstall: the stream goes silent longer than the idle
    # timeout; perror: an error event (code 500) mid-stream. Each is cut, retried, then succeeds,
    # whether the server sends a token an event or batches them (vLLM's --stream-interval).
    sim_cfg = SimConfig(models=["r1"], **{fault: 1.0}, max_faults_per_key=2, retry_after_s=0.01, stall_s=5,
                        stream_interval=stream_interval)
    with SimServer(sim_cfg) as sim, SimServer(SimConfig(models=["r1"])) as clean:
        t0 = time.monotonic()
        result, client = run(_chat(endpoint(sim, idle_timeout_s=0.4), store))
        assert time.monotonic() - t0 < 5  # a stall was cut by the idle timeout, not waited out
        assert re.search(r"(?<![\d.])7(?!\.?\d)", result.content)  # the simulated answer, in one of R1's forms
        assert client.stats.retries == 2 and client.stats.sent == 1
        stats = sim.stats()
        assert stats["requests"] == 3 and stats["completed"] == 1
        assert sum(v for k, v in stats["status_counts"].items() if k != "200") == 2
        # The result is the one complete response, not a piece of a cut one.
        reference, _ = run(_chat(endpoint(clean), ResponseStore(store.path.with_name("clean.sqlite"))))
        assert (result.content, result.reasoning, result.usage) == (
            reference.content, reference.reasoning, reference.usage)
        assert result.finish_reason == "stop" and result.usage.completion_tokens > 0


@pytest.mark.parametrize("fault", [None, "p500"])
def test_finished_requests_leave_no_reference_cycles(store, fault):
    # Each request's exchange, stream reader and retry state must be freed by reference counting:
    # left in cycles (~40 objects a request), the cyclic GC's pauses stalled the loop for ~0.2 s
    # at a time on 1,200-sample runs. Retried requests included.
    import gc

    from pipeline.llm.http1 import Exchange
    from pipeline.llm.transport import EventReader
    from tenacity import AsyncRetrying, RetryCallState

    sim_cfg = SimConfig(models=["r1"], **({fault: 1.0, "max_faults_per_key": 1} if fault else {}))

    async def many(cfg, tag):
        client = ModelClient(cfg, "reasoner", store)
        try:
            await asyncio.gather(*(client.chat([{"role": "user", "content": f"{tag} {i}"}], stage="reasoning",
                                                priority=0, order=i) for i in range(8)))
        finally:
            await client.close()

    with SimServer(sim_cfg) as sim:
        cfg = endpoint(sim, max_backoff_s=0.05)
        run(many(cfg, "warm-up"))  # imports, first connections
        gc.collect()
        gc.disable()
        try:
            run(many(cfg, "measured"))
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            kinds = (Exchange, EventReader, AsyncRetrying, RetryCallState)
            left = [type(o).__name__ for o in gc.garbage if isinstance(o, kinds)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert sim.stats()["completed"] == 16
        assert left == []


def test_stream_longer_than_idle_timeout_is_not_cut_while_tokens_flow(store):
    # ~40 tokens, one every 50 ms: about 2 s of streaming under a 0.5 s idle timeout.
    sim_cfg = SimConfig(models=["r1"], per_token_s=0.05, length_mu=math.log(25), length_sigma=0.01)
    with SimServer(sim_cfg) as sim:
        t0 = time.monotonic()
        result, client = run(_chat(endpoint(sim, idle_timeout_s=0.5), store))
        elapsed = time.monotonic() - t0
        assert elapsed > 1.5, elapsed
        assert client.stats.retries == 0 and sim.stats()["requests"] == 1
        assert result.finish_reason == "stop" and result.reasoning and "7" in result.content
        assert result.usage.completion_tokens == sim.stats()["service"][0]["tokens"]


def test_a_stream_silent_past_the_idle_timeout_fails_the_row_after_its_attempts(store):
    with SimServer(SimConfig(models=["r1"], pstall=1.0, stall_s=3, max_faults_per_key=100)) as sim:
        t0 = time.monotonic()
        with pytest.raises(RequestFailed) as exc:
            run(_chat(endpoint(sim, idle_timeout_s=0.3, max_attempts=2, max_backoff_s=0.05), store))
        assert time.monotonic() - t0 < 3
        assert exc.value.reason == "request_failed" and "Timeout" in exc.value.detail
        assert sim.stats()["requests"] == 2 and sim.stats()["completed"] == 0 and len(store) == 0


def test_retry_after_is_honoured(store):
    with SimServer(SimConfig(models=["r1"], p429=1.0, max_faults_per_key=1, retry_after_s=0.8)) as sim:
        t0 = time.monotonic()
        run(_chat(endpoint(sim), store))
        assert time.monotonic() - t0 >= 0.8


def test_gives_up_after_max_attempts(store):
    with SimServer(SimConfig(models=["r1"], p500=1.0, max_faults_per_key=100)) as sim:
        with pytest.raises(RequestFailed) as exc:
            run(_chat(endpoint(sim, max_attempts=3, max_backoff_s=0.05), store))
        assert exc.value.reason == "request_failed" and "500" in exc.value.detail
        assert sim.stats()["requests"] == 3
        assert len(store) == 0


def test_a_client_error_event_mid_stream_rejects_the_row_without_retrying(store):
    with SimServer(SimConfig(models=["r1"], perror=1.0, error_code=400, max_faults_per_key=5)) as sim:
        with pytest.raises(RequestFailed) as exc:
            run(_chat(endpoint(sim), store))
        assert exc.value.reason == "request_rejected" and "400" in exc.value.detail
        assert sim.stats()["requests"] == 1 and len(store) == 0


def test_client_error_is_not_retried(store):
    with SimServer(SimConfig(models=["r1"])) as sim:
        with pytest.raises(RequestFailed) as exc:
            run(_chat(endpoint(sim, model="not-served"), store))
        assert exc.value.reason == "request_rejected"
        assert sim.stats()["requests"] == 1


def test_response_store_prevents_paying_twice(store):
    with SimServer(SimConfig(models=["r1"])) as sim:
        first, _ = run(_chat(endpoint(sim), store))
        # Another client with different operational settings: same key, served from the store.
        second, client = run(_chat(endpoint(sim, max_concurrency=1, idle_timeout_s=30), store))
        assert second.cached and not first.cached
        assert (second.content, second.reasoning, second.usage) == (first.content, first.reasoning, first.usage)
        assert client.stats.sent == 0 and sim.stats()["requests"] == 1
        # A sampling change is a different request.
        third, _ = run(_chat(endpoint(sim, sampling=SamplingConfig(temperature=0.1)), store))
        assert not third.cached and sim.stats()["requests"] == 2


def test_identical_concurrent_requests_share_one_call(store):
    with SimServer(SimConfig(models=["r1"], per_token_s=0.0005)) as sim:
        async def both():
            client = ModelClient(endpoint(sim), "reasoner", store)
            try:
                return await asyncio.gather(*(client.chat(PROMPT, stage="reasoning", priority=0, order=i)
                                              for i in range(3)))
            finally:
                await client.close()
        results = run(both())
        assert len({r.content for r in results}) == 1
        assert sim.stats()["completed"] == 1


@pytest.mark.parametrize("mode", ["field", "inline"])
def test_reasoning_from_field_or_inline_think(store, mode):
    with SimServer(SimConfig(models=["r1"], reasoning_mode=mode)) as sim:
        result, _ = run(_chat(endpoint(sim), store))
        assert result.reasoning and result.reasoning.startswith(("Okay", "Alright"))  # R1's openings
        assert "<think>" not in result.content and "</think>" not in result.content
        assert "7" in result.content and result.usage.completion_tokens > 0


def test_split_reasoning_variants():
    assert split_reasoning("<think>a b</think>\n\nThe answer is 3.", None) == ("a b", "The answer is 3.")
    assert split_reasoning("a b\n</think>\nThe answer is 3.", None) == ("a b", "The answer is 3.")
    assert split_reasoning("The answer is 3.", "thought") == ("thought", "The answer is 3.")
    assert split_reasoning("The answer is 3.", None) == (None, "The answer is 3.")


def test_truncated_output_is_rejected_not_kept(store):
    with SimServer(SimConfig(models=["r1"], length_mu=6.0, length_sigma=0.01)) as sim:
        result, _ = run(_chat(endpoint(sim, sampling=SamplingConfig(max_tokens=50)), store))
        assert result.finish_reason == "length"
        with pytest.raises(StageRejected) as exc:
            Stages._accept("reasoning", result)
        assert exc.value.reason == "truncated"


async def _check(cfg):
    client = ModelClient(cfg, "reasoner")
    try:
        await client.check()
    finally:
        await client.close()


def test_endpoint_check_fails_fast(store):
    with SimServer(SimConfig(models=["r1"])) as sim:
        run(_check(endpoint(sim)))
        with pytest.raises(EndpointCheckFailed, match="does not serve model 'r2'; it serves: r1"):
            run(_check(endpoint(sim, model="r2")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = EndpointConfig(url=f"http://127.0.0.1:{port}/v1", model="r1")
    t0 = time.monotonic()
    with pytest.raises(EndpointCheckFailed, match="unreachable"):
        run(_check(cfg))
    assert time.monotonic() - t0 < 20


def test_priority_slots_serve_latest_stage_first():
    async def scenario():
        slots = PrioritySlots(1)
        await slots.acquire(2, 0)
        order = []

        async def waiter(priority, idx):
            await slots.acquire(priority, idx)
            order.append((priority, idx))
            slots.release()

        tasks = [asyncio.create_task(waiter(p, i)) for p, i in [(2, 5), (0, 9), (1, 1), (0, 3)]]
        await asyncio.sleep(0.01)
        slots.release()
        await asyncio.gather(*tasks)
        return order

    assert run(scenario()) == [(0, 3), (0, 9), (1, 1), (2, 5)]


def test_finished_stream_is_never_sent_again_after_reopening_the_store(tmp_path):
    path = tmp_path / "responses.sqlite"
    with SimServer(SimConfig(models=["r1"], per_token_s=0.001)) as sim:
        first_store = ResponseStore(path)
        first, _ = run(_chat(endpoint(sim), first_store))
        first_store.close()
        reopened = ResponseStore(path)
        second, client = run(_chat(endpoint(sim), reopened))
        reopened.close()
        assert second.cached and client.stats.sent == 0 and sim.stats()["requests"] == 1
        assert (second.content, second.reasoning, second.usage) == (first.content, first.reasoning, first.usage)


def test_n_choices_streamed_interleaved_are_assembled_by_index(store):
    with SimServer(SimConfig(models=["r1"], wrong_rate=0.5)) as sim:
        async def go():
            client = ModelClient(endpoint(sim), "reasoner", store)
            try:
                return await client.chat_choices(PROMPT, stage="reasoning", priority=0, order=0, n=3)
            finally:
                await client.close()
        results = run(go())
        assert len(results) == 3 and sim.stats()["requests"] == 1
        raw = store.get(results[0].request_key)
        assert [c["index"] for c in raw["choices"]] == [0, 1, 2]
        # Each choice is one coherent trace (not a mix of the three), carrying its own finish_reason.
        from pipeline.simulator.content import _THINK_OPENERS

        for r in results:
            openers = [o for o in _THINK_OPENERS if r.reasoning.startswith(o)]
            assert len(openers) == 1 and sum(r.reasoning.count(o) for o in _THINK_OPENERS) == 1
            assert r.finish_reason == "stop"
        # One usage for the request, on the first choice; it counts the tokens of all three.
        assert results[0].usage.completion_tokens == sim.stats()["service"][0]["tokens"]
        assert results[1].usage.completion_tokens == 0 and results[2].usage.requests == 0


# Chunks in the shape vLLM's OpenAI server (serving_chat.py) streams with a reasoning parser and
# stream_options.include_usage: a role delta, reasoning deltas, content deltas, a finish chunk,
# a usage chunk with no choices. Written after that protocol, not captured from a server.
def _vllm_chunks(field="reasoning_content", finish=True, usage=True):
    head = {"id": "chatcmpl-9f1", "object": "chat.completion.chunk", "created": 1732400000, "model": "r1"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]}]
    for tok in ["Okay", ",", " the", " bar", " is", " 7", "."]:
        chunks.append({**head, "choices": [{"index": 0, "delta": {field: tok}, "logprobs": None, "finish_reason": None}]})
    for tok in ["The answer", " is", " \\boxed{7}", "."]:
        chunks.append({**head, "choices": [{"index": 0, "delta": {"content": tok}, "logprobs": None,
                                             "finish_reason": None}]})
    if finish:
        chunks.append({**head, "choices": [{"index": 0, "delta": {"content": ""}, "logprobs": None,
                                             "finish_reason": "stop", "stop_reason": None}]})
    if usage:
        chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 31, "total_tokens": 42, "completion_tokens": 11}})
    return chunks


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_stream_assembler_builds_the_completion_dict(field):
    asm = StreamAssembler()
    for chunk in _vllm_chunks(field):
        asm.feed(chunk)
    raw = asm.result()
    msg = raw["choices"][0]["message"]
    assert msg[field] == "Okay, the bar is 7." and msg["content"] == "The answer is \\boxed{7}."
    assert raw["choices"][0]["finish_reason"] == "stop" and raw["usage"]["completion_tokens"] == 11
    from pipeline.llm import parse_completion
    res = parse_completion(raw, "k", False)
    assert (res.reasoning, res.content, res.usage.prompt_tokens) == ("Okay, the bar is 7.", "The answer is \\boxed{7}.", 31)


def test_stream_assembler_refuses_a_stream_that_never_finished():
    asm = StreamAssembler()
    for chunk in _vllm_chunks(finish=False, usage=False):
        asm.feed(chunk)
    with pytest.raises(IncompleteStream):
        asm.result()
    with pytest.raises(IncompleteStream):  # nothing at all
        StreamAssembler().result()
    asm = StreamAssembler()  # finished but no usage chunk (a server ignoring include_usage): usable
    for chunk in _vllm_chunks(usage=False):
        asm.feed(chunk)
    assert asm.result()["usage"] is None


def test_replicas_raise_the_in_flight_window():
    one = ConvertConfig(vlm={"url": "http://v/v1", "max_concurrency": 64},
                        reasoner={"url": "http://r/v1", "max_concurrency": 64})
    four = ConvertConfig(vlm={"urls": [f"http://v{i}/v1" for i in range(4)], "max_concurrency": 64},
                         reasoner={"urls": [f"http://r{i}/v1" for i in range(4)], "max_concurrency": 128})
    assert one.max_in_flight == 2 * (64 + 64)
    assert four.max_in_flight == 2 * (4 * 64 + 4 * 128)  # enough to fill 512 reasoner slots
    assert ConvertConfig(max_in_flight=10, vlm={"urls": ["a", "b"]}).max_in_flight == 10  # explicit wins


def test_timeout_s_is_refused_with_a_pointer_to_idle_timeout():
    with pytest.raises(ValueError, match="idle_timeout_s"):
        EndpointConfig(url="http://x/v1", model="m", timeout_s=900)


def test_one_scheduler_shared_by_event_loops_on_threads_fills_but_never_exceeds_capacity():
    """Shards on threads of one process share a role's slots: together they never exceed the
    replicas' capacity, and a shard alone (the others done) gets every slot, not a fixed slice."""
    sched = ReplicaScheduler(["a", "b"], per_replica=3)
    peak_alone = []

    async def shard(n_requests, hold_s, record=None):
        async def one(i):
            index = await sched.acquire(priority=i % 3, order=i)
            if record is not None:
                record.append(sched.in_flight())
            await asyncio.sleep(hold_s)
            sched.release(index, "ok")
        await asyncio.gather(*(one(i) for i in range(n_requests)))

    threads = [threading.Thread(target=lambda: asyncio.run(shard(20, 0.01))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sched.max_in_flight == 6 and sched.in_flight() == 0
    assert [r.sent for r in sched.replicas] == [30, 30]  # least-outstanding spreads the load
    sched.max_in_flight = 0
    t = threading.Thread(target=lambda: asyncio.run(shard(12, 0.05, peak_alone)))
    t.start(), t.join(30)
    assert sched.max_in_flight == 6 and max(peak_alone) == 6


def test_scheduler_benches_a_failing_replica_and_brings_it_back():
    async def scenario():
        sched = ReplicaScheduler(["bad", "good"], per_replica=1, failures_before_cooldown=2, cooldown_s=0.2)
        for _ in range(2):
            i = await sched.acquire(0, 0)
            assert i == 0 or sched.replicas[0].outstanding == 0
            sched.release(i, "failed" if i == 0 else "ok")
        picks = []
        for _ in range(4):
            i = await sched.acquire(0, 0)
            picks.append(i)
            sched.release(i, "ok")
        assert picks == [1, 1, 1, 1] and sched.cooldowns() == [1, 0]
        # Both benched: a waiter wakes when the first cool-down ends, without any release.
        sched.bench(0), sched.bench(1)
        t0 = time.monotonic()
        i = await sched.acquire(0, 0)
        assert 0.15 < time.monotonic() - t0 < 1.0
        sched.release(i, "ok")

    run(scenario())


def test_cancelled_waiter_does_not_leak_a_slot():
    async def scenario():
        sched = ReplicaScheduler(["a"], per_replica=1)
        held = await sched.acquire(0, 0)
        waiter = asyncio.create_task(sched.acquire(0, 1))
        await asyncio.sleep(0.01)
        waiter.cancel()
        sched.release(held, "ok")
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.01)
        assert sched.in_flight() == 0
        assert await asyncio.wait_for(sched.acquire(0, 2), 1) == 0

    run(scenario())


def test_endpoint_check_names_a_refusing_status_and_a_non_model_answer(store, monkeypatch):
    import asyncio as _asyncio

    monkeypatch.delenv(EndpointConfig(url="http://x/v1", model="m").api_key_env, raising=False)

    from aiohttp import web

    async def main(handler):
        app = web.Application()
        app.router.add_get("/v1/models", handler)
        runner, url = await serve_app(app)
        try:
            await _check(EndpointConfig(url=url, model="r1"))
        finally:
            await runner.cleanup()

    async def denied(request):
        assert request.headers["Authorization"] == "Bearer EMPTY"  # no key variable set: vLLM's placeholder
        return web.json_response({"error": {"message": "bad key"}}, status=401)

    async def html(request):
        return web.Response(text="<html>login</html>", content_type="text/html")

    with pytest.raises(EndpointCheckFailed, match=r"answered HTTP 401 on /models \(check the API key variable"):
        _asyncio.run(main(denied))
    with pytest.raises(EndpointCheckFailed, match="something else than a model list"):
        _asyncio.run(main(html))
