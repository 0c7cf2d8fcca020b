"""`coldstart report OUT_DIR`: a dataset report built from an output folder alone.

Funnel (read -> each stage/filter -> kept), reasoning-length distribution, pass@k histogram,
per-source breakdown and the reflection-word table the Vision-R1 paper uses; printed in the
terminal, written as PNG plots, report.json and a self-contained HTML page (images inlined) that
shows sample records. Columns are streamed from Parquet, so 100K-row outputs stay cheap; the page
shows a bounded number of records.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

STAGE_ORDER = ["read", "validate", "dedup", "image", "pseudo_cot", "description", "reasoning", "verify",
               "filter", "rewrite", "judge", "model"]
REFLECTION_WORDS = {
    "wait": r"\bwait\b", "hmm": r"\bhmm+\b", "alternatively": r"\balternatively\b", "check": r"\bcheck(?:s|ed|ing)?\b",
    "verify": r"\bverif(?:y|ies|ied|ying)\b", "double-check": r"\bdouble[- ]check", "let me": r"\blet me\b",
    "actually": r"\bactually\b", "however": r"\bhowever\b", "but": r"\bbut\b",
}
_REFLECT = {w: re.compile(p, re.IGNORECASE) for w, p in REFLECTION_WORDS.items()}


@dataclass
class Report:
    out_dir: Path
    manifest: dict[str, Any]
    funnel: list[dict[str, Any]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # reasoning words per kept sample
    pass_rates: list[float] = field(default_factory=list)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    reflection: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    rejects_sample: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.lengths)
        srt = sorted(self.lengths)
        pct = (lambda q: srt[min(n - 1, int(q * n))] if n else 0)
        return {
            "counts": self.manifest["counts"],
            "funnel": self.funnel,
            "reasoning_words": {"n": n, "mean": round(sum(srt) / n, 1) if n else 0,
                                "p10": pct(0.1), "p50": pct(0.5), "p90": pct(0.9), "max": srt[-1] if n else 0},
            "pass_rate_histogram": dict(sorted(Counter(round(p, 3) for p in self.pass_rates).items())),
            "by_source": self.by_source,
            "reflection": self.reflection,
            "filters": self.manifest.get("filters", {}),
        }


def _funnel(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    counts = manifest["counts"]
    by_stage: dict[str, int] = counts.get("rejected_by_stage", {})
    rows, remaining = [{"step": "read", "dropped": 0, "remaining": counts["read"]}], counts["read"]
    for stage in STAGE_ORDER + sorted(set(by_stage) - set(STAGE_ORDER)):
        if by_stage.get(stage):
            remaining -= by_stage[stage]
            rows.append({"step": stage, "dropped": by_stage[stage], "remaining": remaining})
    rows.append({"step": "kept", "dropped": 0, "remaining": counts["kept"]})
    return rows


def _thumbnail(path: Path, size: int = 320) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:
        return None


def build_report(out_dir: Path, max_samples: int = 50) -> Report:
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    report = Report(out_dir=out_dir, manifest=manifest, funnel=_funnel(manifest))
    totals = Counter()
    with_word = Counter()
    kept_by_source: Counter = Counter()
    columns = ["id", "source", "images", "question", "answer", "pred_answer", "description", "reasoning",
               "pass_rate", "filter"]
    for shard in sorted((out_dir / "data").glob("*.parquet")):
        pf = pq.ParquetFile(shard)
        names = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=512, columns=names):
            for row in batch.to_pylist():
                text = row["reasoning"] or ""
                report.lengths.append(len(text.split()))
                report.pass_rates.append(float(row.get("pass_rate", 1.0) or 0.0))
                kept_by_source[row["source"]] += 1
                for word, pattern in _REFLECT.items():
                    n = len(pattern.findall(text))
                    totals[word] += n
                    with_word[word] += n > 0
                if len(report.samples) < max_samples:
                    row["thumbs"] = [_thumbnail(out_dir / p) for p in row.get("images") or []]
                    report.samples.append(row)
    n = max(1, len(report.lengths))
    report.reflection = [{"word": w, "total": totals[w], "per_sample": round(totals[w] / n, 3),
                          "samples_with": round(with_word[w] / n, 3)} for w in REFLECTION_WORDS]
    rejected_by_source: Counter = Counter()
    rejects_path = out_dir / "rejects.jsonl"
    if rejects_path.exists():
        with open(rejects_path) as fh:
            for line in fh:
                rej = json.loads(line)
                rejected_by_source[rej.get("source") or "?"] += 1
                if len(report.rejects_sample) < max_samples:
                    report.rejects_sample.append(rej)
    for source in sorted(set(kept_by_source) | set(rejected_by_source)):
        kept, rej = kept_by_source[source], rejected_by_source[source]
        report.by_source[source] = {"read": kept + rej, "kept": kept, "rejected": rej}
    return report
