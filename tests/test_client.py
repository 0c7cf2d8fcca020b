"""The model client against the simulated endpoint over real HTTP."""

import asyncio
import re
import socket
import time

import pytest

from pipeline.client import EndpointCheckFailed, ModelClient, PrioritySlots, RequestFailed, split_reasoning
from pipeline.config import EndpointConfig, SamplingConfig
from pipeline.simulator import SimConfig, SimServer
from pipeline.stages import Stages, StageRejected
from pipeline.store import ResponseStore

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


@pytest.mark.parametrize("fault", ["p429", "p500", "pdrop"])
def test_retries_each_fault_kind_then_succeeds(store, fault):
    with SimServer(SimConfig(models=["r1"], **{fault: 1.0}, max_faults_per_key=2, retry_after_s=0.01)) as sim:
        result, client = run(_chat(endpoint(sim), store))
        assert re.search(r"(?<![\d.])7(?!\.?\d)", result.content)  # the simulated answer, in one of R1's forms
        assert client.stats.retries == 2 and client.stats.sent == 1
        stats = sim.stats()
        assert stats["requests"] == 3 and stats["completed"] == 1


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
        second, client = run(_chat(endpoint(sim, max_concurrency=1, timeout_s=30), store))
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


def test_endpoint_check_fails_fast(store):
    with SimServer(SimConfig(models=["r1"])) as sim:
        run(ModelClient(endpoint(sim), "reasoner").check())
        with pytest.raises(EndpointCheckFailed, match="does not serve model 'r2'; it serves: r1"):
            run(ModelClient(endpoint(sim, model="r2"), "reasoner").check())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = EndpointConfig(url=f"http://127.0.0.1:{port}/v1", model="r1")
    t0 = time.monotonic()
    with pytest.raises(EndpointCheckFailed, match="unreachable"):
        run(ModelClient(cfg, "reasoner").check())
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
