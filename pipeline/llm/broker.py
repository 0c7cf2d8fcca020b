"""Endpoint capacity shared by shards in different processes (the Ray runner): a named async
Ray actor per build and role holds a ReplicaScheduler and hands out replica slots to every shard
of the build, wherever it runs. Leases are counted per shard, so a shard that starts again after
its process died first returns what its previous attempt held."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from .scheduling import Outcome, ReplicaScheduler

_ACTOR_CLASS: Any = None


class _Broker:
    def __init__(self, urls: list[str], per_replica: int, failures_before_cooldown: int, cooldown_s: float,
                 role: str):
        self.sched = ReplicaScheduler(urls, per_replica, failures_before_cooldown, cooldown_s, role)
        self.leases: dict[str, Counter] = {}

    async def acquire(self, priority: int, order: int, owner: str) -> int:
        index = await self.sched.acquire(priority, order)
        self.leases.setdefault(owner, Counter())[index] += 1
        return index

    def release(self, index: int, outcome: Outcome, owner: str) -> None:
        held = self.leases.get(owner)
        if held and held[index] > 0:  # else already returned by release_owner
            held[index] -= 1
            self.sched.release(index, outcome)

    def release_owner(self, owner: str) -> int:
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
                "max_in_flight": self.sched.max_in_flight}


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        # Async actor: thousands of waiting acquire() calls share its one event loop.
        _ACTOR_CLASS = ray.remote(num_cpus=0, max_concurrency=100_000)(_Broker)
    return _ACTOR_CLASS


class RayScheduler:
    """Client side of the broker; same interface as ReplicaScheduler (pipeline.llm.scheduling.Scheduler)."""

    def __init__(self, actor: Any, owner: str):
        self.actor = actor
        self.owner = owner
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


def broker_actor(scope: str, role: str, urls: list[str], per_replica: int, failures_before_cooldown: int,
                 cooldown_s: float) -> Any:
    """The build's broker actor for `role`, created by the first caller (the flow's driver)."""
    return _actor_class().options(name=f"coldstart-slots:{scope}:{role}", namespace="coldstart",
                                  get_if_exists=True).remote(urls, per_replica, failures_before_cooldown,
                                                             cooldown_s, role)


def ray_scheduler(scope: str, role: str, urls: list[str], per_replica: int, failures_before_cooldown: int,
                  cooldown_s: float, owner: str) -> RayScheduler:
    """A shard's handle on the build's broker for `role`, with the leases an earlier attempt of
    the same shard still held returned first."""
    import ray

    actor = broker_actor(scope, role, urls, per_replica, failures_before_cooldown, cooldown_s)
    ray.get(actor.release_owner.remote(owner))
    return RayScheduler(actor, owner)
