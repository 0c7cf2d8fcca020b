"""Content-addressed image files under <out>/images/: written once, atomically, never duplicated.

Embedded images (Hugging Face `Image` structs) and images the pipeline had to transform (EXIF
rotation, transparency) are written here, so the trainer reads exactly the pixels the VLM saw.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

IMAGES_DIR = "images"


def images_dir(out_dir: Path) -> Path:
    return Path(out_dir) / IMAGES_DIR


def content_addressed_path(data: bytes, directory: Path, ext: str) -> Path:
    """`<directory>/<sha256>.<ext>`: where write_content_addressed puts these bytes."""
    return Path(directory) / f"{hashlib.sha256(data).hexdigest()}.{ext.lstrip('.').lower()}"


def write_content_addressed(data: bytes, directory: Path, ext: str) -> Path:
    """`<directory>/<sha256>.<ext>`; an existing file (same content by construction) is reused."""
    directory.mkdir(parents=True, exist_ok=True)
    path = content_addressed_path(data, directory, ext)
    if path.exists():
        return path
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: a reader never sees half a file; racing writers write the same bytes
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
