"""The response store on cluster filesystems: a node-local working copy published atomically
(pipeline/llm/cache.py), what survives kill -9, and when publishing is chosen."""

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.llm import ResponseStore
from pipeline.llm.cache import filesystem_type, resolve_mode

from .conftest import ROOT

# /proc/self/mounts lines in the form Linux writes them (device, mount point, type, options, 0 0).
MOUNTS = """\
overlay / overlay rw,relatime,lowerdir=/var/lib/docker/overlay2/l/ABC,upperdir=/x,workdir=/y 0 0
/dev/nvme0n1p1 /scratch ext4 rw,relatime 0 0
10.0.0.5:/export/datasets /mnt/shared nfs4 rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp 0 0
192.168.1.2@o2ib:/lustre /lustre lustre rw,flock,lazystatfs 0 0
/dev/sdb1 /mnt/shared-local xfs rw,relatime 0 0
tmpfs /mnt/my\\040disk tmpfs rw 0 0
"""


def test_filesystem_type_picks_the_longest_mount_above_the_path():
    assert filesystem_type(Path("/mnt/shared/builds/b1/.state/responses.sqlite"), MOUNTS) == "nfs4"
    assert filesystem_type(Path("/lustre/proj/out/responses.sqlite"), MOUNTS) == "lustre"
    # A mount point that is only a string prefix of the path is not above it.
    assert filesystem_type(Path("/mnt/shared-local/out/responses.sqlite"), MOUNTS) == "xfs"
    assert filesystem_type(Path("/scratch/out.sqlite"), MOUNTS) == "ext4"
    assert filesystem_type(Path("/home/u/out.sqlite"), MOUNTS) == "overlay"
    assert filesystem_type(Path("/mnt/my disk/x"), MOUNTS) == "tmpfs"  # octal-escaped space
    assert resolve_mode("direct", Path("/anything")) == "direct" and resolve_mode("publish", Path("/x")) == "publish"


def _keys(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT key FROM responses")}
    finally:
        conn.close()


def test_publish_mode_writes_locally_and_publishes_a_complete_rollback_journal_copy(tmp_path):
    shared, node_a, node_b = tmp_path / "shared" / "responses.sqlite", tmp_path / "node-a", tmp_path / "node-b"
    store = ResponseStore(shared, "publish", node_a, checkpoint_s=3600)
    assert store.mode == "publish" and store.work_path.parent == node_a
    for i in range(5):
        store.put(f"k{i}", "m", "reasoning", {"choices": [{"message": {"content": str(i)}}]})
    assert not shared.exists()  # nothing written on the shared filesystem between checkpoints
    store.close()
    assert _keys(shared) == {f"k{i}" for i in range(5)}
    conn = sqlite3.connect(shared)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no WAL, no -shm on the share
    conn.close()
    assert sorted(p.name for p in shared.parent.iterdir()) == ["responses.sqlite"]  # no temp files left
    assert store.scratch_path("outcomes.sqlite", tmp_path / "x").parent == node_a
    # Another node resumes from the published copy.
    again = ResponseStore(shared, "publish", node_b)
    assert again.get("k3") == {"choices": [{"message": {"content": "3"}}]} and len(again) == 5
    again.close()


def test_a_stale_working_copy_is_not_trusted_over_a_newer_published_one(tmp_path):
    shared, node_a, node_b = tmp_path / "shared" / "r.sqlite", tmp_path / "a", tmp_path / "b"
    s = ResponseStore(shared, "publish", node_a)
    s.put("old", "m", "x", {})
    s.close()
    s = ResponseStore(shared, "publish", node_b)  # the shard ran again elsewhere and went further
    s.put("new", "m", "x", {})
    s.close()
    s = ResponseStore(shared, "publish", node_a)  # back on node a: its copy predates "new"
    assert s.keys() == {"old", "new"}
    s.close()
    shared.unlink()  # the output was deleted: start from nothing, not from a leftover working copy
    s = ResponseStore(shared, "publish", node_a)
    assert len(s) == 0
    s.close()


_WRITER = """
import sys, time
from pathlib import Path
from pipeline.llm import ResponseStore
store = ResponseStore(Path(sys.argv[1]), "publish", Path(sys.argv[2]), checkpoint_s=0.15)
for i in range(100000):
    store.put(f"k{i:06d}", "m", "reasoning", {"choices": [{"message": {"content": "x" * 200}}]})
    print(i, flush=True)  # stored: a finished request
    time.sleep(0.002)
"""


def test_kill_9_loses_nothing_on_the_same_node_and_at_most_the_last_checkpoint_elsewhere(tmp_path):
    shared, node = tmp_path / "shared" / "responses.sqlite", tmp_path / "node"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(shared), str(node)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        seen_counts = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(seen_counts)) < 3:
            if shared.exists():
                # Readers of the share only ever see complete files, each a superset of the last.
                conn = sqlite3.connect(f"file:{shared}?mode=ro", uri=True)
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                seen_counts.append(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
                conn.close()
            assert proc.poll() is None
            time.sleep(0.03)
        assert len(set(seen_counts)) >= 3 and seen_counts == sorted(seen_counts)
    finally:
        proc.kill()  # SIGKILL: no close(), no final publish
        out, _ = proc.communicate()
    finished = {f"k{int(line):06d}" for line in out.split()}
    published = _keys(shared)
    order = sorted(finished)
    # The published copy is a checkpoint: every request finished before it, none after.
    assert published == set(order[:len(published)]) and 0 < len(published) < len(finished)
    # Resumed on the same node: the working copy survived kill -9 and nothing finished is lost.
    same = ResponseStore(shared, "publish", node)
    assert finished <= same.keys()
    same.close()
    # Resumed on another node: exactly the last published checkpoint.
    other = ResponseStore(shared, "publish", tmp_path / "other-node")
    assert other.keys() >= published
    other.close()


def test_a_convert_run_in_publish_mode_leaves_only_a_published_store_on_the_share(tmp_path, sims, demo_set):
    from .test_convert_e2e import convert_in_process, output_files

    vlm, reasoner = sims
    input_path, image_root = demo_set
    node = tmp_path / "node-local"
    convert_in_process(input_path, image_root, tmp_path / "direct", vlm, reasoner)
    m = convert_in_process(input_path, image_root, tmp_path / "shared", vlm, reasoner,
                           store={"mode": "publish", "local_dir": node})
    assert output_files(tmp_path / "shared") == output_files(tmp_path / "direct")
    state = tmp_path / "shared" / ".state"
    # No -wal/-shm, no scratch: the published store and the finished-run marker (a small file written atomically).
    assert sorted(p.name for p in state.iterdir()) == ["finished.json", "responses.sqlite"]
    assert len(_keys(state / "responses.sqlite")) == m["endpoints"]["vlm"]["sent"] + m["endpoints"]["reasoner"]["sent"]
    # Run again from another node (forced: a finished run would otherwise return at once): every
    # response comes from the published copy.
    again = convert_in_process(input_path, image_root, tmp_path / "shared", vlm, reasoner, reuse_finished=False,
                               store={"mode": "publish", "local_dir": tmp_path / "other-node"})
    assert again["endpoints"]["vlm"]["sent"] + again["endpoints"]["reasoner"]["sent"] == 0


def test_responses_are_stored_compressed_and_old_plain_rows_still_read(tmp_path):
    import sqlite3
    import zlib

    from pipeline.llm.cache import ResponseStore

    trace = {"choices": [{"message": {"content": "Wait, let me check the second row again. " * 200}}]}
    store = ResponseStore(tmp_path / "r.sqlite", mode="direct")
    store.put("k1", "m", "reasoning", trace)
    store.close()
    db = sqlite3.connect(tmp_path / "r.sqlite")
    (blob,) = db.execute("SELECT response FROM responses WHERE key = 'k1'").fetchone()
    assert isinstance(blob, bytes) and len(blob) * 4 < len(json.dumps(trace))  # long repetitive prose shrinks
    assert json.loads(zlib.decompress(blob)) == trace
    # A row written by an earlier version (plain JSON text) is still a stored response: never paid again.
    db.execute("INSERT INTO responses (key, model, stage, created, response) VALUES ('k0', 'm', 'reasoning', 0, ?)",
               (json.dumps(trace),))
    db.commit()
    db.close()
    store = ResponseStore(tmp_path / "r.sqlite", mode="direct")
    assert store.get("k0") == trace and store.get("k1") == trace
    store.close()
