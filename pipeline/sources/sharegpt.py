"""LLaMA-Factory "sharegpt" files (JSON array, streamed, or JSON Lines), read as LLaMA-Factory reads them.

Follows LLaMA-Factory's SharegptDatasetConverter: an optional leading system turn (system_tag) or a
system column; then turns alternate user/assistant (observation/function turns belong to tool-use
data, not VQA, and are rejected here); an odd number of turns is a broken row. `images` is a list or
a single string. The ground truth of each question turn comes from its assistant turn (answers.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ShareGptMapping
from ..records import Rejected, Sample
from .answers import gold_answer
from .common import is_json_array, iter_json_array, iter_jsonl, reject_row, row_samples
from .image_fields import ImageSink, RowError


def iter_rows(path: Path, source: str):
    return iter_json_array(path, source) if is_json_array(path) else iter_jsonl(path, source)


def _pairs(messages: list[Any], m: ShareGptMapping) -> tuple[str, list[tuple[str, str]]]:
    """(system, [(question, answer)]); raises RowError the way LLaMA-Factory skips a broken example."""
    if not all(isinstance(msg, dict) for msg in messages):
        raise RowError("malformed_row", "a turn of the messages list is not an object")
    system = ""
    if m.system_tag and messages and messages[0].get(m.role_tag) == m.system_tag:
        system = messages[0].get(m.content_tag) or ""
        messages = messages[1:]
    tools = {t for t in (m.observation_tag, m.function_tag) if t}
    expected = (m.user_tag, m.assistant_tag)
    for i, msg in enumerate(messages):
        role = msg.get(m.role_tag)
        if role in tools:
            raise RowError("unsupported_row",
                           f"turn {i} is a tool turn ({role!r}); only question/answer turns are read")
        if role != expected[i % 2]:
            raise RowError("malformed_row", f"turn {i} has role {role!r} where {expected[i % 2]!r} was expected "
                                            f"({m.role_tag!r} tags must alternate {expected[0]!r}/{expected[1]!r})")
        if not isinstance(msg.get(m.content_tag), str):
            raise RowError("malformed_row", f"turn {i}: {m.content_tag!r} is a "
                                            f"{type(msg.get(m.content_tag)).__name__}, not text")
    if len(messages) % 2:
        raise RowError("malformed_row", f"{len(messages)} turns: the last question has no answer turn")
    texts = [msg[m.content_tag] for msg in messages]
    return (system if isinstance(system, str) else ""), list(zip(texts[0::2], texts[1::2]))


def read_sharegpt(path: Path, source: str, mapping: ShareGptMapping, out_dir: Path | None = None,
                  answer_regex: str | None = None, multi_turn: str = "all",
                  write_images: bool = True) -> Iterator[Sample | Rejected]:
    sink = ImageSink(out_dir, write_images)
    regex = re.compile(answer_regex) if answer_regex else None
    for position, row in iter_rows(path, source):
        if isinstance(row, Rejected):
            yield row
            continue
        base = str(row.get("id") or f"{source}:{position}")
        messages = row.get(mapping.messages)
        if not isinstance(messages, list) or not messages:
            yield reject_row(base, source, "malformed_row", f"no {mapping.messages!r} list")
            continue
        try:
            images = sink.paths(row.get(mapping.images), mapping.images) if mapping.images else []
            system, pairs = _pairs(messages, mapping)
        except RowError as exc:
            yield reject_row(base, source, exc.reason, exc.detail)
            continue
        if mapping.system and not system and isinstance(row.get(mapping.system), str):
            system = row[mapping.system]
        yield from row_samples(base, source, images, pairs, lambda a: gold_answer(a, regex),
                               multi_turn=multi_turn, system=system)
