"""Live counts shared by the executor, the progress display and the manifest."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RunCounters:
    total: int | None = None  # rows expected, when cheaply known
    read: int = 0
    kept: int = 0
    rejected: int = 0
    by_reason: Counter = field(default_factory=Counter)
    by_stage: Counter = field(default_factory=Counter)
    stage_done: Counter = field(default_factory=Counter)
    stage_active: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.kept + self.rejected

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta_s(self) -> float | None:
        if not self.total or not self.finished:
            return None
        rate = self.finished / max(self.elapsed(), 1e-6)
        return max(0.0, (self.total - self.finished) / rate)
