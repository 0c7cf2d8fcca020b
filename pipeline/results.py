"""Per-run outcome table: every sample's final state (kept or rejected), on disk, by input index.

Workers finish in any order; writers read this table in index order, so the output is identical
whatever the completion order and memory stays flat however large the input.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

from .records import Kept, Rejected


class ResultTable:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # rebuilt from the response store on resume
        self._db.execute("DROP TABLE IF EXISTS outcomes")
        self._db.execute("CREATE TABLE outcomes (idx INTEGER PRIMARY KEY, kept INTEGER NOT NULL, payload BLOB NOT NULL)")
        self.path = path

    def put(self, outcome: Kept | Rejected) -> None:
        self._db.execute(
            "INSERT INTO outcomes (idx, kept, payload) VALUES (?, ?, ?)",
            (outcome.index, int(isinstance(outcome, Kept)), zlib.compress(outcome.model_dump_json().encode(), 1)),
        )

    def count(self, kept: bool) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outcomes WHERE kept = ?", (int(kept),)).fetchone()[0]

    def iter_kept(self) -> Iterator[Kept]:
        for (payload,) in self._db.execute("SELECT payload FROM outcomes WHERE kept = 1 ORDER BY idx"):
            yield Kept.model_validate_json(zlib.decompress(payload))

    def iter_rejected(self) -> Iterator[Rejected]:
        for (payload,) in self._db.execute("SELECT payload FROM outcomes WHERE kept = 0 ORDER BY idx"):
            yield Rejected.model_validate_json(zlib.decompress(payload))

    def close(self, remove: bool = False) -> None:
        """`remove`: delete the table once the outputs are written (it is rebuilt on every run)."""
        self._db.close()
        if remove:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
