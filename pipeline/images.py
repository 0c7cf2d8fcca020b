"""Read, validate and encode a sample's images once; both VLM calls reuse the result."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .config import ImageConfig


class ImageError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EncodedImage:
    source_path: str  # as in the input
    resolved: Path
    file_sha256: str  # hash of the bytes on disk
    sent_sha256: str  # hash of the bytes sent (after downscale/encode); part of the cache key
    data_url: str
    width: int
    height: int


def resolve_inside(root: Path, raw: str) -> Path:
    """Resolve an input image path and refuse anything that escapes image_root (../, absolute, links)."""
    if not raw or not raw.strip():
        raise ImageError("image_missing", "empty image path")
    root_resolved = root.resolve()
    candidate = Path(raw)
    path = (candidate if candidate.is_absolute() else root_resolved / candidate).resolve()
    try:
        path.relative_to(root_resolved)
    except ValueError:
        raise ImageError("image_path_escape", f"{raw!r} resolves outside image_root {root_resolved}") from None
    return path


def _fit_max_pixels(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    if not max_pixels or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def load_image(root: Path, raw: str, cfg: ImageConfig) -> EncodedImage:
    path = resolve_inside(root, raw)
    if not path.is_file():
        raise ImageError("image_missing", f"{raw!r} not found under {root}")
    size = path.stat().st_size
    if size == 0:
        raise ImageError("image_empty", f"{raw!r} is an empty file")
    if size > cfg.max_file_bytes:
        raise ImageError("image_too_large", f"{raw!r} is {size} bytes > max_file_bytes {cfg.max_file_bytes}")
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            # Our own limit (max_decoded_pixels) decides; PIL still errors past twice its default.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size  # header only: checked before any pixel is decoded
                if width * height > cfg.max_decoded_pixels:
                    raise ImageError(
                        "image_too_large",
                        f"{raw!r} is {width}x{height} > max_decoded_pixels {cfg.max_decoded_pixels}",
                    )
                probe.load()
                img = probe.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("image_too_large", f"{raw!r}: {exc}") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageError("image_corrupt", f"{raw!r} cannot be decoded: {type(exc).__name__}: {exc}") from None

    new_size = _fit_max_pixels(img.width, img.height, cfg.max_pixels)
    if new_size != img.size:
        img = img.resize(new_size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=cfg.encode_format, **({"quality": 95} if cfg.encode_format == "JPEG" else {}))
    sent = buf.getvalue()
    mime = "image/png" if cfg.encode_format == "PNG" else "image/jpeg"
    return EncodedImage(
        source_path=raw,
        resolved=path,
        file_sha256=hashlib.sha256(data).hexdigest(),
        sent_sha256=hashlib.sha256(sent).hexdigest(),
        data_url=f"data:{mime};base64,{base64.b64encode(sent).decode('ascii')}",
        width=img.width,
        height=img.height,
    )


def load_images(root: Path, raws: list[str], cfg: ImageConfig) -> list[EncodedImage]:
    return [load_image(root, raw, cfg) for raw in raws]


def relative_to_out(image: EncodedImage, out_dir: Path) -> str:
    """The path LLaMA-Factory resolves from its dataset_dir (the output folder)."""
    return os.path.relpath(image.resolved, out_dir.resolve())
