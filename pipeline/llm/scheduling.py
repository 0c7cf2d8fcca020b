"""Who sends next, and to which replica.

`ReplicaScheduler` holds the capacity of one role: every replica's `max_concurrency` slots.
A free slot goes to the waiting request of the latest stage (lowest priority number, then the
lowest sample order), sent to the healthy replica with the fewest outstanding requests; a
replica failing `failures_before_cooldown` times in a row sits out `cooldown_s`.

One scheduler may serve several event loops at once: the shards of a build that run on threads
of one process share it, so a slot a finishing shard leaves free goes to another shard's
waiting request instead of idling (no fixed per-shard slices). Grants cross loops with
`call_soon_threadsafe`. `ray_broker` puts the same scheduler in a named Ray actor for shards
that run in different processes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger("coldstart.client")
Outcome = Literal["ok", "failed", "other"]  # failed: retryable (counts towards cool-down)


class PrioritySlots:
    """A semaphore whose waiters are served by (priority, order), lowest first (one event loop)."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiters: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int, order: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, order, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


class Scheduler(Protocol):
    """What a ModelClient needs: a replica index to send to, and the outcome back."""

    async def acquire(self, priority: int, order: int) -> int: ...

    def release(self, index: int, outcome: Outcome) -> None: ...

    def bench(self, index: int) -> None: ...

    def cooldowns(self) -> list[int]: ...

    def close(self) -> object: ...  # a shard is done with it (its leases, where they are counted, come back)


@dataclass
class ReplicaHealth:
    url: str
    outstanding: int = 0
    sent: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    cooldowns: int = 0


class ReplicaScheduler:
    """Prioritised slots over the replicas of one role; thread-safe (see the module docstring)."""

    def __init__(self, urls: list[str], per_replica: int, failures_before_cooldown: int = 3,
                 cooldown_s: float = 30.0, role: str = ""):
        assert urls and per_replica >= 1
        self.replicas = [ReplicaHealth(u) for u in urls]
        self.per_replica = per_replica
        self.failures_before_cooldown = failures_before_cooldown
        self.cooldown_s = cooldown_s
        self.role = role
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, int, int, asyncio.AbstractEventLoop, asyncio.Future[int]]] = []
        self._seq = itertools.count()
        self.max_in_flight = 0  # the most slots ever held at once (tests, benchmarks)

    @property
    def capacity(self) -> int:
        return self.per_replica * len(self.replicas)

    def in_flight(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    def _free_replica(self, now: float) -> int | None:
        best, best_key = None, None
        for i, r in enumerate(self.replicas):
            if r.cooldown_until <= now and r.outstanding < self.per_replica:
                key = (r.outstanding, r.sent)
                if best_key is None or key < best_key:
                    best, best_key = i, key
        return best

    def _dispatch_locked(self) -> None:
        """Hand free slots to the best waiters (caller holds the lock)."""
        now = time.monotonic()
        while self._waiters:
            if self._waiters[0][4].done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            index = self._free_replica(now)
            if index is None:
                return
            *_, loop, fut = heapq.heappop(self._waiters)
            self._take(index)
            try:
                loop.call_soon_threadsafe(self._deliver, fut, index)
            except RuntimeError:  # that loop is closed: its waiter is gone, take the slot back
                self.replicas[index].outstanding -= 1

    def _take(self, index: int) -> None:
        self.replicas[index].outstanding += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight())

    def _deliver(self, fut: asyncio.Future[int], index: int) -> None:
        if fut.done():  # cancelled between the grant and now: pass the slot on
            self.release(index, "other")
        else:
            fut.set_result(index)

    def _next_cooldown_end(self, now: float) -> float | None:
        ends = [r.cooldown_until for r in self.replicas if r.cooldown_until > now]
        return min(ends) - now if ends else None

    async def acquire(self, priority: int, order: int) -> int:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters:
                index = self._free_replica(time.monotonic())
                if index is not None:
                    self._take(index)
                    return index
            fut: asyncio.Future[int] = loop.create_future()
            heapq.heappush(self._waiters, (priority, order, next(self._seq), loop, fut))
            self._dispatch_locked()  # a free slot behind cancelled waiters goes out now, by priority
        try:
            while True:
                # Benched replicas come back by the clock, not by a release: wake then and re-dispatch.
                wake = self._next_cooldown_end(time.monotonic())
                done, _ = await asyncio.wait({fut}, timeout=None if wake is None else wake + 0.001)
                if done:
                    return fut.result()
                with self._lock:
                    self._dispatch_locked()
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result(), "other")  # granted as we were cancelled: pass it on
            else:
                fut.cancel()
            raise

    def release(self, index: int, outcome: Outcome) -> None:
        with self._lock:
            r = self.replicas[index]
            r.outstanding -= 1
            if outcome == "ok":
                r.sent += 1
                r.consecutive_failures = 0
            elif outcome == "failed":
                r.consecutive_failures += 1
                # Benching the only replica helps nobody: backoff alone paces retries there.
                if len(self.replicas) > 1 and r.consecutive_failures >= self.failures_before_cooldown:
                    r.cooldown_until = time.monotonic() + self.cooldown_s
                    r.consecutive_failures = 0
                    r.cooldowns += 1
                    log.warning("%s replica %s failed %d times in a row: cooling down %.0fs", self.role, r.url,
                                self.failures_before_cooldown, self.cooldown_s)
            self._dispatch_locked()

    def bench(self, index: int) -> None:
        """Start a replica in cool-down (unreachable at the endpoint check)."""
        with self._lock:
            self.replicas[index].cooldown_until = time.monotonic() + self.cooldown_s

    def cooldowns(self) -> list[int]:
        return [r.cooldowns for r in self.replicas]

    def close(self) -> None:
        """Nothing to return: in one process a request's slot comes back when it ends."""


_shared: dict[tuple, ReplicaScheduler] = {}
_shared_lock = threading.Lock()


def shared_scheduler(scope: str, role: str, urls: list[str], per_replica: int,
                     failures_before_cooldown: int, cooldown_s: float) -> ReplicaScheduler:
    """The process-wide scheduler of one role within `scope` (a build): every shard of the build
    running in this process gets the same instance, so they share the endpoints' capacity."""
    key = (scope, role, tuple(urls), per_replica, failures_before_cooldown, cooldown_s)
    with _shared_lock:
        sched = _shared.get(key)
        if sched is None:
            sched = _shared[key] = ReplicaScheduler(urls, per_replica, failures_before_cooldown, cooldown_s, role)
        return sched
