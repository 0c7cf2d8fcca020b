"""Render a Report: terminal tables (rich), PNG plots (matplotlib), report.json, self-contained HTML."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import jinja2
from rich.console import Console
from rich.table import Table

from . import Report

TEMPLATE = Path(__file__).with_name("report.html.j2")


def print_terminal(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    s = report.summary()
    t = Table(title=f"Funnel — {report.out_dir}")
    for col in ("step", "dropped", "remaining"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for row in s["funnel"]:
        t.add_row(row["step"], str(row["dropped"] or ""), str(row["remaining"]))
    console.print(t)
    reasons = s["counts"].get("rejected_by_reason", {})
    if reasons:
        r = Table(title="Rejected by reason")
        r.add_column("reason"), r.add_column("rows", justify="right")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            r.add_row(reason, str(n))
        console.print(r)
    src = Table(title="Per source")
    for col in ("source", "read", "kept", "rejected", "keep rate"):
        src.add_column(col, justify="left" if col == "source" else "right")
    for name, c in s["by_source"].items():
        src.add_row(name, str(c["read"]), str(c["kept"]), str(c["rejected"]), f"{c['kept'] / max(1, c['read']):.1%}")
    console.print(src)
    refl = Table(title="Reflection words in kept reasoning")
    for col in ("word", "total", "per sample", "samples with"):
        refl.add_column(col, justify="left" if col == "word" else "right")
    for row in s["reflection"]:
        refl.add_row(row["word"], str(row["total"]), f"{row['per_sample']:.2f}", f"{row['samples_with']:.0%}")
    console.print(refl)
    w = s["reasoning_words"]
    console.print(f"reasoning length (words): n={w['n']} mean={w['mean']} p10={w['p10']} p50={w['p50']} "
                  f"p90={w['p90']} max={w['max']}")
    console.print("pass@k: " + ", ".join(f"{k}: {v}" for k, v in s["pass_rate_histogram"].items()))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def write_plots(report: Report, folder: Path) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    funnel = report.summary()["funnel"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["step"] for r in funnel][::-1], [r["remaining"] for r in funnel][::-1], color="#4c72b0")
    ax.set_xlabel("rows remaining"), ax.set_title("Funnel")
    plots["funnel.png"] = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(report.lengths or [0], bins=30, color="#55a868")
    ax.set_xlabel("reasoning length (words)"), ax.set_ylabel("samples"), ax.set_title("Reasoning length")
    plots["reasoning_length.png"] = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(report.pass_rates or [0], bins=[i / 10 for i in range(11)], color="#c44e52")
    ax.set_xlabel("pass rate (k_correct / k)"), ax.set_ylabel("samples"), ax.set_title("pass@k")
    plots["pass_rate.png"] = _png(fig)
    plt.close(fig)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in plots.items():
        (folder / name).write_bytes(data)
    return plots


def write_report(report: Report, folder: Path | None = None) -> Path:
    folder = folder or report.out_dir / "report"
    plots = write_plots(report, folder)
    summary = report.summary()
    (folder / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(TEMPLATE.read_text()).render(
        report=report, summary=summary,
        plots={k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in plots.items()},
    )
    (folder / "index.html").write_text(html, encoding="utf-8")
    return folder / "index.html"
