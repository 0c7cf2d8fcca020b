"""Generic jsonl / parquet with a column mapping (id, image, question, answer, optional options)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..config import ColumnMapping
from ..records import Rejected, Sample
from ..verify.options import options_from_column
from .common import as_image_list, iter_jsonl, make_sample


def _from_row(row: dict[str, Any], fallback_id: str, source: str, cols: ColumnMapping) -> Sample:
    row_id = row.get(cols.id) if cols.id else None
    answer = row.get(cols.answer)
    return make_sample(
        row_id=str(row_id) if row_id not in (None, "") else fallback_id,
        source=source,
        images=as_image_list(row.get(cols.image)),
        question=str(row.get(cols.question) or ""),
        answer=None if answer is None else str(answer),
        options=options_from_column(row.get(cols.options)) if cols.options else None,
    )


def read_jsonl_mapped(path: Path, source: str, cols: ColumnMapping) -> Iterator[Sample | Rejected]:
    for lineno, row in iter_jsonl(path, source):
        yield row if isinstance(row, Rejected) else _from_row(row, f"{source}:line{lineno}", source, cols)


def read_parquet_mapped(path: Path, source: str, cols: ColumnMapping) -> Iterator[Sample | Rejected]:
    wanted = [c for c in (cols.id, cols.image, cols.question, cols.answer, cols.options) if c]
    pf = pq.ParquetFile(path)
    present = [c for c in wanted if c in pf.schema_arrow.names]
    position = 0
    # Record batches keep memory flat on a 300K-row file.
    for batch in pf.iter_batches(batch_size=1024, columns=present):
        for row in batch.to_pylist():
            yield _from_row(row, f"{source}:{position}", source, cols)
            position += 1
