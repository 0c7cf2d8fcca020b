"""The Ray capacity broker (pipeline/llm/broker.py): leases are per shard attempt, and a shard
whose process dies gives its slots back to the other shards without being retried first."""

import asyncio
import os
import time

import pytest

from pipeline.llm.broker import OwnerClosed, _Broker

URLS = ["http://a/v1", "http://b/v1"]  # never contacted: the broker only counts slots
ARGS = ("test-broker", "vlm", URLS, 2, 3, 30.0)  # 2 replicas x 2 slots = capacity 4


def test_attempts_close_and_a_retry_returns_what_the_previous_attempt_held():
    async def main():
        b = _Broker(URLS, 2, 3, 30.0, "vlm")
        first = b.open("d/shard-00000")
        held = [await b.acquire(0, i, first) for i in range(3)]
        queued = [asyncio.ensure_future(b.acquire(0, i, first)) for i in (3, 4)]  # one gets the 4th slot
        await asyncio.sleep(0.01)
        assert b.sched.in_flight() == 4 and sorted(held) == [0, 0, 1]
        second = b.open("d/shard-00000")  # the shard started again: the first attempt is over
        assert second != first
        await asyncio.gather(*queued, return_exceptions=True)  # the queued one is cancelled
        assert b.sched.in_flight() == 0 and all(q.cancelled() or q.exception() is None for q in queued)
        assert b.stats()["waiting"] == 0 and b.stats()["open"] == [second]
        with pytest.raises(OwnerClosed):
            await b.acquire(0, 0, first)
        b.release(held[0], "ok", first)  # a late release from the old attempt: already returned
        assert b.sched.in_flight() == 0
        i = await b.acquire(0, 0, second)
        b.release(i, "ok", second)
        assert b.release_owner(second) == 0 and b.stats()["open"] == []
    asyncio.run(main())


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    owns = not ray.is_initialized()
    if owns:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if owns:
        ray.shutdown()


def _dying_shard(label: str) -> None:
    """Hold every slot and queue one more acquire, then die once another shard waits."""
    import ray

    from pipeline.llm.broker import broker_actor, ray_scheduler

    sched = ray_scheduler(*ARGS, owner=label)
    actor = broker_actor(*ARGS)

    async def main():
        for i in range(4):
            await sched.acquire(0, i)
        asyncio.ensure_future(sched.acquire(0, 4))
        deadline = time.monotonic() + 60
        while ray.get(actor.stats.remote())["waiting"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        os._exit(1)  # no close, no finally: the process is gone

    asyncio.run(main())


def _other_shard(label: str) -> tuple[list[int], float]:
    from pipeline.llm.broker import ray_scheduler

    sched = ray_scheduler(*ARGS, owner=label)

    async def main():
        got = [await sched.acquire(1, i) for i in range(4)]  # the full capacity, at once
        done = time.time()
        for i in got:
            sched.release(i, "ok")
        return got, done

    got, done = asyncio.run(main())
    sched.close()
    return got, done


def test_a_dead_shards_slots_go_to_the_other_shards_without_a_retry(local_ray):
    ray = local_ray
    from pipeline.llm.broker import broker_actor

    actor = broker_actor(*ARGS)
    dying = ray.remote(max_retries=0)(_dying_shard).remote("d/shard-00000")  # never retried
    deadline = time.monotonic() + 60
    while (s := ray.get(actor.stats.remote()))["in_flight"] < 4 or s["waiting"] < 1:
        assert time.monotonic() < deadline, s
        time.sleep(0.05)
    assert s["held"] == {"d/shard-00000#0": 4}
    other = ray.remote(max_retries=0)(_other_shard).remote("d/shard-00001")
    with pytest.raises((ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError)):
        ray.get(dying, timeout=60)
    seen = time.time()
    got, done = ray.get(other, timeout=60)
    assert sorted(got) == [0, 0, 1, 1]
    print(f"slots back {done - seen:.2f}s after the driver saw the crash")
    assert done - seen < 30
    s = ray.get(actor.stats.remote())
    # The dead attempt's queued acquire was dropped, not granted to a dead owner.
    assert s["in_flight"] == 0 and s["waiting"] == 0 and s["open"] == [] and s["held"] == {}
    assert s["returned_dead"] == 4 and s["max_in_flight"] == 4
    ray.kill(actor)
