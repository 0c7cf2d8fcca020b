"""Crash-safe response store and request keys: every model response is persisted the moment it
arrives, before anything uses it.

Keyed by a content hash of what determines the response (model, rendered messages with images
replaced by their hashes, sampling parameters); operational settings such as concurrency are not
part of it, so changing them never invalidates finished work.

Where the file lives decides how it is written (`store.mode`):

- `direct` (local disks): one SQLite file in WAL mode with synchronous=NORMAL at the store path.
  Each response is its own committed transaction, durable against a killed process (kill -9).
- `publish` (network filesystems: NFS, Lustre, CIFS, CephFS, ...; SQLite documents that WAL does
  not work there): the working copy is a WAL SQLite file on node-local disk (`store.local_dir`,
  default $TMPDIR/coldstart-stores). At checkpoints (every `checkpoint_s`, never more than 10% of
  the time) and when the run ends it is published to the store path on the shared filesystem:
  SQLite's online backup into a temporary file in the same folder, fsync, `os.replace`. Readers
  only ever see a complete, closed file (rollback-journal mode, opened read-only), so no SQLite
  locking crosses the network. A run resumed on another node starts from the published copy; on
  the same node it keeps its working copy when that copy descends from the published one (both
  carry the generation of the last publish).
  Guarantee after kill -9: resumed on the same node, no finished request is lost; resumed on
  another node, at most the responses that arrived after the last completed checkpoint are lost
  (they are requested again, never a response the published copy holds).
- `auto` (default): `publish` when the store path is on a network filesystem (per
  /proc/self/mounts), else `direct`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Literal

import orjson

from .dataurl import DataUrl

log = logging.getLogger("coldstart.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    stage TEXT NOT NULL,
    created REAL NOT NULL,
    response TEXT NOT NULL
)
"""
_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
# Filesystems where SQLite's WAL (shared memory) and POSIX locks cannot be trusted.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph-fuse",
              "glusterfs", "fuse.glusterfs", "9p", "afs", "fuse.sshfs", "panfs", "orangefs", "wekafs",
              "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse"}
StoreMode = Literal["auto", "direct", "publish"]


def canonical_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with each data URL swapped for its image hash: a small, image-free cache identity
    (an image's DataUrl names its own: file hash + transform; any other URL, its bytes' sha256)."""
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    if type(url) is DataUrl:  # it carries its key (looking up 0.5 MB of bytes hashes them)
                        parts.append({"type": "image", "sha256": url.key})
                        continue
                    # A data URL is str or ASCII bytes; either hashes the same.
                    raw = url if isinstance(url, bytes) else url.encode()
                    parts.append({"type": "image", "sha256": hashlib.sha256(raw).hexdigest()})
                else:
                    parts.append(part)
            content = parts
        out.append({"role": msg["role"], "content": content})
    return out


def request_key(model: str, canonical: list[dict[str, Any]], params: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "messages": canonical, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = Path(os.path.abspath(path))
    best, best_len = "unknown", -1
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (target == Path(mount) or Path(mount) in target.parents) and len(mount) > best_len:
            best, best_len = fields[2], len(mount)
    return best


def resolve_mode(mode: StoreMode, path: Path) -> Literal["direct", "publish"]:
    if mode != "auto":
        return mode
    return "publish" if filesystem_type(path) in NETWORK_FS else "direct"


def _generation(db: Path, readonly: bool) -> str | None:
    uri = f"file:{db}?mode=ro&immutable=1" if readonly else f"file:{db}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # no meta table (a store from before publishing) or no file
        return None
    return row[0] if row else None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_db(src: Path, dst: Path, journal: str, src_immutable: bool = False, generation: str | None = None) -> None:
    """SQLite online backup of `src` into a temporary file beside `dst`, then an atomic replace."""
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    uri = f"file:{src}?mode=ro&immutable=1" if src_immutable else f"file:{src}?mode=ro"
    source = sqlite3.connect(uri, uri=True)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
            target.execute(f"PRAGMA journal_mode={journal}")
            if generation is not None:
                target.execute(_META)
                target.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('generation', ?)", (generation,))
                target.commit()
        finally:
            target.close()
    finally:
        source.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


class ResponseStore:
    def __init__(self, path: Path, mode: StoreMode = "direct", local_dir: Path | None = None,
                 checkpoint_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(mode, self.path)
        self.checkpoint_s = checkpoint_s
        self.published = 0  # completed publishes (publish mode)
        self._publisher: threading.Thread | None = None
        self._publish_error: BaseException | None = None
        self._last_publish = time.monotonic()
        self._publish_cost = 0.0
        if self.mode == "publish":
            folder = Path(local_dir) if local_dir else Path(tempfile.gettempdir()) / "coldstart-stores"
            folder.mkdir(parents=True, exist_ok=True)
            tag = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
            self.work_path = folder / f"{tag}-{self.path.name}"
            self._adopt_published()
        else:
            self.work_path = self.path
        self._db = sqlite3.connect(self.work_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_META)

    def _adopt_published(self) -> None:
        """Resume from the published copy unless the local working copy already descends from it."""
        published = _generation(self.path, readonly=True) if self.path.exists() else None
        if self.work_path.exists():
            local = _generation(self.work_path, readonly=False)
            if local == published and (published is not None or not self.path.exists()):
                log.info("store: resuming from the working copy %s (it holds publish %s and later)",
                         self.work_path, published)
                return
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.work_path}{suffix}").unlink(missing_ok=True)
        if self.path.exists():
            _copy_db(self.path, self.work_path, "WAL", src_immutable=True)

    def scratch_path(self, name: str, default: Path) -> Path:
        """Where a run's other scratch SQLite (e.g. the outcome table) belongs: beside the working
        copy on node-local disk in publish mode, `default` otherwise."""
        if self.mode != "publish":
            return default
        return self.work_path.with_name(self.work_path.name.split("-", 1)[0] + "-" + name)

    # ---- responses ----------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        # zlib-compressed JSON (BLOB); stores written before compression hold plain JSON text.
        return orjson.loads(zlib.decompress(row[0]) if isinstance(row[0], bytes) else row[0])

    def put(self, key: str, model: str, stage: str, response: dict[str, Any]) -> None:
        # Compressed: R1 traces are long, repetitive prose (about 4x smaller; ~0.1 ms per response).
        blob = zlib.compress(orjson.dumps(response), 6)
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, model, stage, created, response) VALUES (?, ?, ?, ?, ?)",
            (key, model, stage, time.time(), blob),
        )
        if self.mode == "publish":
            self._maybe_checkpoint()

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # ---- publishing ---------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        if self._publisher is not None and self._publisher.is_alive():
            return
        # At most ~10% of the time goes to publishing, however large the store grows.
        due = max(self.checkpoint_s, 10 * self._publish_cost)
        if time.monotonic() - self._last_publish >= due:
            self._publisher = threading.Thread(target=self._publish_quietly, name="store-publish", daemon=True)
            self._publisher.start()

    def _publish_quietly(self) -> None:
        try:
            self.publish()
        except BaseException as exc:  # a failed checkpoint is retried at the next one and at close
            self._publish_error = exc
            log.warning("store: publishing %s failed: %s", self.path, exc)

    def publish(self) -> None:
        """Copy the working store to the shared path atomically (publish mode; no-op otherwise)."""
        if self.mode != "publish":
            return
        t0 = time.monotonic()
        generation = uuid.uuid4().hex
        # The published copy: rollback journal, so readers on the shared filesystem need no shared memory.
        _copy_db(self.work_path, self.path, "DELETE", generation=generation)
        # Only once the copy is in place does the working copy claim to descend from it; killed in
        # between, a resume adopts the (newer) published copy instead.
        # Its own connection: this runs on a thread while the event loop keeps writing (WAL allows it).
        conn = sqlite3.connect(self.work_path, isolation_level=None, timeout=60)
        try:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('generation', ?)", (generation,))
        finally:
            conn.close()
        self.published += 1
        self._last_publish = time.monotonic()
        self._publish_cost = self._last_publish - t0

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.join()
        try:
            self.publish()  # the final copy: everything this run stored
        finally:
            self._db.close()
