"""`coldstart report` on a converted demo output; the HTML page rendered in headless Chromium."""

import asyncio
import json
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image, ImageStat

from pipeline.config import ConvertConfig
from pipeline.demo_data import make_demo_dataset
from pipeline.report import build_report
from pipeline.runner import Converter

from .conftest import R1_MODEL, VLM_MODEL, run_cli, start_sims

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    input_path, image_root = make_demo_dataset(tmp / "input", n=20)
    vlm, reasoner = start_sims(reasoner={"wrong_rate": 0.3})
    try:
        cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=image_root, out=tmp / "out",
                            vlm={"url": vlm.url, "model": VLM_MODEL}, samples_per_question=2,
                            reasoner={"url": reasoner.url, "model": R1_MODEL}, progress=False)
        asyncio.run(Converter(cfg).run())
    finally:
        vlm.stop(), reasoner.stop()
    return tmp / "out"


def test_report_numbers_come_from_the_output_folder(converted):
    rep = build_report(converted, max_samples=5)
    s = rep.summary()
    manifest = json.loads((converted / "manifest.json").read_text())
    assert s["funnel"][0] == {"step": "read", "dropped": 0, "remaining": 20}
    assert s["funnel"][-1]["remaining"] == manifest["counts"]["kept"]
    assert s["funnel"][-2]["remaining"] == manifest["counts"]["kept"]  # every drop accounted for
    assert s["reasoning_words"]["n"] == manifest["counts"]["kept"] and len(rep.samples) == 5
    assert set(s["pass_rate_histogram"]) <= {0.5, 1.0} and sum(s["pass_rate_histogram"].values()) == s["reasoning_words"]["n"]
    assert s["by_source"]["train"] == {"read": 20, "kept": manifest["counts"]["kept"],
                                       "rejected": manifest["counts"]["rejected"]}
    import pyarrow.parquet as pq
    texts = pq.read_table(converted / "data", columns=["reasoning"]).column("reasoning").to_pylist()
    wait = next(r for r in s["reflection"] if r["word"] == "wait")
    assert wait["total"] == sum(len(re.findall(r"\bwait\b", t, re.I)) for t in texts) > 0
    assert wait["per_sample"] == round(wait["total"] / len(texts), 3)


def test_report_cli_writes_plots_json_and_html(converted):
    proc = run_cli(["report", str(converted), "--samples", "8"])
    assert proc.returncode == 0, proc.stderr
    assert "Funnel" in proc.stdout and "Reflection words" in proc.stdout
    folder = converted / "report"
    for name in ("funnel.png", "reasoning_length.png", "pass_rate.png"):
        with Image.open(folder / name) as im:
            assert im.width > 300 and ImageStat.Stat(im.convert("L")).stddev[0] > 5
    summary = json.loads((folder / "report.json").read_text())
    assert summary["counts"]["read"] == 20
    html = (folder / "index.html").read_text()
    assert html.count('class="record"') == 8
    assert "http://" not in html.split("<body>", 1)[1].split("<script>")[0].replace(str(converted), "")  # self-contained
    assert run_cli(["report", str(converted / "nope")]).returncode == 2


def test_report_html_renders_records_and_images_in_headless_chromium(converted, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: `make test` installs it")
        pytest.skip("chromium not installed (make test installs it)")
    run_cli(["report", str(converted), "--samples", "6"])
    page = (converted / "report" / "index.html").as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p1'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
    with Image.open(shot) as im:
        assert im.size == (1200, 2400) and ImageStat.Stat(im.convert("L")).stddev[0] > 10
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p2'}",
                          "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count('class="record"') == 6
    assert 'data-images-loaded="6"' in dom  # every record's image decoded in the browser
