"""Model client on the openai SDK: bounded, prioritised, retried, cached.

- Concurrency is bounded per endpoint; a free slot goes to the request of the latest stage
  (lower priority number) so samples already deep in the pipeline finish first.
- tenacity retries 429 / 5xx / timeouts / dropped connections with exponential backoff and
  jitter, waiting at least what Retry-After asks. The slot is released while backing off.
- Every successful response is persisted before it is used; identical concurrent requests share
  one call.
"""

from __future__ import annotations

import asyncio
import email.utils
import heapq
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from .config import EndpointConfig
from .records import ChatResult, Usage
from .store import ResponseStore, canonical_messages, request_key

log = logging.getLogger("coldstart.client")
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)


class RequestFailed(Exception):
    """A request that could not be completed; the sample is rejected with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EndpointCheckFailed(Exception):
    pass


class PrioritySlots:
    """A semaphore whose waiters are served by (priority, order), lowest first."""

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


def split_reasoning(content: str, reasoning_field: str | None) -> tuple[str | None, str]:
    """Reasoning from `reasoning_content` (DeepSeek API, vLLM parser) or inline <think>...</think>."""
    if reasoning_field:
        return reasoning_field.strip(), content.strip()
    m = _THINK.match(content)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    if "</think>" in content:  # R1 templates often open <think> in the prompt, so only the close arrives
        head, _, tail = content.partition("</think>")
        return head.replace("<think>", "").strip(), tail.strip()
    return None, content.strip()


def parse_completion(raw: dict[str, Any], key: str, cached: bool, index: int = 0) -> ChatResult:
    choices = raw.get("choices") or [{}]
    choice = choices[index] if index < len(choices) else {}
    message = choice.get("message") or {}
    reasoning_field = message.get("reasoning_content") or message.get("reasoning")
    reasoning, content = split_reasoning(message.get("content") or "", reasoning_field)
    # With n > 1 the server reports one usage for all choices: it is carried by the first.
    usage = (raw.get("usage") or {}) if index == 0 else {}
    return ChatResult(
        content=content,
        reasoning=reasoning,
        finish_reason=choice.get("finish_reason"),
        model=raw.get("model") or "",
        usage=Usage(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            requests=1 if index == 0 else 0,
        ),
        cached=cached,
        request_key=key,
    )


def retry_after_seconds(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return False


@dataclass
class Replica:
    """One server of a role. Requests go to the healthy replica with the fewest outstanding;
    a replica failing `failures_before_cooldown` times in a row sits out `cooldown_s`."""

    url: str
    api: openai.AsyncOpenAI
    outstanding: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    sent: int = 0
    failures: int = 0
    cooldowns: int = 0

    def healthy(self, now: float) -> bool:
        return self.cooldown_until <= now


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
    def __init__(self, cfg: EndpointConfig, role: str, store: ResponseStore | None = None):
        assert cfg.endpoints and cfg.model
        self.cfg = cfg
        self.role = role
        self.model = cfg.model
        self.store = store  # set before the first chat(); check() needs none
        self.replicas = [Replica(url, self._api(url)) for url in cfg.endpoints]
        self.slots = PrioritySlots(cfg.max_concurrency * len(self.replicas))
        self.stats = EndpointStats()
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _api(self, url: str) -> openai.AsyncOpenAI:
        cfg = self.cfg
        return openai.AsyncOpenAI(
            base_url=url,
            # Keys come from the environment only; local vLLM accepts any token.
            api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
            max_retries=0,  # tenacity owns retries, so backoff and slot release are ours
            timeout=cfg.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=cfg.max_concurrency + 8,
                                     max_keepalive_connections=cfg.max_concurrency + 8),
                timeout=cfg.timeout_s,
            ),
        )

    async def _pick(self) -> Replica:
        """The healthy replica with the fewest outstanding requests, never past its own
        max_concurrency; waits while every healthy replica is full or all are cooling down."""
        while True:
            now = time.monotonic()
            healthy = [r for r in self.replicas if r.healthy(now)]
            free = [r for r in healthy if r.outstanding < self.cfg.max_concurrency]
            if free:
                return min(free, key=lambda r: (r.outstanding, r.sent))
            if healthy:  # benched replicas' share of the slots: wait for a healthy one to free up
                await asyncio.sleep(0.01)
            else:
                await asyncio.sleep(max(0.01, min(r.cooldown_until for r in self.replicas) - now))

    def _failed(self, replica: Replica) -> None:
        replica.failures += 1
        replica.consecutive_failures += 1
        # Benching the only replica helps nobody: backoff alone paces retries there.
        if len(self.replicas) > 1 and replica.consecutive_failures >= self.cfg.failures_before_cooldown:
            replica.cooldown_until = time.monotonic() + self.cfg.cooldown_s
            replica.consecutive_failures = 0
            replica.cooldowns += 1
            log.warning("%s replica %s failed %d times in a row: cooling down %.0fs", self.role, replica.url,
                        self.cfg.failures_before_cooldown, self.cfg.cooldown_s)

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
        for replica in self.replicas:
            try:
                models = await replica.api.models.list(timeout=15)
            except openai.APIStatusError as exc:
                raise EndpointCheckFailed(
                    f"{self.role} endpoint {replica.url} answered HTTP {exc.status_code} on /models"
                    + (" (check the API key variable " + self.cfg.api_key_env + ")" if exc.status_code in (401, 403) else "")
                ) from None
            except openai.APIError as exc:
                unreachable.append(f"{self.role} endpoint {replica.url} is unreachable: {exc}")
                replica.cooldown_until = time.monotonic() + self.cfg.cooldown_s
                continue
            ids = [m.id for m in models.data]
            if self.model not in ids:
                raise EndpointCheckFailed(
                    f"{self.role} endpoint {replica.url} does not serve model {self.model!r}; "
                    f"it serves: {', '.join(ids) or '(none)'}"
                )
        if len(unreachable) == len(self.replicas):
            raise EndpointCheckFailed("; ".join(unreachable))
        for message in unreachable:
            log.warning("%s (cooling down; the other replicas carry the load)", message)

    async def chat(
        self, messages: list[dict[str, Any]], *, stage: str, priority: int, order: int,
        image_hashes: dict[str, str] | None = None,
    ) -> ChatResult:
        return (await self.chat_choices(messages, stage=stage, priority=priority, order=order,
                                        image_hashes=image_hashes))[0]

    async def chat_choices(
        self, messages: list[dict[str, Any]], *, stage: str, priority: int, order: int,
        image_hashes: dict[str, str] | None = None, n: int = 1, variant: int = 0,
    ) -> list[ChatResult]:
        """n choices from one request (`n` parameter). `variant` > 0 names an independent repeat of
        the same request (best-of-k where the endpoint has no `n`): part of the key, never sent."""
        params = self.sampling_params()
        if n > 1:
            params["n"] = n
        key_params = {**params, "variant": variant} if variant else params
        assert self.store is not None, "ModelClient.store must be set before chat()"
        key = request_key(self.model, canonical_messages(messages, image_hashes or {}), key_params)
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
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.stats.retries += 1
                    await self.slots.acquire(priority, order)
                    replica = await self._pick()
                    self.stats.in_flight += 1
                    replica.outstanding += 1
                    try:
                        completion = await replica.api.chat.completions.create(
                            model=self.model, messages=messages, **params,
                            extra_headers={"X-Coldstart-Request-Key": key, "X-Coldstart-Stage": stage,
                                       "X-Coldstart-Sample": str(order)},
                        )
                    except BaseException as exc:
                        if is_retryable(exc):
                            self._failed(replica)
                        raise
                    finally:
                        self.stats.in_flight -= 1
                        replica.outstanding -= 1
                        self.slots.release()
                    replica.consecutive_failures = 0
                    replica.sent += 1
                    self.stats.sent += 1
                    return completion.model_dump(mode="json", exclude_unset=False)
        except openai.APIStatusError as exc:
            self.stats.failed += 1
            raise RequestFailed(
                "request_failed" if is_retryable(exc) else "request_rejected",
                f"{self.role} HTTP {exc.status_code}: {str(exc)[:300]}",
            ) from None
        except openai.APIError as exc:
            self.stats.failed += 1
            raise RequestFailed("request_failed", f"{self.role}: {type(exc).__name__}: {str(exc)[:300]}") from None
        raise AssertionError("unreachable")

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        backoff = wait_random_exponential(multiplier=0.5, max=self.cfg.max_backoff_s)(retry_state)
        asked = retry_after_seconds(exc) if exc else None
        return min(self.cfg.max_backoff_s, max(backoff, asked)) if asked is not None else backoff

    def replica_stats(self) -> list[dict[str, Any]]:
        return [{"url": r.url, "sent": r.sent, "failures": r.failures, "cooldowns": r.cooldowns}
                for r in self.replicas]

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.api.close()
