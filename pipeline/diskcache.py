"""Small results that are slow to compute and fully set by their inputs, kept on disk between runs.

Used for the rewrite rules' scanning plan: ~0.1 s of regex analysis at every start of every
converter and shard (pipeline/rewrite.py). An entry is named by the sha256 of everything it
depends on; a missing, unreadable or malformed entry is computed again, and failing to write one
only costs the next start that time. Where: $COLDSTART_CACHE_DIR (empty: no disk cache), else
$XDG_CACHE_HOME/coldstart, else ~/.cache/coldstart.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

ENV = "COLDSTART_CACHE_DIR"


def cache_dir() -> Path | None:
    """The cache folder, or None when disabled."""
    explicit = os.environ.get(ENV)
    if explicit is not None:
        return Path(explicit) if explicit.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coldstart"


def key_of(*parts: str | bytes) -> str:
    """A name for an entry from everything its value depends on."""
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(raw).to_bytes(8, "big") + raw)  # length-prefixed: ("ab", "c") != ("a", "bc")
    return digest.hexdigest()


def _path(kind: str, key: str) -> Path | None:
    root = cache_dir()
    return None if root is None else root / kind / f"{key}.json"


def load(kind: str, key: str) -> Any | None:
    """The stored value, or None (absent, disabled, unreadable, not JSON)."""
    path = _path(kind, key)
    if path is None:
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def save(kind: str, key: str, value: Any) -> None:
    """Store `value` (JSON); written whole or not at all (a rename), errors ignored."""
    path = _path(kind, key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(value).encode("utf-8"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
