"""The event loop a conversion runs on: uvloop where it is installed, else asyncio's own.

Why: with 64+ streamed responses per endpoint the client does one socket read per few tokens; the
loop's own work per read (selector, callbacks, transport bookkeeping) was ~13% of the converter's
CPU in asyncio's pure-Python selector loop and is done in C by uvloop (libuv). Behaviour is the
same on both loops (the transport tests run on each).
"""

from __future__ import annotations

import asyncio
import importlib.util
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


def run(coro: Coroutine[Any, Any, T], name: EventLoopName = "auto") -> T:
    """`asyncio.run` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(coro)
