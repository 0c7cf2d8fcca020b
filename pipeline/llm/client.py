"""The model client: one object per role that stages call. It ties the parts together:

- cache: a response already stored is never requested again; identical concurrent requests
  share one call; every response is persisted before anyone uses it.
- scheduling: a free slot goes to the request of the latest stage, on the least-loaded healthy
  replica (shared with the other shards of a build when one is passed in).
- transport: one streamed request, cut only after `idle_timeout_s` of silence.
- tenacity retries 429 / 5xx / idle / dropped streams with exponential backoff and jitter,
  waiting at least what Retry-After asks; the slot is released while backing off.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from ..config import EndpointConfig
from ..records import ChatResult, Usage
from .cache import ResponseStore, canonical_messages, request_key
from .completion import parse_completion
from .scheduling import ReplicaScheduler, Scheduler
from .errors import RequestError, StatusError, StreamError, is_retryable, retry_after_seconds
from .transport import Connection, stream_chat

log = logging.getLogger("coldstart.client")


class RequestFailed(Exception):
    """A request that could not be completed; the sample is rejected with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EndpointCheckFailed(Exception):
    pass


@dataclass
class Replica:
    """One server of a role as this client sees it: its connection and this client's counts."""

    url: str
    conn: Connection
    sent: int = 0
    failures: int = 0


@dataclass
class EndpointStats:
    in_flight: int = 0
    sent: int = 0
    retries: int = 0
    cached: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    usage_by_stage: dict[str, Usage] = field(default_factory=dict)


class ModelClient:
    def __init__(self, cfg: EndpointConfig, role: str, store: ResponseStore | None = None,
                 scheduler: Scheduler | None = None):
        assert cfg.endpoints and cfg.model
        self.cfg = cfg
        self.role = role
        self.model = cfg.model
        self.store = store  # set before the first chat(); check() needs none
        self.replicas = [Replica(url, Connection(url, cfg)) for url in cfg.endpoints]
        self.scheduler: Scheduler = scheduler or ReplicaScheduler(
            cfg.endpoints, cfg.max_concurrency, cfg.failures_before_cooldown, cfg.cooldown_s, role)
        self.stats = EndpointStats()
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def sampling_params(self) -> dict[str, Any]:
        s = self.cfg.sampling
        params: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.seed is not None:
            params["seed"] = s.seed
        return params

    async def check(self) -> None:
        """Fail fast: every replica answers /v1/models and serves the configured model. With several
        replicas, unreachable ones start in cool-down as long as one is up."""
        unreachable: list[str] = []
        for i, replica in enumerate(self.replicas):
            try:
                ids = await replica.conn.model_ids(timeout_s=15)
            except StatusError as exc:
                raise EndpointCheckFailed(
                    f"{self.role} endpoint {replica.url} answered HTTP {exc.status_code} on /models"
                    + (" (check the API key variable " + self.cfg.api_key_env + ")" if exc.status_code in (401, 403) else "")
                ) from None
            except RequestError as exc:
                unreachable.append(f"{self.role} endpoint {replica.url} is unreachable: {exc}")
                self.scheduler.bench(i)
                continue
            if self.model not in ids:
                raise EndpointCheckFailed(
                    f"{self.role} endpoint {replica.url} does not serve model {self.model!r}; "
                    f"it serves: {', '.join(ids) or '(none)'}"
                )
        if len(unreachable) == len(self.replicas):
            raise EndpointCheckFailed("; ".join(unreachable))
        for message in unreachable:
            log.warning("%s (cooling down; the other replicas carry the load)", message)

    async def chat(self, messages: list[dict[str, Any]], *, stage: str, priority: int, order: int) -> ChatResult:
        return (await self.chat_choices(messages, stage=stage, priority=priority, order=order))[0]

    async def chat_choices(
        self, messages: list[dict[str, Any]], *, stage: str, priority: int, order: int, n: int = 1, variant: int = 0,
    ) -> list[ChatResult]:
        """n choices from one request (`n` parameter). `variant` > 0 names an independent repeat of
        the same request (best-of-k where the endpoint has no `n`): part of the key, never sent."""
        params = self.sampling_params()
        if n > 1:
            params["n"] = n
        key_params = {**params, "variant": variant} if variant else params
        assert self.store is not None, "ModelClient.store must be set before chat()"
        key = request_key(self.model, canonical_messages(messages), key_params)
        stored = self.store.get(key)
        if stored is not None:
            self.stats.cached += 1
            raw, cached = stored, True
        else:
            if key in self._inflight:  # the same request already on the wire: share it, pay once
                raw = await asyncio.shield(self._inflight[key])
            else:
                fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self._inflight[key] = fut
                try:
                    raw = await self._send(messages, params, key, stage, priority, order)
                    self.store.put(key, self.model, stage, raw)  # persisted before anyone uses it
                    fut.set_result(raw)
                except BaseException as exc:
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: sharers may be absent
                    raise
                finally:
                    del self._inflight[key]
            cached = False
        results = [parse_completion(raw, key, cached, i) for i in range(max(1, len(raw.get("choices") or [])))]
        for result in results:
            self.stats.usage.add(result.usage)
            self.stats.usage_by_stage.setdefault(stage, Usage()).add(result.usage)
        return results

    async def _send(self, messages, params, key, stage, priority, order) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        headers = {"X-Coldstart-Request-Key": key, "X-Coldstart-Stage": stage, "X-Coldstart-Sample": str(order)}
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.stats.retries += 1
                    index = await self.scheduler.acquire(priority, order)
                    replica = self.replicas[index]
                    self.stats.in_flight += 1
                    outcome = "other"
                    try:
                        raw = await stream_chat(replica.conn, model=self.model, messages=messages, params=params,
                                                headers=headers)
                        outcome = "ok"
                    except BaseException as exc:
                        if is_retryable(exc):
                            outcome = "failed"
                            replica.failures += 1
                        raise
                    finally:
                        self.stats.in_flight -= 1
                        self.scheduler.release(index, outcome)  # free while backing off
                    replica.sent += 1
                    self.stats.sent += 1
                    return raw
        except (StatusError, StreamError) as exc:
            self.stats.failed += 1
            raise RequestFailed(
                "request_failed" if is_retryable(exc) else "request_rejected",
                f"{self.role} HTTP {exc.status_code}: {str(exc)[:300]}",
            ) from None
        except RequestError as exc:
            self.stats.failed += 1
            raise RequestFailed("request_failed", f"{self.role}: {type(exc).__name__}: {str(exc)[:300]}") from None
        finally:
            # tenacity keeps the run's state on the retrying object (the call state, which points
            # back at it, statistics, the iteration's actions): ~40 objects in reference cycles per
            # request, left to the cyclic GC, whose pauses then stalled the loop ~0.2 s at a time on
            # 1,200-sample runs. The object is ours and used up: emptying it frees them at once.
            retrying.__dict__.clear()
        raise AssertionError("unreachable")

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        backoff = wait_random_exponential(multiplier=0.5, max=self.cfg.max_backoff_s)(retry_state)
        asked = retry_after_seconds(exc) if exc else None
        return min(self.cfg.max_backoff_s, max(backoff, asked)) if asked is not None else backoff

    def replica_stats(self) -> list[dict[str, Any]]:
        cooldowns = self.scheduler.cooldowns()
        return [{"url": r.url, "sent": r.sent, "failures": r.failures, "cooldowns": cooldowns[i]}
                for i, r in enumerate(self.replicas)]

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.conn.close()
