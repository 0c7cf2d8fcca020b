"""Wire data -> completion-shaped dicts -> ChatResults.

A streamed response is assembled into the same dict a non-streamed `chat.completion` gives
(`choices[i].message.{content, reasoning_content, reasoning}`, `finish_reason`, `usage`), so the
response store and `parse_completion` read old and new stores alike.
"""

from __future__ import annotations

import re
from typing import Any

from ..records import ChatResult, Usage

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)
# Text-bearing delta fields. vLLM's reasoning parser sends `reasoning_content` (DeepSeek API) and,
# since 0.10, `reasoning`; some versions send both with the same text, so they are kept apart.
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning")


class IncompleteStream(Exception):
    """The stream ended before every choice had a finish_reason: the response was cut."""


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


class StreamAssembler:
    """Folds `chat.completion.chunk` dicts (as vLLM and the DeepSeek API send them) into one
    completion dict. Choices are assembled by their `index` (n > 1 interleaves them); the usage
    arrives in a last chunk with no choices when `stream_options.include_usage` is set."""

    __slots__ = ("id", "model", "created", "usage", "_parts", "_finish")

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = 0
        self.usage: dict[str, Any] | None = None
        self._parts: dict[int, dict[str, list[str]]] = {}
        self._finish: dict[int, str | None] = {}

    def feed(self, chunk: dict[str, Any]) -> None:
        # Plain dict access, no model objects (`feed_many` is the per-read path).
        if not self.id:
            self.id = chunk.get("id") or ""
            self.model = chunk.get("model") or ""
            self.created = chunk.get("created") or 0
        for choice in chunk.get("choices") or ():
            i = choice.get("index") or 0
            parts = self._parts.get(i)
            if parts is None:
                parts = self._parts[i] = {}
                self._finish[i] = None
            delta = choice.get("delta")
            if delta:
                for name in _TEXT_FIELDS:
                    text = delta.get(name)
                    if text:
                        parts.setdefault(name, []).append(text)
            if choice.get("finish_reason"):
                self._finish[i] = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]

    def feed_many(self, chunks: list[dict[str, Any]]) -> None:
        """`feed` for a read's worth of chunks. The common event (one choice, a text delta, no
        finish) takes a short path; anything else goes through `feed`."""
        if not self.id and chunks:
            self.feed(chunks[0])
            chunks = chunks[1:]
        parts = self._parts
        for chunk in chunks:
            choices = chunk.get("choices")
            if (choices and len(choices) == 1 and not chunk.get("usage")
                    and not (choice := choices[0]).get("finish_reason")
                    and (p := parts.get(choice.get("index") or 0)) is not None):
                delta = choice.get("delta")
                if delta:
                    for name, text in delta.items():
                        if text and name in _TEXT_FIELDS:
                            if (acc := p.get(name)) is None:
                                p[name] = [text]
                            else:
                                acc.append(text)
            else:
                self.feed(chunk)

    def result(self) -> dict[str, Any]:
        """The completion dict; IncompleteStream when any choice never finished."""
        unfinished = [i for i, f in self._finish.items() if f is None]
        if not self._finish or unfinished:
            raise IncompleteStream(f"stream ended without finish_reason for choice(s) {unfinished or [0]}")
        choices = []
        for i in sorted(self._parts):
            parts = self._parts[i]
            message: dict[str, Any] = {"role": "assistant", "content": "".join(parts.get("content", ()))}
            for name in ("reasoning_content", "reasoning"):
                if name in parts:
                    message[name] = "".join(parts[name])
            choices.append({"index": i, "message": message, "finish_reason": self._finish[i]})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage}
