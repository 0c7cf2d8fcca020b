"""Endpoint capacity shared by shards in different processes (the Ray runner): a named async
Ray actor per build and role holds a ReplicaScheduler and hands out replica slots to every shard
of the build, wherever it runs.

Leases are counted per shard attempt (`open` names one: "<shard label>#<n>"). An attempt's
slots come back, and its queued acquires are dropped, at the first of:
- the attempt closes (`release_owner`, from `RayScheduler.close` when `run_shard` ends, however);
- its process dies: the attempt owns a pending object (`hold`), which the actor awaits as a
  borrower (`watch`); Ray fails that wait with OwnerDiedError once the owner's worker is gone
  (~2 s after an `os._exit`, measured in tests/test_broker.py), whether or not the shard is ever
  retried;
- another attempt of the same shard opens (a retry: the fallback the first two make unneeded).
Cost per acquire+release pair (benchmarks/bench_broker.py, 2 cores): ~1.6 ms latency when idle,
~0.8 ms of the shard's CPU and ~1 ms of the actor's, so one actor grants ~1,000 pairs/s per core:
~330 samples/s at 3 requests a sample, far above what the endpoints' slots allow."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter
from typing import Any

from .scheduling import Outcome, ReplicaScheduler

log = logging.getLogger("coldstart.client")
_ACTOR_CLASS: Any = None


class OwnerClosed(RuntimeError):
    """An acquire from a shard attempt whose leases were already returned."""


class _Broker:
    # Sync methods of an async actor run on its event loop too: Events and Tasks are touched from one thread.
    def __init__(self, urls: list[str], per_replica: int, failures_before_cooldown: int, cooldown_s: float,
                 role: str):
        self.sched = ReplicaScheduler(urls, per_replica, failures_before_cooldown, cooldown_s, role)
        self.role = role
        self.leases: dict[str, Counter] = {}
        self.open_owners: dict[str, asyncio.Event] = {}  # set when the attempt closes
        self.waiting: dict[str, set[asyncio.Task]] = {}
        self.returned_dead = 0  # slots returned because an attempt's process died (tests, logs)
        self._seq = itertools.count()

    def open(self, label: str) -> str:
        """A new attempt of shard `label`; whatever earlier attempts of it still hold comes back."""
        for owner in [o for o in self.open_owners if o.rpartition("#")[0] == label]:
            self.release_owner(owner)
        owner = f"{label}#{next(self._seq)}"
        self.open_owners[owner] = asyncio.Event()
        return owner

    async def hold(self, owner: str) -> None:
        """Pending until `owner` closes: the object the attempt owns and the actor watches."""
        event = self.open_owners.get(owner)
        if event is not None:
            await event.wait()

    async def watch(self, owner: str, hold: list[Any]) -> None:
        try:
            await hold[0]  # a list, so Ray passes the reference instead of waiting for its value
        except Exception as exc:  # OwnerDiedError: the attempt's worker process is gone
            if owner in self.open_owners:
                n = self.release_owner(owner)
                self.returned_dead += n
                log.warning("%s broker: %s died (%s) holding %d slot(s): returned", self.role, owner,
                            type(exc).__name__, n)

    async def acquire(self, priority: int, order: int, owner: str) -> int:
        if owner not in self.open_owners:
            raise OwnerClosed(owner)
        task = asyncio.current_task()
        pending = self.waiting.setdefault(owner, set())
        pending.add(task)
        try:
            index = await self.sched.acquire(priority, order)  # cancelled: nothing stays taken
        finally:
            pending.discard(task)
        self.leases.setdefault(owner, Counter())[index] += 1
        return index

    def release(self, index: int, outcome: Outcome, owner: str) -> None:
        held = self.leases.get(owner)
        if held and held[index] > 0:  # else already returned by release_owner
            held[index] -= 1
            self.sched.release(index, outcome)

    def release_owner(self, owner: str) -> int:
        """Close an attempt: its queued acquires are cancelled and the slots it holds come back."""
        event = self.open_owners.pop(owner, None)
        if event is not None:
            event.set()
        for task in self.waiting.pop(owner, ()):
            task.cancel()
        held = self.leases.pop(owner, Counter())
        for index, n in held.items():
            for _ in range(n):
                self.sched.release(index, "other")
        return sum(held.values())

    def bench(self, index: int) -> None:
        self.sched.bench(index)

    def cooldowns(self) -> list[int]:
        return self.sched.cooldowns()

    def stats(self) -> dict[str, Any]:
        return {"capacity": self.sched.capacity, "in_flight": self.sched.in_flight(),
                "max_in_flight": self.sched.max_in_flight, "open": sorted(self.open_owners),
                "held": {o: sum(c.values()) for o, c in self.leases.items() if sum(c.values())},
                "waiting": sum(len(w) for w in self.waiting.values()), "returned_dead": self.returned_dead,
                "pid": os.getpid()}


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        # Async actor: thousands of waiting acquire() calls share its one event loop.
        _ACTOR_CLASS = ray.remote(num_cpus=0, max_concurrency=100_000)(_Broker)
    return _ACTOR_CLASS


class RayScheduler:
    """Client side of the broker; same interface as ReplicaScheduler (pipeline.llm.scheduling.Scheduler)."""

    def __init__(self, actor: Any, owner: str, hold: Any = None):
        self.actor = actor
        self.owner = owner
        self._hold = hold  # the attempt's liveness token; owned by this process
        self._cooldowns: list[int] | None = None

    async def acquire(self, priority: int, order: int) -> int:
        ref = self.actor.acquire.remote(priority, order, self.owner)
        try:
            return await ref
        except asyncio.CancelledError:
            import ray

            ray.cancel(ref)
            # If the grant was already on its way, give it back once it lands.
            asyncio.get_running_loop().run_in_executor(None, self._release_late, ref)
            raise

    def _release_late(self, ref: Any) -> None:
        import ray

        try:
            index = ray.get(ref, timeout=60)
        except Exception:  # cancelled in the actor: nothing was granted
            return
        self.release(index, "other")

    def release(self, index: int, outcome: Outcome) -> None:
        self.actor.release.remote(index, outcome, self.owner)

    def bench(self, index: int) -> None:
        self.actor.bench.remote(index)

    def cooldowns(self) -> list[int]:
        import ray

        return ray.get(self.actor.cooldowns.remote())

    def close(self) -> int:
        """End this attempt: anything it still holds or waits for goes back. Returns the slots returned."""
        import ray

        return ray.get(self.actor.release_owner.remote(self.owner))


def broker_actor(scope: str, role: str, urls: list[str], per_replica: int, failures_before_cooldown: int,
                 cooldown_s: float) -> Any:
    """The build's broker actor for `role`, created by the first caller (the flow's driver)."""
    return _actor_class().options(name=f"coldstart-slots:{scope}:{role}", namespace="coldstart",
                                  get_if_exists=True).remote(urls, per_replica, failures_before_cooldown,
                                                             cooldown_s, role)


def ray_scheduler(scope: str, role: str, urls: list[str], per_replica: int, failures_before_cooldown: int,
                  cooldown_s: float, owner: str) -> RayScheduler:
    """A shard's handle on the build's broker for `role`: a new attempt of shard `owner` (its label),
    watched by the actor so that its slots come back if this process dies."""
    import ray

    actor = broker_actor(scope, role, urls, per_replica, failures_before_cooldown, cooldown_s)
    attempt = ray.get(actor.open.remote(owner))
    hold = actor.hold.remote(attempt)  # pending until the attempt closes; this process owns it
    actor.watch.remote(attempt, [hold])
    return RayScheduler(actor, attempt, hold)
