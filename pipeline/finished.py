"""A finished run is not run again: re-running the same command on the same input returns the
finished run's manifest at once (no endpoint check, no request, no rewrite of the outputs).

`<out>/.state/finished.json` holds a fingerprint of everything that determines the outputs: the
configuration without operational settings (concurrency, URLs, timeouts, store placement), the
input's identity (path, size and modification time of its files), the prompt and rule files, and
the coldstart version. Anything else (a changed prompt, a new input file, another version) runs
the conversion again, which then pays only for requests the response store does not hold.
`reuse_finished: false` (`--force`) always runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .config import ConvertConfig
from .prompts import DEFAULT_PROMPT_DIR

# Settings that change how fast a run goes, not what it writes.
OPERATIONAL = {"progress", "max_concurrency", "max_in_flight", "verify_workers", "url", "urls", "idle_timeout_s",
               "max_attempts", "max_backoff_s", "api_key_env", "cache_path", "out", "failures_before_cooldown",
               "cooldown_s", "store", "reuse_finished", "event_loop", "read_batch_bytes", "spare_connections"}
MARKER = Path(".state") / "finished.json"


def config_fingerprint(config: dict[str, Any]) -> str:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k not in OPERATIONAL}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return hashlib.sha256(json.dumps(strip(config), sort_keys=True).encode()).hexdigest()


def _files_identity(path: Path) -> list[Any]:
    """(relative name, size, mtime) of a file or of every file under a folder: cheap, no content read."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    if path.is_dir():
        out = []
        for dirpath, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                st = os.stat(os.path.join(dirpath, name))
                out.append([os.path.relpath(os.path.join(dirpath, name), path), st.st_size, st.st_mtime_ns])
        return out
    return [str(path)]  # a hub id or a glob: its name


def run_fingerprint(cfg: ConvertConfig) -> str:
    prompts = Path(cfg.prompts.directory or DEFAULT_PROMPT_DIR)
    blob = {
        "version": __version__,
        "config": config_fingerprint(cfg.model_dump(mode="json")),
        "input": [str(Path(cfg.input).resolve()) if cfg.input else None, _files_identity(Path(cfg.input or ""))],
        "prompts": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in sorted(prompts.glob("*")) if p.is_file()},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def finished_manifest(cfg: ConvertConfig) -> dict[str, Any] | None:
    """The manifest of a finished run with the same fingerprint whose output files are all there."""
    out = Path(cfg.out)
    try:
        marker = json.loads((out / MARKER).read_text())
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files", {})
    needed = [*files.get("parquet", []), files.get("jsonl"), files.get("rejects"), files.get("dataset_info")]
    if marker.get("fingerprint") != run_fingerprint(cfg) or not all(f and (out / f).is_file() for f in needed):
        return None
    return manifest


def mark_finished(cfg: ConvertConfig) -> None:
    from .writers import write_json

    write_json(Path(cfg.out) / MARKER, {"fingerprint": run_fingerprint(cfg)})


def clear_finished(cfg: ConvertConfig) -> None:
    (Path(cfg.out) / MARKER).unlink(missing_ok=True)
