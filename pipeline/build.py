"""Multi-dataset builds, without Prefect: plan deterministic shards, run one shard, merge.

Shards are slices of each dataset's item stream (every `shard_rows` used items), so the same
input and config always give the same shards. A shard that finished with the same fingerprint
(the settings that determine its output, not concurrency or URLs) is reused as is; an unfinished
one resumes from its response store. The orchestrator (flows/) only decides where shards run.

Shards of one build that run at the same time share the endpoints' capacity instead of owning
fixed slices: shards on threads of one process share one ReplicaScheduler per role; shards in Ray
workers share a named Ray actor per role (pipeline/llm/broker.py). Either way a free slot goes to
whichever shard has a request waiting, and no replica gets more than its max_concurrency.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import eventloop
from .build_config import BuildConfig, DatasetSpec
from .config import ConvertConfig
from .dedup import normalise_question
from .records import Usage
from .finished import config_fingerprint as fingerprint
from .image_files import IMAGES_DIR
from .sources import iter_items, selected
from .writers import PARQUET_SCHEMA, atomic_open, dataset_info, write_json

SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class ShardSpec:
    dataset: str
    shard: int
    n_shards: int
    row_start: int
    row_stop: int
    items: int  # items this shard will use
    out: str
    config: dict[str, Any]  # the shard's ConvertConfig, JSON-able
    scope: str = ""  # the build whose running shards share endpoint capacity ("": none shared)
    broker: str = "process"  # "process": one scheduler per role in this process; "ray": a named Ray actor

    @property
    def label(self) -> str:
        return f"{self.dataset}/shard-{self.shard:05d}-of-{self.n_shards:05d}"


def dataset_convert_config(build: BuildConfig, ds: DatasetSpec, **extra: Any) -> ConvertConfig:
    # max_concurrency stays per replica: running shards share it (see the module docstring).
    base = build.convert.model_dump(mode="json")
    base.update(ds.model_dump(mode="json", include={"source_format", "input", "image_root", "image_roots", "columns",
                                                    "split", "sharegpt", "dataset_info", "dataset", "answer_regex",
                                                    "multi_turn"}),
                source_name=ds.name, sample_fraction=ds.weight, limit=None, progress=False, **extra)
    return ConvertConfig.model_validate(base)


def capacity_scope(build: BuildConfig) -> str:
    return f"{build.name}-{hashlib.sha256(str(build.build_dir.resolve()).encode()).hexdigest()[:10]}"


def plan(build: BuildConfig) -> list[ShardSpec]:
    """Walk each input once and cut it into shards of `shard_rows` used items (cap applied)."""
    specs: list[ShardSpec] = []
    scope, broker = capacity_scope(build), "ray" if build.runner == "ray" else "process"
    for ds in build.datasets:
        cfg = dataset_convert_config(build, ds)
        bounds: list[tuple[int, int, int]] = []
        start, used_in_shard, used, last = 0, 0, 0, -1
        for item in iter_items(cfg, write_images=False):  # planning reads; only shards write embedded images
            last = item.index
            if not selected(item.source, item.id, ds.weight):
                continue
            if ds.max_rows is not None and used >= ds.max_rows:
                last = item.index - 1
                break
            used += 1
            used_in_shard += 1
            if used_in_shard == build.shard_rows:
                bounds.append((start, item.index + 1, used_in_shard))
                start, used_in_shard = item.index + 1, 0
        if used_in_shard or not bounds:
            bounds.append((start, max(start, last + 1), used_in_shard))
        n = len(bounds)
        for i, (lo, hi, items) in enumerate(bounds):
            out = build.build_dir / "shards" / ds.name / f"shard-{i:05d}-of-{n:05d}"
            shard_cfg = dataset_convert_config(build, ds, row_start=lo, row_stop=hi, out=str(out),
                                               shard_rows=build.convert.shard_rows)
            specs.append(ShardSpec(ds.name, i, n, lo, hi, items, str(out), shard_cfg.model_dump(mode="json"),
                                   scope, broker))
    return specs


def shard_roles(cfg: ConvertConfig) -> dict[str, Any]:
    roles: dict[str, Any] = {"vlm": cfg.vlm, "reasoner": cfg.reasoner}
    if cfg.judge.enabled:
        roles["judge"] = cfg.judge
    return roles


def shard_schedulers(spec: ShardSpec, cfg: ConvertConfig) -> dict[str, Any]:
    """The schedulers this shard shares with the build's other running shards, by role."""
    if not spec.scope:
        return {}
    out: dict[str, Any] = {}
    for role, ep in shard_roles(cfg).items():
        args = (spec.scope, role, ep.endpoints, ep.max_concurrency, ep.failures_before_cooldown, ep.cooldown_s)
        if spec.broker == "ray":
            from .llm.broker import ray_scheduler

            out[role] = ray_scheduler(*args, owner=spec.label)
        else:
            from .llm.scheduling import shared_scheduler

            out[role] = shared_scheduler(*args)
    return out


def run_shard(spec: ShardSpec) -> dict[str, Any]:
    """Convert one shard, or reuse it when it already finished with the same fingerprint."""
    from .runner import Converter

    started = time.time()
    out = Path(spec.out)
    fp = fingerprint(spec.config)
    marker = out / SUCCESS
    if marker.is_file() and marker.read_text().strip() == fp and (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        return {**asdict(spec), "status": "reused", "counts": manifest["counts"],
                "usage_by_stage": manifest.get("usage_by_stage", {}), "ran": [started, time.time()]}
    marker.unlink(missing_ok=True)
    cfg = ConvertConfig.model_validate(spec.config)
    schedulers = shard_schedulers(spec, cfg)
    try:
        manifest = eventloop.run(Converter(cfg, schedulers=schedulers).run(), cfg.event_loop)
    finally:  # a Ray broker's lease owner is this attempt: it ends here, whatever happened
        for sched in schedulers.values():
            sched.close()
    with atomic_open(marker) as fh:
        fh.write(fp + "\n")
    return {**asdict(spec), "status": "ran", "counts": manifest["counts"],
            "usage_by_stage": manifest.get("usage_by_stage", {}), "ran": [started, time.time()]}


def _rebase(paths: list[str], shard_out: Path, build_dir: Path) -> list[str]:
    """Paths relative to the build folder. Images a shard wrote itself (embedded or transformed, under
    its images/) move to the build's own content-addressed images/, so the build needs no shard folder."""
    out = []
    for p in paths:
        src = (shard_out / p).resolve()
        if src.parent == (shard_out / IMAGES_DIR).resolve():
            dest = build_dir / IMAGES_DIR / src.name  # the name is the content hash: same name, same bytes
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            src = dest
        out.append(os.path.relpath(src, build_dir.resolve()))
    return out


def merge(build: BuildConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One build folder: data/<dataset>/*.parquet, <dataset>.jsonl, one dataset_info.json,
    rejects.jsonl, manifest.json. Duplicates across shards are removed here (within a shard they
    never reached a model)."""
    root = build.build_dir
    results = sorted(results, key=lambda r: ([d.name for d in build.datasets].index(r["dataset"]), r["shard"]))
    seen: dict[str, str] = {}
    info: dict[str, Any] = {}
    per_dataset: dict[str, dict[str, Any]] = {}
    usage: dict[str, Usage] = {}
    by_reason: Counter = Counter()
    with atomic_open(root / "rejects.jsonl") as rejects_out:
        for ds in build.datasets:
            mine = [r for r in results if r["dataset"] == ds.name]
            counts = {"read": 0, "kept": 0, "rejected": 0, "rejected_by_reason": Counter()}
            data_dir = root / "data" / ds.name
            data_dir.mkdir(parents=True, exist_ok=True)
            names = []
            with atomic_open(root / f"{ds.name}.jsonl") as jsonl:
                for r in mine:
                    shard_out = Path(r["out"])
                    counts["read"] += r["counts"]["read"]
                    for stage, u in r.get("usage_by_stage", {}).items():
                        usage.setdefault(stage, Usage()).add(Usage.model_validate(u))
                    for line in (shard_out / "rejects.jsonl").read_text().splitlines():
                        rej = json.loads(line)
                        counts["rejected_by_reason"][rej["reason"]] += 1
                        rejects_out.write(json.dumps({"dataset": ds.name, **rej}, ensure_ascii=False) + "\n")
                    rows = pq.read_table(shard_out / "data").to_pylist() if (shard_out / "data").exists() else []
                    keep = []
                    for row in rows:
                        key = hashlib.sha256(json.dumps(
                            [sorted(row["image_sha256"]), normalise_question(row["question"])]).encode()).hexdigest()
                        if key in seen:
                            counts["rejected_by_reason"]["duplicate"] += 1
                            rejects_out.write(json.dumps({
                                "dataset": ds.name, "id": row["id"], "source": row["source"], "stage": "merge",
                                "reason": "duplicate", "detail": f"same image and question as {seen[key]} (another shard)",
                            }) + "\n")
                            continue
                        seen[key] = f"{ds.name}:{row['id']}"
                        row["images"] = _rebase(row["images"], shard_out, root)
                        row["image"] = row["images"][0] if row["images"] else ""
                        keep.append(row)
                        image = row["images"][0] if len(row["images"]) == 1 else row["images"]
                        jsonl.write(json.dumps({"id": row["id"], "image": image,
                                                "conversations": row["conversations"]}, ensure_ascii=False) + "\n")
                    name = f"train-{r['shard']:05d}-of-{r['n_shards']:05d}.parquet"
                    with atomic_open(data_dir / name, "wb") as fh:
                        pq.write_table(pa.Table.from_pylist(keep, schema=PARQUET_SCHEMA), fh, compression="zstd")
                    names.append(name)
                    counts["kept"] += len(keep)
            for stale in data_dir.glob("*.parquet"):
                if stale.name not in names:
                    stale.unlink()
            counts["rejected"] = counts["read"] - counts["kept"]
            assert counts["rejected"] == sum(counts["rejected_by_reason"].values()), "bookkeeping error in merge"
            counts["rejected_by_reason"] = dict(sorted(counts["rejected_by_reason"].items()))
            by_reason.update(counts["rejected_by_reason"])
            per_dataset[ds.name] = counts
            entry = dataset_info(ds.name)
            entry[ds.name]["file_name"] = f"{ds.name}.jsonl"
            info.update(entry)
    write_json(root / "dataset_info.json", info)
    totals = {k: sum(c[k] for c in per_dataset.values()) for k in ("read", "kept", "rejected")}
    manifest = {
        "build": build.name,
        "counts": {**totals, "rejected_by_reason": dict(sorted(by_reason.items()))},
        "datasets": per_dataset,
        "usage_by_stage": {s: u.model_dump() for s, u in usage.items()},
        "shards": [{"label": f"{r['dataset']}/shard-{r['shard']:05d}", "status": r["status"],
                    "rows": [r["row_start"], r["row_stop"]], **{k: r["counts"][k] for k in ("read", "kept", "rejected")},
                    "ran_unix": r.get("ran")}  # [start, end]: shows how many shards ran at once
                   for r in results],
        "files": {"dataset_info": "dataset_info.json", "rejects": "rejects.jsonl",
                  "parquet": {ds.name: f"data/{ds.name}/" for ds in build.datasets},
                  "jsonl": {ds.name: f"{ds.name}.jsonl" for ds in build.datasets}},
        "config": build.model_dump(mode="json"),
    }
    write_json(root / "manifest.json", manifest)
    return manifest


def markdown_summary(manifest: dict[str, Any]) -> str:
    lines = [f"# Build `{manifest['build']}`", "", "| dataset | read | kept | rejected |", "|---|---:|---:|---:|"]
    for name, c in manifest["datasets"].items():
        lines.append(f"| {name} | {c['read']} | {c['kept']} | {c['rejected']} |")
    c = manifest["counts"]
    lines += [f"| **total** | {c['read']} | {c['kept']} | {c['rejected']} |", "",
              "| reject reason | rows |", "|---|---:|"]
    lines += [f"| {reason} | {n} |" for reason, n in c["rejected_by_reason"].items()]
    lines += ["", "| stage | requests | prompt tokens | completion tokens |", "|---|---:|---:|---:|"]
    for stage, u in manifest["usage_by_stage"].items():
        lines.append(f"| {stage} | {u['requests']} | {u['prompt_tokens']} | {u['completion_tokens']} |")
    ran = sum(s["status"] == "ran" for s in manifest["shards"])
    lines += ["", f"Shards: {len(manifest['shards'])} ({ran} ran, {len(manifest['shards']) - ran} reused)."]
    return "\n".join(lines)

