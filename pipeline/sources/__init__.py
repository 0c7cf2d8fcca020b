"""Source readers: each streams its input and yields one typed Sample (or a Rejected row) per question."""

from __future__ import annotations

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


def open_source(cfg: ConvertConfig) -> Iterator[Sample | Rejected]:
    """The configured reader, with stable indices and --limit applied (counted in emitted items)."""
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
        if cfg.limit is not None and index >= cfg.limit:
            break
        yield item.model_copy(update={"index": index})
