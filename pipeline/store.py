"""Crash-safe response store: every model response is persisted the moment it arrives.

Keyed by a content hash of what determines the response (model, rendered messages with images
replaced by their hashes, sampling parameters); operational settings such as concurrency are not
part of it, so changing them never invalidates finished work. SQLite in WAL mode with
synchronous=NORMAL makes each commit durable against a killed process (kill -9).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    stage TEXT NOT NULL,
    created REAL NOT NULL,
    response TEXT NOT NULL
)
"""


def canonical_messages(messages: list[dict[str, Any]], image_hashes: dict[str, str]) -> list[dict[str, Any]]:
    """Messages with each data URL swapped for its image hash: a small, image-free cache identity."""
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    parts.append({"type": "image", "sha256": image_hashes.get(url) or hashlib.sha256(url.encode()).hexdigest()})
                else:
                    parts.append(part)
            content = parts
        out.append({"role": msg["role"], "content": content})
    return out


def request_key(model: str, canonical: list[dict[str, Any]], params: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "messages": canonical, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, stage: str, response: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, model, stage, created, response) VALUES (?, ?, ?, ?, ?)",
            (key, model, stage, time.time(), json.dumps(response, ensure_ascii=False)),
        )

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
