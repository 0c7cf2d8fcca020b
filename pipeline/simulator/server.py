"""The simulated endpoint's HTTP server (aiohttp), runnable in a thread or as `coldstart simulate`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter, deque
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from . import content


class SimConfig(BaseModel):
    role: Literal["vlm", "reasoner"] = "reasoner"
    models: list[str] = Field(default_factory=lambda: ["sim-model"])
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer <key>"
    slots: int = Field(8, ge=1)  # concurrent generations (vLLM max_num_seqs); the rest queue
    ttft_s: float = 0.0
    per_token_s: float = 0.0
    # Output length in tokens ~ lognormal(mu, sigma), clipped; long-tailed like real generations.
    length_mu: float | None = None
    length_sigma: float = 0.6
    min_tokens: int = 8
    max_len_tokens: int = 100_000
    p429: float = 0.0
    p500: float = 0.0
    pdrop: float = 0.0  # the connection drops halfway through the generation
    pstall: float = 0.0  # a stream goes silent halfway for stall_s (a hung server or network)
    stall_s: float = 5.0
    perror: float = 0.0  # a stream ends halfway with an error event, as vLLM reports engine errors
    error_code: int = 500  # the code in that event
    retry_after_s: float = 0.05
    max_faults_per_key: int = 3  # faults injected per distinct request, so retries eventually succeed
    wrong_rate: float = 0.0  # share of questions the simulated reasoner answers wrongly
    leak_rate: float = 0.0  # share of descriptions that announce the answer (until asked not to)
    judge_invalid_rate: float = 0.0  # share of traces the simulated judge calls INVALID
    reasoning_mode: Literal["field", "inline"] = "field"
    fault_seed: int = 0
    keep_prompts: int = 2000

    def default_mu(self, kind: str) -> float:
        if self.length_mu is not None:
            return self.length_mu
        return {"pseudo_cot": math.log(120), "description": math.log(200), "reasoning": math.log(600),
                "judge": math.log(60), "answer_judge": math.log(20), "rewrite": math.log(600)}[kind]


def _texts_and_images(messages: list[dict[str, Any]]) -> tuple[str, int]:
    texts, images = [], 0
    for msg in messages:
        c = msg.get("content")
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):
            for part in c:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") in ("image_url", "image"):
                    images += 1
    return "\n".join(texts), images


def _tokens(text: str) -> list[str]:
    """Word-sized tokens whose concatenation is exactly `text`."""
    return re.findall(r"\s*\S+|\s+$", text)


class SimServer:
    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimConfig()
        self.host, self.port = host, port
        self._fault_rng = random.Random(self.config.fault_seed)
        self._reset_stats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._slots: asyncio.Semaphore | None = None

    # ---- stats -------------------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self.requests = 0
        self.status_counts: Counter = Counter()
        self.completed_by_key: Counter = Counter()
        self.faults_by_key: Counter = Counter()
        self.service: list[dict[str, Any]] = []
        self.prompts: deque = deque(maxlen=self.config.keep_prompts)
        self.active = 0
        self.max_active = 0
        self.t0 = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {
            "role": self.config.role,
            "requests": self.requests,
            "status_counts": {str(k): v for k, v in self.status_counts.items()},
            "completed": sum(self.completed_by_key.values()),
            "duplicates": sum(v - 1 for v in self.completed_by_key.values() if v > 1),
            "completed_by_key": dict(self.completed_by_key),
            "max_active": self.max_active,
            "slots": self.config.slots,
            "service": list(self.service),
        }

    # ---- app ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_get("/sim/prompts", self._prompts)
        app.router.add_post("/sim/reset", self._reset)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _prompts(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.prompts))

    async def _reset(self, request: web.Request) -> web.Response:
        self._reset_stats()
        return web.json_response({"ok": True})

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.config.api_key and request.headers.get("Authorization") != f"Bearer {self.config.api_key}":
            return web.json_response({"error": {"message": "Invalid API key", "type": "invalid_request_error"}}, status=401)
        return None

    async def _models(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "coldstart-simulator"} for m in self.config.models
        ]})

    def _fault(self, key: str) -> str | None:
        cfg = self.config
        if self.faults_by_key[key] >= cfg.max_faults_per_key:
            return None
        x = self._fault_rng.random()
        for name, p in (("429", cfg.p429), ("500", cfg.p500), ("drop", cfg.pdrop), ("stall", cfg.pstall),
                        ("error", cfg.perror)):
            if x < p:
                self.faults_by_key[key] += 1
                return name
            x -= p
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if (err := self._auth_error(request)) is not None:
            self.status_counts[401] += 1
            return err
        body = await request.json()
        model = body.get("model")
        if model not in self.config.models:
            self.status_counts[404] += 1
            return web.json_response({"error": {"message": f"The model `{model}` does not exist.",
                                                "type": "NotFoundError", "code": 404}}, status=404)
        messages = body.get("messages") or []
        key = request.headers.get("X-Coldstart-Request-Key") or hashlib.sha256(
            json.dumps(body, sort_keys=True).encode()).hexdigest()
        stage = request.headers.get("X-Coldstart-Stage", "")
        sample = request.headers.get("X-Coldstart-Sample", "")
        fault = self._fault(key)
        if fault == "429":
            self.status_counts[429] += 1
            return web.json_response({"error": {"message": "Rate limit reached (simulated)", "type": "rate_limit"}},
                                     status=429, headers={"Retry-After": f"{self.config.retry_after_s:g}"})
        if fault == "500":
            self.status_counts[500] += 1
            return web.json_response({"error": {"message": "Internal error (simulated)"}}, status=500)

        text, n_images = _texts_and_images(messages)
        self.prompts.append({"key": key, "stage": stage, "text": text, "images": n_images})
        queued = time.monotonic()
        assert self._slots is not None
        streamed = bool(body.get("stream"))
        async with self._slots:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            start = time.monotonic()
            try:
                payload, n_tokens = self._complete(body, text, n_images, key)
                if streamed:
                    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    resp = await self._stream(request, payload, fault, include_usage)
                    if resp is None:  # dropped
                        return web.Response(status=500)
                else:
                    service = self.config.ttft_s + n_tokens * self.config.per_token_s
                    if fault in ("drop", "stall", "error"):
                        await asyncio.sleep(service / 2)  # work done, then lost with the connection
                        self.status_counts["drop"] += 1
                        assert request.transport is not None
                        request.transport.close()
                        return web.Response(status=500)
                    await asyncio.sleep(service)
            finally:
                self.active -= 1
        end = time.monotonic()
        self.completed_by_key[key] += 1
        self.status_counts[200] += 1
        self.service.append({"key": key, "stage": stage, "sample": sample, "queued": queued - self.t0,
                             "start": start - self.t0, "end": end - self.t0, "tokens": n_tokens})
        return resp if streamed else web.json_response(payload)

    async def _stream(self, request: web.Request, payload: dict[str, Any], fault: str | None,
                      include_usage: bool) -> web.StreamResponse | None:
        """Server-sent events as vLLM's OpenAI server writes them: a role delta per choice, one
        chunk per token (`reasoning_content` then `content`), a finish chunk per choice, a usage
        chunk with no choices when asked for, then `data: [DONE]`. Choices interleave token by token.
        Faults strike halfway: "drop" closes the connection, "stall" goes silent for stall_s."""
        cfg = self.config
        head = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"],
                "model": payload["model"]}
        streams: list[list[tuple[str, str]]] = []
        for choice in payload["choices"]:
            msg = choice["message"]
            toks = [("reasoning_content", t) for t in _tokens(msg.get("reasoning_content") or "")]
            toks += [("content", t) for t in _tokens(msg.get("content") or "")]
            streams.append(toks)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({**head, "choices": choices, **extra}).encode() + b"\n\n"

        if cfg.ttft_s:
            await asyncio.sleep(cfg.ttft_s)
        await resp.write(b"".join(event([{"index": c["index"], "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]) for c in payload["choices"]))
        steps = max((len(t) for t in streams), default=0)
        t_first = time.monotonic()
        for k in range(steps):
            if k == steps // 2 and fault == "drop":
                self.status_counts["drop"] += 1
                assert request.transport is not None
                request.transport.close()
                return None
            if k == steps // 2 and fault == "error":
                self.status_counts["error"] += 1
                err = {"error": {"message": "EngineCore encountered an issue (simulated)",
                                 "type": "InternalServerError" if cfg.error_code >= 500 else "BadRequestError",
                                 "param": None, "code": cfg.error_code}}
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n")
                await resp.write_eof()
                return None
            if k == steps // 2 and fault == "stall":
                self.status_counts["stall"] += 1
                await asyncio.sleep(cfg.stall_s)
            out = [event([{"index": i, "delta": {field: tok}, "logprobs": None, "finish_reason": None}])
                   for i, toks in enumerate(streams) if k < len(toks) for field, tok in (toks[k],)]
            await resp.write(b"".join(out))
            if cfg.per_token_s:
                lag = t_first + (k + 1) * cfg.per_token_s - time.monotonic()
                if lag > 0.001:
                    await asyncio.sleep(lag)
        tail = [event([{"index": c["index"], "delta": {"content": ""}, "logprobs": None,
                        "finish_reason": c["finish_reason"], "stop_reason": None}]) for c in payload["choices"]]
        if include_usage:
            tail.append(event([], usage=payload["usage"]))
        tail.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(tail))
        await resp.write_eof()
        return resp

    def _complete(self, body: dict[str, Any], text: str, n_images: int, key: str) -> tuple[dict[str, Any], int]:
        cfg = self.config
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
        n = int(body.get("n") or 1)
        if cfg.role == "vlm":
            if "VERDICT: SAME" in text:
                kind = "answer_judge"
            elif "VERDICT:" in text:
                kind = "judge"
            elif "<reasoning>" in text:
                kind = "rewrite"
            else:
                kind = "pseudo_cot" if "Correct answer:" in text else "description"
        else:
            kind = "reasoning"
        choices, total_tokens = [], 0
        for i in range(n):
            rng = content.rng_for(key, str(i))
            want = max(cfg.min_tokens, min(cfg.max_len_tokens, int(rng.lognormvariate(cfg.default_mu(kind), cfg.length_sigma))))
            reasoning_text = None
            if kind == "pseudo_cot":
                out = content.pseudo_cot(text, want, rng)
            elif kind == "description":
                out = content.description(text, want, rng, cfg.leak_rate)
            elif kind == "judge":
                out = content.judge(text, cfg.judge_invalid_rate)
            elif kind == "answer_judge":
                out = content.answer_judge(text)
            elif kind == "rewrite":
                out = content.llm_rewrite(text)
            else:
                think, final = content.reasoning(text, want, rng, cfg.wrong_rate, f"{key}:{i}")
                reasoning_text, out = think, final
            words = ((reasoning_text or "") + " " + out).split()
            finish = "stop"
            if len(words) > max_tokens:
                finish = "length"
                cut = " ".join(words[:max_tokens])
                reasoning_text, out = (cut, "") if kind == "reasoning" else (None, cut)
                words = words[:max_tokens]
            message: dict[str, Any] = {"role": "assistant", "content": out}
            if kind == "reasoning":
                if cfg.reasoning_mode == "field":
                    message["reasoning_content"] = reasoning_text
                else:
                    closing = "\n</think>\n\n" if finish == "stop" else ""
                    message["content"] = f"<think>\n{reasoning_text}{closing}{out}"
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
            total_tokens += len(words)
        prompt_tokens = len(text.split()) + 256 * n_images
        return {
            "id": f"chatcmpl-sim-{key[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": total_tokens,
                      "total_tokens": prompt_tokens + total_tokens},
        }, total_tokens

    # ---- lifecycle ---------------------------------------------------------------------------
    async def _start(self) -> None:
        self._slots = asyncio.Semaphore(self.config.slots)
        # Like vLLM, abort a request whose client went away instead of finishing it for nobody.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "SimServer":
        """Serve from a background thread with its own event loop; returns once listening."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as exc:  # surface bind errors to the caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"sim-{self.config.role}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        async def main() -> None:
            await self._start()
            await asyncio.Event().wait()

        asyncio.run(main())
