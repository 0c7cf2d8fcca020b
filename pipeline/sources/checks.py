"""Input checks that run before any request: the input opens, and every mapped column exists.

A mistyped column name would otherwise turn into a reject on every row after the run started.
Also: images stored as paths need --image-root (embedded images do not).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ColumnMapping, ConvertConfig
from .common import is_json_array, iter_json_array, iter_jsonl

PEEK_ROWS = 100  # rows of a JSON file whose keys stand for its columns


def _required_columns(cols: ColumnMapping) -> list[str]:
    # id is optional unless renamed: a set without an "id" column gets positional ids. (Compared with the default
    # rather than model_fields_set, which a dump/validate round trip, as build.py does, would fill.)
    names = [cols.image, cols.question, cols.answer]
    if cols.id and cols.id != ColumnMapping.model_fields["id"].default:
        names.append(cols.id)
    if cols.options:
        names.append(cols.options)
    return names


def _fail_missing(wanted: list[str], present: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(f"column(s) {', '.join(map(repr, missing))} not in {where} "
                         f"(columns there: {', '.join(present) or 'none'})")


def _json_keys(path: Path, source: str) -> list[str]:
    rows = iter_json_array(path, source) if is_json_array(path) else iter_jsonl(path, source)
    keys: dict[str, None] = {}
    for _, row in islice(rows, PEEK_ROWS):
        if isinstance(row, dict):
            keys.update(dict.fromkeys(row))
    return list(keys)


def _is_path_type(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _is_path_type(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _hf_image_is_path(feature: Any) -> bool:
    from datasets import Image, List, Sequence, Value

    if isinstance(feature, (List, Sequence)):
        return _hf_image_is_path(feature.feature)
    if isinstance(feature, list) and feature:
        return _hf_image_is_path(feature[0])
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string") and not isinstance(feature, Image)


def _need_root(cfg: ConvertConfig, what: str) -> None:
    if cfg.image_root is None:
        raise ValueError(f"{what}: images are file paths, so --image-root (image_root) is needed to find them")


def check_input(cfg: ConvertConfig) -> None:
    """Raise ValueError (naming what exists) when the input cannot be read as configured."""
    if cfg.input is None:
        raise ValueError("missing required settings (flag or config file): --input")
    path = Path(cfg.input)
    fmt = cfg.source_format
    if fmt == "hf":
        from .hf import column_names, open_hf

        ds = open_hf(str(cfg.input), cfg.split)
        names = column_names(ds)
        _fail_missing(_required_columns(cfg.columns), names, str(cfg.input))
        feature = (getattr(ds, "features", None) or {}).get(cfg.columns.image)
        if feature is not None and _hf_image_is_path(feature):
            _need_root(cfg, str(cfg.input))
        return
    if not path.is_file():
        hint = " (a folder: use --source-format hf)" if path.is_dir() else ""
        raise ValueError(f"input {path} is not a file{hint}")
    source = cfg.source_name or path.stem
    if fmt == "parquet":
        try:
            schema = pq.ParquetFile(path).schema_arrow
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ...
            raise ValueError(f"cannot read {path} as Parquet: {exc}") from None
        _fail_missing(_required_columns(cfg.columns), schema.names, str(path))
        if _is_path_type(schema.field(cfg.columns.image).type):
            _need_root(cfg, str(path))
    elif fmt == "jsonl":
        _fail_missing(_required_columns(cfg.columns), _json_keys(path, source), f"the first rows of {path}")
        _need_root(cfg, str(path))
    elif fmt == "sharegpt":
        m = cfg.sharegpt
        wanted = [m.messages] + [c for c in (m.images, m.system) if c]
        keys = _json_keys(path, source)
        # A system column may be absent from rows that have no system prompt; messages and images may not.
        _fail_missing([c for c in wanted if c != m.system], keys, f"the first rows of {path}")
        if m.images:
            _need_root(cfg, str(path))
        elif found := [k for k in ("images", "image") if k in keys]:
            # LLaMA-Factory's default is no images column; reading such a file that way would drop every image.
            raise ValueError(f"the rows of {path} have an {found[0]!r} key but no images column is configured: "
                             f"set sharegpt.images: {found[0]} (or read it through --dataset-info)")
    else:
        _need_root(cfg, str(path))


def estimate_rows(cfg: ConvertConfig) -> int | None:
    """Rows in the input when cheap to know (for the ETA only), else None; never more than --limit."""
    if cfg.input is None:
        return cfg.limit
    total: int | None = None
    try:
        if cfg.source_format == "hf":
            from .hf import open_hf, row_count

            total = row_count(open_hf(str(cfg.input), cfg.split), cfg.split)
        elif cfg.source_format == "parquet":
            import pyarrow.parquet as pq

            total = pq.ParquetFile(cfg.input).metadata.num_rows
        elif cfg.source_format in ("jsonl", "llava-cot") or (
                cfg.source_format == "sharegpt" and not is_json_array(Path(cfg.input))):
            with open(cfg.input, "rb") as fh:
                total = sum(1 for line in fh if line.strip())
    except (OSError, ValueError):
        total = None
    if cfg.limit is not None:
        return min(cfg.limit, total) if total is not None else cfg.limit
    return total
    return None
