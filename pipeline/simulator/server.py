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

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from .. import eventloop
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
    # Tokens per streamed event, as vLLM's `--stream-interval N` (engine argument, SchedulerConfig,
    # default 1): each choice's tokens are buffered and sent as one event of their concatenated text
    # every N tokens; the first token goes out at once and the rest when the choice ends. See _Gen.
    stream_interval: int = Field(1, ge=1)
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


_SUFFIX = b"]}\n\n"


class _Gen:
    """One streamed request inside the engine: its choices' tokens, how far they have got, and the
    encoded events its handler has yet to write.

    Token k of every choice is due at t_first + k * per_token_s (t_first = admission + ttft_s); the
    finish chunks, usage and [DONE] at t_first + steps * per_token_s, so a request holds its slot
    for ttft_s + tokens * per_token_s as before. What is due is worked out from the clock, not
    counted in steps, so an engine step that runs late sends everything due at once and a loaded
    simulator does not stretch the service times it records.

    Events follow vLLM's `--stream-interval N`, read in vLLM's own source (PR #27869, first in the
    v0.11.1 release, built from commit 439368496 per its vllm/_version.py; v0.11.0 lacks it): vllm/config/scheduler.py `SchedulerConfig.stream_interval:
    int = Field(default=1, ge=1)`, "--stream-interval" in vllm/engine/arg_utils.py, and
    `RequestState.make_request_output` in vllm/v1/engine/output_processor.py, which sends a
    request's output only when it has finished, when it is the first token (sent_tokens_offset ==
    0), or when N tokens have piled up since the last send, and then sends all the tokens from that
    offset (their detokenized text as one delta). Each of the n choices is its own request there,
    so each choice is buffered on its own: its tokens go out at index 0, N, 2N, ... and at its last
    token. vllm/entrypoints/openai/serving_chat.py makes one chunk of each such output; with a
    reasoning parser (vllm/reasoning/basic_parsers.py, deepseek_r1_reasoning_parser.py) a delta that
    crosses </think> becomes one DeltaMessage with both the reasoning and the content, so one event
    here can carry `reasoning_content` and then `content`. (vLLM puts a choice's last text in its
    finish chunk; here, as before, the finish chunk is a separate empty delta.)"""

    __slots__ = ("server", "payload", "fault", "include_usage", "prefix", "choices", "interval", "steps",
                 "per_token_s", "fault_at", "t_first", "due", "k", "sent", "started", "out", "wake", "state", "sink")

    def __init__(self, server: "SimServer", payload: dict[str, Any], fault: str | None, include_usage: bool):
        cfg = server.config
        self.server, self.payload, self.fault, self.include_usage = server, payload, fault, include_usage
        head = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"],
                "model": payload["model"]}
        self.prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":['
        self.choices: list[tuple[list[str], int]] = []  # (tokens, how many of them are reasoning)
        for choice in payload["choices"]:
            msg = choice["message"]
            think = _tokens(msg.get("reasoning_content") or "")
            self.choices.append((think + _tokens(msg.get("content") or ""), len(think)))
        self.interval = cfg.stream_interval
        self.per_token_s = cfg.per_token_s
        self.steps = max((len(t) for t, _ in self.choices), default=0)
        self.fault_at = self.steps // 2 if fault in ("drop", "stall", "error") and self.steps else -1
        self.t_first = self.due = 0.0
        self.k = 0  # tokens produced so far, per choice (choices advance together, one token a step)
        self.sent = [0] * len(self.choices)  # per choice: tokens already sent
        self.started = False
        self.out: list[bytes] = []
        self.wake = asyncio.Event()
        self.state: str | None = None  # "done" | "drop" | "error" once the engine is through with it
        # Once the handler has sent the headers: writes token events straight to the connection, so
        # the engine does not wake the handler's task for each (the simulators share the benchmark's
        # CPUs with the client). The end, faults and errors still go through the handler.
        self.sink: Any = None

    def start(self, now: float) -> None:
        self.t_first = self.due = now + self.server.config.ttft_s

    def _event(self, choice: dict[str, Any]) -> bytes:
        return self.prefix + orjson.dumps(choice) + _SUFFIX

    def _next_flush(self, k: int) -> int:
        """The first token index >= k at which some choice sends (assumes k < steps)."""
        n = self.interval
        nxt = -(-k // n) * n
        if nxt >= self.steps:
            nxt = self.steps
        for toks, _ in self.choices:
            last = len(toks) - 1
            if k <= last < nxt:
                nxt = last
        return nxt

    def _emit_until(self, limit: int) -> None:
        """Send, choice by choice in token order, every batch that closes before token `limit`."""
        k, n, out = self.k, self.interval, self.out
        while k < limit:
            p = self._next_flush(k)
            if p >= limit:
                break
            for i, (toks, think) in enumerate(self.choices):
                if p < len(toks) and (p % n == 0 or p == len(toks) - 1):
                    a, e = self.sent[i], p + 1
                    delta = {}
                    if a < think:
                        delta["reasoning_content"] = "".join(toks[a:min(e, think)])
                    if e > think:
                        delta["content"] = "".join(toks[max(a, think):e])
                    self.sent[i] = e
                    out.append(self._event({"index": i, "delta": delta, "logprobs": None, "finish_reason": None}))
            k = p + 1
        self.k = max(self.k, limit)

    def advance(self, now: float) -> None:
        """Produce everything due by `now`; set `due` to when something is next due."""
        server, cfg, out = self.server, self.server.config, self.out
        if not self.started:
            out.append(b"".join(self._event({"index": c["index"], "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None})
                                for c in self.payload["choices"]))
            self.started = True
        pts = self.per_token_s
        while True:
            if now < self.t_first:
                due_n = 0
            elif pts:
                due_n = min(self.steps, int((now - self.t_first) / pts + 1e-9) + 1)
            else:
                due_n = self.steps
            fault_hit = 0 <= self.fault_at < due_n
            self._emit_until(self.fault_at if fault_hit else due_n)
            if not fault_hit:
                break
            self.fault_at = -1
            if self.fault == "stall":  # silent for stall_s, then on as before
                server.status_counts["stall"] += 1
                self.t_first += cfg.stall_s
                continue
            if self.fault == "drop":
                server.status_counts["drop"] += 1
                self.state = "drop"
            else:
                server.status_counts["error"] += 1
                err = {"error": {"message": "EngineCore encountered an issue (simulated)",
                                 "type": "InternalServerError" if cfg.error_code >= 500 else "BadRequestError",
                                 "param": None, "code": cfg.error_code}}
                out.append(b"data: " + orjson.dumps(err) + b"\n\ndata: [DONE]\n\n")
                self.state = "error"
            self.wake.set()
            return
        if self.k >= self.steps:
            end = self.t_first + self.steps * pts
            if now >= end:
                tail = [self._event({"index": c["index"], "delta": {"content": ""}, "logprobs": None,
                                     "finish_reason": c["finish_reason"], "stop_reason": None})
                        for c in self.payload["choices"]]
                if self.include_usage:
                    tail.append(self.prefix + b'],"usage":' + orjson.dumps(self.payload["usage"]) + b"}\n\n")
                tail.append(b"data: [DONE]\n\n")
                out.append(b"".join(tail))
                self.state = "done"
            else:
                self.due = end
        else:
            nxt = self._next_flush(self.k)
            if 0 <= self.fault_at < nxt:
                nxt = self.fault_at
            self.due = self.t_first + nxt * pts
        if out and self.state is None and self.sink is not None:
            self.sink(b"".join(out))
            out.clear()
        elif out or self.state is not None:
            self.wake.set()


class _Engine:
    """One decode loop per server, like vLLM's continuous batching: a step produces what is due for
    every active stream and wakes only the handlers that have events to write, instead of a timer
    per stream per token. Steps come no closer together than per_token_s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_token_s: float):
        self.loop, self.per_token_s = loop, per_token_s
        self.gens: dict[_Gen, None] = {}  # insertion-ordered set
        self.handle: asyncio.TimerHandle | None = None
        self.when = 0.0
        self.last = float("-inf")

    def add(self, gen: _Gen) -> None:
        gen.start(self.loop.time())
        self.gens[gen] = None
        self._schedule(gen.due)

    def discard(self, gen: _Gen) -> None:
        self.gens.pop(gen, None)
        if not self.gens and self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _schedule(self, when: float) -> None:
        when = max(when, self.last + self.per_token_s)
        if self.handle is not None:
            if self.when <= when:
                return
            self.handle.cancel()
        self.when = when
        self.handle = self.loop.call_at(when, self._step)

    def _step(self) -> None:
        self.handle = None
        # The loop runs a timer up to its clock resolution early: count it as on time.
        now = max(self.loop.time(), self.when)
        self.last = now
        nxt = float("inf")
        for gen in list(self.gens):
            if gen.due <= now:
                try:
                    gen.advance(now)
                except Exception:  # never stop the engine for one stream: cut that one
                    gen.state = "drop"
                    gen.wake.set()
            if gen.state is not None:
                del self.gens[gen]
            elif gen.due < nxt:
                nxt = gen.due
        if self.gens:
            self._schedule(nxt)


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
        self._engine: _Engine | None = None

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
            "t0_monotonic": self.t0,  # service start/end are seconds after this (time.monotonic)
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
        # A VLM request holds a 0.5 MB base64 image: parsed from the bytes (request.json() first
        # decodes them into a str: ~10% of a VLM simulator's CPU on 512x512 PNG requests, py-spy).
        try:
            body = orjson.loads(await request.read())
        except ValueError as exc:  # vLLM answers a body that is not JSON with a 400
            self.status_counts[400] += 1
            return web.json_response({"error": {"message": f"JSON decode error: {exc}", "type": "BadRequestError",
                                                "code": 400}}, status=400)
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

                    def finished() -> None:
                        # Counted before the last bytes go out: a client that has read them may ask
                        # for the stats at once (from another thread).
                        self._record(key, stage, sample, queued, start, n_tokens)
                    resp = await self._stream(request, payload, fault, include_usage, finished)
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
        if streamed:
            return resp
        self._record(key, stage, sample, queued, start, n_tokens)
        return web.json_response(payload)

    def _record(self, key: str, stage: str, sample: str, queued: float, start: float, n_tokens: int) -> None:
        self.completed_by_key[key] += 1
        self.status_counts[200] += 1
        self.service.append({"key": key, "stage": stage, "sample": sample, "queued": queued - self.t0,
                             "start": start - self.t0, "end": time.monotonic() - self.t0, "tokens": n_tokens})

    async def _stream(self, request: web.Request, payload: dict[str, Any], fault: str | None,
                      include_usage: bool, finished: Any) -> web.StreamResponse | None:
        """Server-sent events as vLLM's OpenAI server writes them: a role delta per choice, token
        deltas (`reasoning_content` then `content`, `stream_interval` tokens to an event), a finish
        chunk per choice, a usage chunk with no choices when asked for, then `data: [DONE]`. Choices
        interleave. The engine (_Engine) decides what is due and when; this handler only writes it.
        Faults strike halfway: "drop" closes the connection, "stall" goes silent for stall_s,
        "error" sends an error event."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()  # the sink below writes chunks of its own
        await resp.prepare(request)
        assert self._engine is not None and request.transport is not None
        transport = request.transport
        gen = _Gen(self, payload, fault, include_usage)

        def sink(data: bytes) -> None:
            if not transport.is_closing():
                transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        self._engine.add(gen)
        try:
            out = gen.out
            while True:
                if out:
                    data = b"".join(out)
                    out.clear()
                    if gen.state == "done" and finished is not None:
                        finished()
                        finished = None
                    await resp.write(data)  # the first write sends the headers too
                    if gen.state is None:
                        gen.sink = sink
                    continue
                if gen.state is not None:
                    break
                gen.wake.clear()
                await gen.wake.wait()
        finally:  # also when aiohttp cancels the handler because the client went away
            gen.sink = None
            self._engine.discard(gen)
        if gen.state == "drop":
            assert request.transport is not None
            request.transport.close()
            return None
        await resp.write_eof()
        return None if gen.state == "error" else resp

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
        self._engine = _Engine(asyncio.get_running_loop(), self.config.per_token_s)
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

        # uvloop where installed, as the converter: the simulators share the benchmark's machine with
        # the client (replicas beside a busy core: 17.4-18.6 s of their CPU per run on asyncio's
        # selector loop, 16.3-17.2 s on uvloop).
        eventloop.run(main())
