"""Helpers shared by the readers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..records import Option, Rejected, Sample, Turn
from ..verify.options import parse_options
from .image_fields import ImageSink

_IMAGE_TOKEN = re.compile(r"<image>\s*")


def clean_question(text: str) -> str:
    """Drop <image> placeholders: the output re-adds exactly one per image."""
    return _IMAGE_TOKEN.sub("", text or "").strip()


def as_image_list(value: Any) -> list[str]:
    """Image paths of a JSON row's image field; a value of the wrong type is a RowError."""
    return ImageSink(None).paths(value)


def count_image_tokens(text: str) -> int:
    return (text or "").count("<image>")


def make_sample(
    *, row_id: str, source: str, images: list[str], question: str, answer: str | None,
    options: list[Option] | None = None, context: list[Turn] | None = None, turn_images: int | None = None,
    system: str = "",
) -> Sample:
    q = clean_question(question)
    return Sample(
        index=0,
        id=row_id,
        source=source,
        images=images,
        question=q,
        answer=(answer or "").strip(),
        options=options if options else parse_options(q),
        context=context or [],
        turn_images=len(images) if turn_images is None else turn_images,
        system=system,
    )


def reject_row(row_id: str, source: str, reason: str, detail: str) -> Rejected:
    return Rejected(index=0, id=row_id, source=source, stage="read", reason=reason, detail=detail)


def iter_jsonl(path: Path, source: str) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Stream a JSON Lines file; a malformed line becomes a Rejected row, not a crash.

    Opened in binary and decoded line by line, so one line of invalid UTF-8 rejects that line only.
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, as some Windows tools write
            if not raw.strip():
                continue
            rid = f"{source}:line{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, reject_row(rid, source, "malformed_row",
                                         f"line {lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at {exc.start})")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, reject_row(rid, source, "malformed_row", f"line {lineno}: {exc}")
                continue
            if not isinstance(row, dict):
                yield lineno, reject_row(rid, source, "malformed_row",
                                         f"line {lineno}: a JSON {type(row).__name__}, not an object")
                continue
            yield lineno, row


def iter_json_array(path: Path, source: str) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Stream the items of a JSON array with ijson (a 260K-row Mulberry file is never loaded whole)."""
    import ijson

    with open(path, "rb") as fh:
        position = -1
        try:
            for position, row in enumerate(ijson.items(fh, "item", use_float=True)):
                if not isinstance(row, dict):
                    yield position, reject_row(f"{source}:{position}", source, "malformed_row",
                                               f"item {position}: a JSON {type(row).__name__}, not an object")
                    continue
                yield position, row
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            # A broken array cannot be resynchronised; record where it broke so the count stays honest.
            yield position + 1, reject_row(f"{source}:after{position}", source, "malformed_input",
                                           f"JSON array unreadable after item {position}: {exc}")


def is_json_array(path: Path) -> bool:
    """A JSON array starts with '[' (after whitespace / a BOM); JSON Lines starts with '{'."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def turn_id(base: str, turn: int) -> str:
    return base if turn == 0 else f"{base}#turn{turn}"


def turn_pairs(messages: list[Any], role_key: str, text_key: str, asker: str, answerer: str) -> list[tuple[str, str]]:
    """(question, answer) text pairs of a conversation, in order; stray or non-dict turns are skipped."""
    pairs, pending = [], None
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role, text = msg.get(role_key), msg.get(text_key) or ""
        if role == asker:
            pending = text
        elif role == answerer and pending is not None:
            pairs.append((pending, text))
            pending = None
    return pairs


def row_samples(base: str, source: str, images: list[str], pairs: list[tuple[str, str]],
                answer_of: Callable[[str], str | None], question_of: Callable[[str], str] = lambda q: q,
                no_pair_detail: str = "no question/answer turn pair", multi_turn: str = "all",
                system: str = "") -> Iterator[Sample | Rejected]:
    """One sample per question turn; a follow-up carries the earlier turns as its context.

    Images are placed by the `<image>` tokens of each question turn (as LLaMA-Factory does); a row
    without any token puts all its images in its first turn. A follow-up gets the images of its
    context turns first, so it can be asked about them.
    """
    if not pairs:
        yield reject_row(base, source, "malformed_row", no_pair_detail)
        return
    for turn, pair in enumerate(pairs):
        if not all(isinstance(text, str) for text in pair):
            kinds = "/".join(type(text).__name__ for text in pair)
            yield reject_row(base, source, "malformed_row", f"turn pair {turn} is {kinds}, not text")
            return
    tokens = [count_image_tokens(q) for q, _ in pairs]
    if not images:
        tokens = [0] * len(pairs)  # a row without images is a `no_image` reject later, whatever its tokens say
    elif sum(tokens) == 0:
        tokens[0] = len(images)
    elif sum(tokens) != len(images):
        yield reject_row(base, source, "image_token_mismatch",
                         f"{sum(tokens)} <image> tokens in the question turns but {len(images)} images")
        return
    context: list[Turn] = []
    for turn, (question, answer_text) in enumerate(pairs[:1] if multi_turn == "first" else pairs):
        q, answer = question_of(question), answer_of(answer_text)
        row_id = turn_id(base, turn)
        missing = [i for i, t in enumerate(context) if not t.answer]
        if missing:
            yield reject_row(row_id, source, "missing_context",
                             f"earlier turn {missing[0]} has no answer, so this follow-up has no usable context")
        else:
            used = sum(tokens[: turn + 1])
            yield make_sample(row_id=row_id, source=source, images=images[:used], question=q, answer=answer,
                              context=list(context), turn_images=tokens[turn], system=system)
        context.append(Turn(question=clean_question(q), answer=(answer or "").strip(), turn_images=tokens[turn]))
