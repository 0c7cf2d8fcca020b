"""VerifierPool: math-verify in worker processes with a hard timeout, for async and blocking callers.

Each worker is `python -m pipeline.verify.worker` (a plain subprocess, not multiprocessing: nothing of
the parent's __main__ is re-imported, so it works the same under the CLI, pytest, Prefect and Ray, where
each shard process owns its pool). A check that runs past `timeout_s` gets its worker killed and
replaced, and returns the state "timeout". Workers die with the parent process (see worker.py).

The rules (extraction, letters, numbers, units) run in the caller: they are cheap string work. Only
the MathQuery that compare.py hands back crosses to a worker.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..records import Option
from .compare import MathState, Verdict, plan_agree, plan_check, resolve

log = logging.getLogger("coldstart")
_ROOT = str(Path(__file__).resolve().parents[2])


class _WorkerDied(Exception):
    pass


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.verify.worker", str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.out_fd = self.proc.stdout.fileno()
        self.in_fd = self.proc.stdin.fileno()
        os.set_blocking(self.out_fd, False)
        self.buf = b""
        self.ready = False
        self.next_id = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def take_line(self) -> bytes | None:
        if b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            return line
        return None

    def read_some(self) -> None:
        try:
            data = os.read(self.out_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            raise _WorkerDied(f"verifier worker {self.pid} exited (rc={self.proc.poll()})")
        self.buf += data

    def request(self, gold: str, pred: str) -> tuple[int, bytes]:
        self.next_id += 1
        return self.next_id, json.dumps({"id": self.next_id, "gold": gold, "pred": pred}).encode() + b"\n"

    def send(self, payload: bytes) -> None:
        try:
            os.write(self.in_fd, payload)
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerDied(str(exc)) from exc

    def kill(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class VerifierPool:
    """`await pool.check(final_text, reasoning, gold, options)` -> Verdict; `close()` when done.

    Use it from one event loop (async methods) or from plain threads (the *_sync methods), not both.
    """

    def __init__(self, workers: int = 1, timeout_s: float = 10.0, start_timeout_s: float = 120.0,
                 lazy: bool = False):
        """`lazy`: start each worker when a check first needs it (a run whose answers are all
        letters or plain numbers never pays math-verify's start, ~0.6 s of CPU and ~58 MB)."""
        if workers < 1:
            raise ValueError("a verifier pool needs at least one worker")
        self.size, self.timeout_s, self.start_timeout_s = workers, timeout_s, start_timeout_s
        self._idle: collections.deque[_Worker] = collections.deque(
            () if lazy else (_Worker() for _ in range(workers)))
        self._all: set[_Worker] = set(self._idle)
        self._lock = threading.Lock()
        self._tsem = threading.BoundedSemaphore(workers)
        self._asem: asyncio.Semaphore | None = None
        self.closed = False
        self.stats = {"checks": 0, "timeouts": 0, "restarts": 0}

    # --- public API ------------------------------------------------------------------------------
    async def check(self, final_text: str, reasoning: str | None, gold: str, options: list[Option]) -> Verdict:
        plan = plan_check(final_text, reasoning, gold, options)
        if isinstance(plan, Verdict):
            return plan
        return resolve(plan, await self.math(plan.gold, plan.pred))

    async def agree(self, stated: str, pred: str, options: list[Option]) -> Verdict:
        plan = plan_agree(stated, pred, options)
        if isinstance(plan, Verdict):
            return plan
        return resolve(plan, await self.math(plan.gold, plan.pred))

    async def math(self, gold: str, pred: str) -> MathState:
        if self._asem is None:
            self._asem = asyncio.Semaphore(self.size)
        async with self._asem:
            return await self._with_worker_async(gold, pred)

    def math_sync(self, gold: str, pred: str) -> MathState:
        with self._tsem:
            w = self._take()
            for attempt in (1, 2):
                try:
                    state = self._roundtrip_sync(w, gold, pred)
                    self._give(w)
                    return state
                except TimeoutError:
                    self._replace(w, timed_out=True)
                    return "timeout"
                except _WorkerDied:
                    w = self._replace(w, timed_out=False, keep=True)
            self._give(w)
            return "error"

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._all)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            workers, self._all, self._idle = list(self._all), set(), collections.deque()
        for w in workers:
            w.kill()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------------
    def _take(self) -> _Worker:
        with self._lock:
            if self.closed:
                raise RuntimeError("the verifier pool is closed")
            if self._idle:
                return self._idle.popleft()
            w = _Worker()  # a lazy pool's first use, or sync and async callers sharing a pool
            self._all.add(w)
            return w

    def _give(self, w: _Worker) -> None:
        with self._lock:
            if self.closed:
                w.kill()
            elif w in self._all:
                self._idle.append(w)

    def _replace(self, w: _Worker, timed_out: bool, keep: bool = False) -> _Worker:
        """Kill a stuck or dead worker and start a fresh one (returned when `keep`, else made idle)."""
        w.kill()
        self.stats["timeouts" if timed_out else "restarts"] += 1
        if timed_out:
            log.warning("math-verify check ran past %.1fs: worker %d killed and replaced", self.timeout_s, w.pid)
        with self._lock:
            self._all.discard(w)
            if self.closed:
                raise RuntimeError("the verifier pool is closed")
            fresh = _Worker()
            self._all.add(fresh)
        if not keep:
            self._give(fresh)
        return fresh

    def _wait_line_sync(self, w: _Worker, deadline: float) -> bytes:
        while (line := w.take_line()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([w.out_fd], [], [], left)
            if ready:
                w.read_some()
        return line

    def _roundtrip_sync(self, w: _Worker, gold: str, pred: str) -> MathState:
        if not w.ready:
            try:
                self._wait_line_sync(w, time.monotonic() + self.start_timeout_s)
            except TimeoutError:
                raise _WorkerDied(f"verifier worker {w.pid} did not start in {self.start_timeout_s}s") from None
            w.ready = True
        rid, payload = w.request(gold, pred)
        w.send(payload)
        self.stats["checks"] += 1
        return self._parse(self._wait_line_sync(w, time.monotonic() + self.timeout_s), rid)

    @staticmethod
    def _parse(line: bytes, rid: int) -> MathState:
        msg = json.loads(line)
        if msg.get("id") != rid:
            raise _WorkerDied(f"out-of-order reply {msg!r}")
        return msg["state"]

    async def _wait_line_async(self, w: _Worker, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if fut.done():
                return
            try:
                w.read_some()
            except _WorkerDied as exc:
                fut.set_exception(exc)
                return
            if (line := w.take_line()) is not None:
                fut.set_result(line)

        if (line := w.take_line()) is not None:
            return line
        loop.add_reader(w.out_fd, readable)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            loop.remove_reader(w.out_fd)

    async def _roundtrip_async(self, w: _Worker, gold: str, pred: str) -> MathState:
        if not w.ready:
            try:
                await self._wait_line_async(w, self.start_timeout_s)
            except asyncio.TimeoutError:
                raise _WorkerDied(f"verifier worker {w.pid} did not start in {self.start_timeout_s}s") from None
            w.ready = True
        rid, payload = w.request(gold, pred)
        w.send(payload)
        self.stats["checks"] += 1
        return self._parse(await self._wait_line_async(w, self.timeout_s), rid)

    async def _with_worker_async(self, gold: str, pred: str) -> MathState:
        w = self._take()
        for attempt in (1, 2):
            try:
                state = await self._roundtrip_async(w, gold, pred)
                self._give(w)
                return state
            except asyncio.TimeoutError:
                self._replace(w, timed_out=True)
                return "timeout"
            except _WorkerDied as exc:
                log.warning("%s; starting a new one", exc)
                w = self._replace(w, timed_out=False, keep=True)
            except BaseException:  # cancelled mid-request: the worker's state is unknown, replace it
                self._replace(w, timed_out=False)
                raise
        self._give(w)
        return "error"


_default: VerifierPool | None = None
_default_lock = threading.Lock()


def default_pool() -> VerifierPool:
    """A one-worker pool for blocking callers (check_output, tests, scripts); closed at exit."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = VerifierPool(1)
            atexit.register(_default.close)
        return _default
