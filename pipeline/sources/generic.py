"""Generic jsonl / parquet with a column mapping (id, image, question, answer, optional options)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..config import ColumnMapping
from ..records import Rejected, Sample
from ..verify.options import options_from_column
from .common import iter_jsonl, make_sample, reject_row
from .image_fields import ImageSink, RowError


def mapped_columns(cols: ColumnMapping) -> list[str]:
    return [c for c in (cols.id, cols.image, cols.question, cols.answer, cols.options) if c]


def from_row(row: dict[str, Any], fallback_id: str, source: str, cols: ColumnMapping,
             sink: ImageSink) -> Sample | Rejected:
    row_id = row.get(cols.id) if cols.id else None
    rid = str(row_id) if row_id not in (None, "") else fallback_id
    try:
        images = sink.paths(row.get(cols.image), cols.image)
    except RowError as exc:
        return reject_row(rid, source, exc.reason, exc.detail)
    answer = row.get(cols.answer)
    return make_sample(
        row_id=rid,
        source=source,
        images=images,
        question=str(row.get(cols.question) or ""),
        answer=None if answer is None else str(answer),
        options=options_from_column(row.get(cols.options)) if cols.options else None,
    )


def read_jsonl_mapped(path: Path, source: str, cols: ColumnMapping,
                      out_dir: Path | None = None, write_images: bool = True) -> Iterator[Sample | Rejected]:
    sink = ImageSink(out_dir, write_images)
    for lineno, row in iter_jsonl(path, source):
        yield row if isinstance(row, Rejected) else from_row(row, f"{source}:line{lineno}", source, cols, sink)


def read_parquet_mapped(path: Path, source: str, cols: ColumnMapping,
                        out_dir: Path | None = None, write_images: bool = True) -> Iterator[Sample | Rejected]:
    sink = ImageSink(out_dir, write_images)
    pf = pq.ParquetFile(path)
    present = [c for c in mapped_columns(cols) if c in pf.schema_arrow.names]
    position = 0
    # Record batches keep memory flat on a 300K-row file; Image structs arrive as {"bytes", "path"} dicts.
    for batch in pf.iter_batches(batch_size=64, columns=present):
        for row in batch.to_pylist():
            yield from_row(row, f"{source}:{position}", source, cols, sink)
            position += 1
