"""An image field as datasets hold it -> image paths the pipeline can open.

Accepted: a path string, a list of them, Hugging Face `Image` structs (`{"bytes": ..., "path": ...}`,
as Parquet/Arrow store them) or raw bytes. Embedded bytes are written once, content-addressed, under
`<out>/images/` (so the JSONL and dataset_info.json work in LLaMA-Factory unchanged, and a resumed
run rewrites nothing); the sample then names that file by its absolute path. Anything else is a
per-row error with a reason, never a crash.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..image_files import images_dir, write_content_addressed

# PIL format name -> file extension LLaMA-Factory (PIL) and our loader open by content anyway.
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff", "MPO": "jpg"}


class RowError(Exception):
    """A row that cannot be read: becomes Rejected(stage="read", reason, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def image_ext(data: bytes) -> str:
    """The extension of embedded image bytes, from their header (not from a possibly absent path)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # header only: no pixel is decoded here
            fmt = probe.format or ""
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RowError("image_corrupt", f"embedded image bytes ({len(data)} B) are not an image: {exc}") from None
    return _EXT.get(fmt, fmt.lower() or "bin")


class ImageSink:
    """Turns image field values into path strings; embedded bytes go to `<out>/images/<sha256>.<ext>`."""

    def __init__(self, out_dir: Path | None, write: bool = True):
        self.directory = images_dir(Path(out_dir)).resolve() if out_dir is not None else None
        self.write = write  # False: name the file it would be (planning a build reads ids, writes nothing)
        self.written = 0  # embedded images seen (a file reused from an earlier run counts too)

    def paths(self, value: Any, field: str = "image") -> list[str]:
        if value is None:
            return []
        if hasattr(value, "tolist") and not isinstance(value, (bytes, bytearray, str)):
            value = value.tolist()  # numpy arrays from pandas-made rows
        if isinstance(value, (list, tuple)):
            out: list[str] = []
            for item in value:
                if isinstance(item, (list, tuple)):
                    raise RowError("bad_image_field", f"{field!r} holds a nested list; expected paths or images")
                out.extend(self.paths(item, field))
            return out
        return [p] if (p := self._one(value, field)) else []

    def _one(self, value: Any, field: str) -> str | None:
        if isinstance(value, str):
            if "\x00" in value:
                raise RowError("bad_image_field", f"{field!r}: image path contains a NUL byte: {value!r:.80}")
            return value if value.strip() else None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._embed(bytes(value), field)
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise RowError("bad_image_field", f"{field!r}: 'bytes' holds a {type(data).__name__}, not bytes")
                return self._embed(bytes(data), field)
            if isinstance(path, str) and path.strip():
                return self._one(path, field)
            keys = ", ".join(sorted(map(str, value))) or "none"
            raise RowError("bad_image_field",
                           f"{field!r}: an image object with neither bytes nor a path (keys: {keys})")
        raise RowError("bad_image_field",
                       f"{field!r} holds a {type(value).__name__} ({value!r:.40}); expected a path, a list of paths "
                       "or an image {bytes, path}")

    def _embed(self, data: bytes, field: str) -> str:
        if self.directory is None:
            raise RowError("bad_image_field", f"{field!r} holds embedded bytes but no output folder is set")
        if not data:
            raise RowError("image_empty", f"{field!r}: embedded image with 0 bytes")
        ext = image_ext(data)
        if not self.write:
            return str(self.directory / f"{hashlib.sha256(data).hexdigest()}.{ext}")
        path = write_content_addressed(data, self.directory, ext)
        self.written += 1
        return str(path)
