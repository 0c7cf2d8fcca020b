"""Source readers: each streams its input and yields one typed Sample (or a Rejected row) per question."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from ..config import ConvertConfig
from ..records import Rejected, Sample
from .generic import read_jsonl_mapped, read_parquet_mapped
from .llava_cot import read_llava_cot
from .mulberry import read_mulberry

READERS = {
    "llava-cot": read_llava_cot,
    "mulberry": read_mulberry,
}


def selected(source: str, item_id: str, fraction: float) -> bool:
    """Stable subsampling: the same rows are chosen on every run and every machine."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{source}\x1f{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def iter_items(cfg: ConvertConfig) -> Iterator[Sample | Rejected]:
    """Every item of the input with its stream index, before slicing and sampling."""
    assert cfg.input is not None
    path = Path(cfg.input)
    source = cfg.source_name or path.stem
    if cfg.source_format == "jsonl":
        items = read_jsonl_mapped(path, source, cfg.columns)
    elif cfg.source_format == "parquet":
        items = read_parquet_mapped(path, source, cfg.columns)
    else:
        items = READERS[cfg.source_format](path, source)
    for index, item in enumerate(items):
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
