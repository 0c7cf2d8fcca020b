"""Source readers: each streams its input and yields one typed Sample (or a Rejected row) per question."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from ..config import ConvertConfig
from ..records import Rejected, Sample
from .checks import check_input, estimate_rows
from .generic import read_jsonl_mapped, read_parquet_mapped
from .hf import read_hf
from .llava_cot import read_llava_cot
from .mulberry import read_mulberry
from .sharegpt import read_sharegpt

READERS = {
    "llava-cot": read_llava_cot,
    "mulberry": read_mulberry,
}

__all__ = ["check_input", "estimate_rows", "iter_items", "open_source", "selected", "READERS"]


def selected(source: str, item_id: str, fraction: float) -> bool:
    """Stable subsampling: the same rows are chosen on every run and every machine."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{source}\x1f{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _nul_field(s: Sample) -> str | None:
    """Text with a NUL byte cannot go into a prompt or a path: the first field that holds one."""
    fields = [("question", s.question), ("answer", s.answer), ("system", s.system)]
    fields += [("image path", p) for p in s.images]
    fields += [(f"context turn {i}", t.question + t.answer) for i, t in enumerate(s.context)]
    return next((name for name, text in fields if "\x00" in text), None)


def _raw_items(cfg: ConvertConfig, write_images: bool) -> Iterator[Sample | Rejected]:
    assert cfg.input is not None
    path = Path(cfg.input)
    source = cfg.source_name or path.stem
    fmt = cfg.source_format
    if fmt == "jsonl":
        return read_jsonl_mapped(path, source, cfg.columns, cfg.out, write_images)
    if fmt == "parquet":
        return read_parquet_mapped(path, source, cfg.columns, cfg.out, write_images)
    if fmt == "hf":
        return read_hf(str(cfg.input), source, cfg.columns, cfg.out, cfg.split, write_images=write_images)
    if fmt == "sharegpt":
        return read_sharegpt(path, source, cfg.sharegpt, cfg.out, cfg.answer_regex, cfg.multi_turn, write_images)
    return READERS[fmt](path, source, cfg.multi_turn)


def iter_items(cfg: ConvertConfig, write_images: bool = True) -> Iterator[Sample | Rejected]:
    """Every item of the input with its stream index, before slicing and sampling.

    write_images=False names embedded images without writing them (for a build's planning pass).
    """
    for index, item in enumerate(_raw_items(cfg, write_images)):
        if isinstance(item, Sample) and (field := _nul_field(item)):
            item = Rejected(index=index, id=item.id, source=item.source, stage="read", reason="malformed_row",
                            detail=f"NUL byte in the {field}")
        yield item.model_copy(update={"index": index})


def open_source(cfg: ConvertConfig) -> Iterator[Sample | Rejected]:
    """The configured reader: stable indices, the row slice, sampling, then --limit (in items used)."""
    used = 0
    for item in iter_items(cfg):
        if item.index < cfg.row_start:
            continue
        if cfg.row_stop is not None and item.index >= cfg.row_stop:
            break
        if not selected(item.source, item.id, cfg.sample_fraction):
            continue
        if cfg.limit is not None and used >= cfg.limit:
            break
        used += 1
        yield item
