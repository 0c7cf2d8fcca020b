"""Progress: a rich live table on a terminal, a plain status line every few seconds otherwise."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .llm import ModelClient
from .counters import RunCounters
from .stages import STAGES


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    def __init__(self, counters: RunCounters, clients: dict[str, ModelClient], enabled: bool = True,
                 console: Console | None = None):
        self.c = counters
        self.clients = clients
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._task: asyncio.Task | None = None

    def tokens_per_s(self) -> float:
        toks = sum(cl.stats.usage.completion_tokens for cl in self.clients.values())
        return toks / max(self.c.elapsed(), 1e-6)

    def table(self) -> Table:
        c = self.c
        t = Table(title="coldstart convert", expand=False)
        for col in ("stage", "done", "in flight", "endpoint", "sent", "cached", "retries"):
            t.add_column(col, justify="right" if col not in ("stage", "endpoint") else "left")
        for stage in STAGES:
            client = self.clients["reasoner" if stage == "reasoning" else "vlm"]
            t.add_row(stage, str(c.stage_done[stage]), str(c.stage_active[stage]), client.role,
                      str(client.stats.sent), str(client.stats.cached), str(client.stats.retries))
        total = f"/{c.total}" if c.total else ""
        t.caption = (f"read {c.read}{total}  kept {c.kept}  rejected {c.rejected}  "
                     f"{self.tokens_per_s():,.0f} tok/s  elapsed {_fmt_eta(c.elapsed())}  ETA {_fmt_eta(c.eta_s())}")
        return t

    def line(self) -> str:
        c = self.c
        stages = " ".join(f"{s}={c.stage_done[s]}(+{c.stage_active[s]})" for s in STAGES)
        return (f"[coldstart] read={c.read}{'/' + str(c.total) if c.total else ''} kept={c.kept} "
                f"rejected={c.rejected} {stages} tok/s={self.tokens_per_s():,.0f} eta={_fmt_eta(c.eta_s())}")

    async def _run(self, interactive: bool) -> None:
        if interactive:
            with Live(self.table(), console=self.console, refresh_per_second=4, transient=False) as live:
                while True:
                    await asyncio.sleep(0.25)
                    live.update(self.table())
        else:
            while True:
                await asyncio.sleep(10)
                print(self.line(), file=sys.stderr, flush=True)

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(self.console.is_terminal))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.enabled and self.console.is_terminal:
            self.console.print(self.table())
