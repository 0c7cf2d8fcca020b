"""The event loop a conversion runs on: uvloop where it is installed, else asyncio's own.

Why: with 64+ streamed responses per endpoint the client does one socket read per few tokens; the
loop's own work per read (selector, callbacks, transport bookkeeping) was ~13% of the converter's
CPU in asyncio's pure-Python selector loop and is done in C by uvloop (libuv). Behaviour is the
same on both loops (the transport tests run on each).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
EventLoopName = Literal["auto", "uvloop", "asyncio"]


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(name: EventLoopName = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner` (None: asyncio's default loop)."""
    if name == "asyncio" or (name == "auto" and not uvloop_available()):
        return None
    import uvloop  # "uvloop" without it installed is refused by the config before this

    return uvloop.new_event_loop


# A conversion allocates container objects by the million (stream events, records) and frees
# them by reference counting (tests/test_client.py checks that a request leaves no cycle); at the
# default threshold (700) the cyclic GC ran ~450 young and ~40 middle collections on a 1,200-sample
# run that found nothing, ~0.8 s of CPU on the event loop's thread.
GC_YOUNG_THRESHOLD = 10_000


def run(coro: Coroutine[Any, Any, T], name: EventLoopName = "auto") -> T:
    """`asyncio.run` on the chosen loop, with the GC set for a conversion: what the imports built
    is frozen (never scanned again) and young collections come less often; both undone after."""
    before = gc.get_threshold()
    ours = gc.get_freeze_count() == 0  # a caller that froze objects itself keeps them frozen after
    if ours:
        gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])
    try:
        with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
            return runner.run(coro)
    finally:
        gc.set_threshold(*before)
        if ours:
            gc.unfreeze()


class Turns:
    """CPU-heavy steps on the event loop take turns: one released per loop iteration.

    Why: a loop iteration runs every callback that was ready when it began. When many traces finish
    together, their quality gates (~5 ms of rules each) landed in one iteration, and every request
    waiting to be sent waited for all of them: on 4+4 replicas, 0.2-0.27 s from taking a server slot
    to the server having the request, ~25% of a VLM request's slot time. Taking a turn first, such
    steps run one an iteration, between the sends and reads; they wait, the servers do not."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._releasing = False
        self.taken = 0  # turns given out (tests)

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiting.append(fut)
        if not self._releasing:
            self._releasing = True
            loop.call_soon(self._release_one)
        await fut

    def _release_one(self) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():  # a cancelled waiter gives its turn to the next
                fut.set_result(None)
                self.taken += 1
                break
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._release_one)  # the next one: next iteration
        else:
            self._releasing = False
