"""Hugging Face datasets, streamed: a `save_to_disk` folder, Parquet/Arrow files (a folder or a glob),
a folder laid out like a hub repo, or a hub id with a split.

Rows are read as Arrow batches (`with_format("arrow")`), so `Image` features arrive undecoded as
`{"bytes", "path"}` structs and nothing is materialised: a save_to_disk folder is memory-mapped,
everything else goes through `load_dataset(..., streaming=True)`.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ColumnMapping
from ..records import Rejected, Sample
from .generic import from_row
from .image_fields import ImageSink

_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
BATCH_ROWS = 64  # rows of embedded images per Arrow batch: bounded memory even with large images


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _data_files(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_file():
        return [str(path)]
    if any(ch in spec for ch in "*?["):
        return sorted(glob.glob(spec, recursive=True))
    return []


def open_hf(spec: str, split: str = "train") -> Any:
    """The dataset (a `Dataset` or a streaming `IterableDataset`); a ValueError that says why not."""
    import datasets

    path = Path(spec)
    try:
        if path.is_dir() and _is_saved_to_disk(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{spec} has no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
            return ds
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split, streaming=True)
        files = _data_files(spec)
        if files:
            kinds = {_BUILDERS.get(Path(f).suffix.lower()) for f in files}
            if len(kinds) != 1 or None in kinds:
                suffixes = sorted({Path(f).suffix for f in files})
                raise ValueError(f"{spec}: expected .parquet or .arrow files only, got {suffixes}")
            return datasets.load_dataset(kinds.pop(), data_files=files, split="train", streaming=True)
        if any(ch in spec for ch in "*?["):
            raise ValueError(f"{spec}: the pattern matches no file")
        # Not on disk: a hub id (needs the network and, for gated sets, HF_TOKEN in the environment).
        return datasets.load_dataset(spec, split=split, streaming=True)
    except ValueError:
        raise
    except Exception as exc:  # datasets raises many types (DatasetNotFoundError, FileNotFoundError, ...)
        raise ValueError(f"cannot open {spec!r} as a Hugging Face dataset (split {split!r}): "
                         f"{type(exc).__name__}: {exc}") from None


def column_names(ds: Any) -> list[str]:
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    for table in ds.with_format("arrow").iter(batch_size=1):  # features unknown until read (e.g. JSON files)
        return list(table.column_names)
    return []


def row_count(ds: Any, split: str) -> int | None:
    try:
        return len(ds)  # a save_to_disk Dataset
    except TypeError:
        pass
    splits = getattr(getattr(ds, "info", None), "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return getattr(info, "num_examples", None) or None


def read_hf(spec: str, source: str, cols: ColumnMapping, out_dir: Path | None, split: str = "train",
            ds: Any = None, write_images: bool = True) -> Iterator[Sample | Rejected]:
    ds = open_hf(spec, split) if ds is None else ds
    present = set(column_names(ds))
    wanted = [c for c in (cols.id, cols.image, cols.question, cols.answer, cols.options) if c and c in present]
    ds = ds.select_columns(wanted)  # only the mapped columns are read from disk
    sink = ImageSink(out_dir, write_images)
    position = 0
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in table.to_pylist():
            yield from_row(row, f"{source}:{position}", source, cols, sink)
            position += 1
