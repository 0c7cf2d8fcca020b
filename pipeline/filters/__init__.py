"""Rule filters over reasoning traces, datatrove style.

A filter is a small named unit with one method, ``filter(trace) -> Keep | Drop``; a dropped trace
carries its reason (the reject reason written to rejects.jsonl) and a detail. Every filter counts
what it saw, passed and dropped; the counts go to manifest.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..records import Option


@dataclass
class Trace:
    """One reasoner output for one sample, as the filters see it."""

    question: str
    answer: str
    options: list[Option]
    description: str
    reasoning: str
    final_text: str
    pred: str | None
    tokens: int  # reasoning tokens (from usage where available)
    hinted: bool = False


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: str

    def __bool__(self) -> bool:  # `if result:` reads as "kept"
        return False


KEEP = True
FilterResult = bool | Drop


@dataclass
class FilterStats:
    seen: int = 0
    passed: int = 0
    dropped: int = 0

    def record(self, result: "FilterResult | str") -> "FilterResult | str":
        """Count one decision (a Drop is dropped, anything else passed) and hand it back."""
        self.seen += 1
        if isinstance(result, Drop) or result is False:
            self.dropped += 1
        else:
            self.passed += 1
        return result

    def as_dict(self) -> dict[str, int]:
        return {"seen": self.seen, "passed": self.passed, "dropped": self.dropped}


class Filter:
    name: str = "filter"

    def __init__(self) -> None:
        self.stats = FilterStats()

    def filter(self, trace: Trace) -> FilterResult:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, trace: Trace) -> FilterResult:
        return self.stats.record(self.filter(trace))


@dataclass
class FilterChain:
    filters: list[Filter] = field(default_factory=list)

    def __call__(self, trace: Trace) -> FilterResult:
        for f in self.filters:
            result = f(trace)
            if result is not True:
                return result
        return KEEP

    def stats(self) -> dict[str, dict[str, int]]:
        return {f.name: f.stats.as_dict() for f in self.filters}
