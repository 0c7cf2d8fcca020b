"""Benchmark decontamination that requires the image for short, generic questions.

Rule (pipeline/dedup.py): an overlap of >= dedup.min_specific_words consecutive words rejects by
text alone; a shorter overlap rejects only when the row's image has the benchmark item's content
hash.
"""

import asyncio
import hashlib
import json
import shutil

import pytest
from PIL import Image

from pipeline.config import ConvertConfig
from pipeline.dedup import BenchmarkEntry, Decontaminator, load_benchmark
from pipeline.demo_data import make_demo_dataset
from pipeline.runner import Converter

from .conftest import R1_MODEL, VLM_MODEL, read_jsonl, sim_stats, start_sims

GENERIC = "What is the value of x?"
# MathVista-style long question: specific enough to identify the item by its text.
LONG = ("As shown in the figure, AB is the diameter of circle O, point C is on the circle, and angle "
        "ABC is 40 degrees. What is the measure of angle BAC?")
IMG_A, IMG_B = "a" * 64, "b" * 64


@pytest.fixture
def decon():
    return Decontaminator([BenchmarkEntry(GENERIC, (IMG_A,)), BenchmarkEntry(LONG),
                           BenchmarkEntry("How many cubes are left after removing all red ones?", (IMG_B,))])


@pytest.mark.parametrize("question,images", [
    (GENERIC, [IMG_A]),  # same short question, same image
    ("what is the VALUE of x", [IMG_A]),  # case and punctuation do not matter
    ("Find x. What is the value of x?", [IMG_A]),  # the benchmark question whole inside the row's
    ("Value of x?", [IMG_A]),  # the row's short question whole inside the benchmark's
    (LONG, []),  # a long question is specific by itself
    (LONG, [IMG_B]),  # ... whatever the image
    ("In the diagram AB is the diameter of circle O, point C is on the circle, and angle ABC is 40 degrees. "
     "Find angle BAC.", []),  # 16 consecutive words in common
    ("how many cubes are left after removing all red ones? Answer with a number.", ["c" * 64, IMG_B]),
])
def test_must_reject(decon, question, images):
    assert decon.check(question, images) is not None


@pytest.mark.parametrize("question,images", [
    (GENERIC, []),  # no image known: a generic question alone proves nothing
    (GENERIC, ["c" * 64]),  # another image
    ("How many cubes are left after removing all red ones?", [IMG_A]),  # a benchmark image, another item's question
    ("Describe the weather in the photo.", [IMG_A]),  # same image, unrelated question
    ("In the figure, AB is the diameter of circle O. What is the radius?", []),  # 10 words in common
    ("As shown in the figure, AB is a chord of circle O. What is the radius?", []),  # 6 words in common
    ("", [IMG_A]),
])
def test_must_keep(decon, question, images):
    assert decon.check(question, images) is None


def test_threshold_catches_a_lightly_edited_long_question():
    d = Decontaminator([LONG], n=4, threshold=0.5, min_specific_words=30)
    edited = LONG.replace("point C", "a point C").replace("40 degrees", "forty degrees")
    assert d.check(edited) is not None and "4-grams" in d.check(edited)
    assert d.check("As shown in the figure, what is the measure of angle BAC?") is None  # short: needs the image


def test_reason_names_the_benchmark_item_and_the_image(decon):
    assert decon.check(GENERIC, [IMG_A]).startswith("same image and 6 consecutive words shared with benchmark question #0")
    assert decon.check(LONG).startswith(f"{len(LONG.split())} consecutive words shared with benchmark question #1")


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_benchmark_resolves_images_next_to_the_benchmark_file(tmp_path, monkeypatch):
    bench_dir = tmp_path / "bench"
    digest = _png(bench_dir / "images" / "q1.png", "red")
    (bench_dir / "mathvista.jsonl").write_text(
        json.dumps({"question": GENERIC, "image": "images/q1.png"}) + "\n\n"
        + json.dumps({"question": "Another?", "image_sha256": IMG_B.upper()}) + "\n"
        + json.dumps({"question": "Both?", "image": ["images/q1.png"], "image_sha256": [IMG_A]}) + "\n")
    monkeypatch.chdir(tmp_path)  # not the benchmark folder: the path must not depend on the CWD
    entries = load_benchmark(bench_dir / "mathvista.jsonl")
    assert [(e.question, e.image_sha256, e.where) for e in entries] == [
        (GENERIC, (digest,), "mathvista.jsonl:1"), ("Another?", (IMG_B,), "mathvista.jsonl:3"),
        ("Both?", (IMG_A, digest), "mathvista.jsonl:4")]
    (bench_dir / "array.json").write_text(json.dumps([{"question": "Q1", "image": "images/q1.png"}, "Q2"]))
    assert [(e.question, e.image_sha256) for e in load_benchmark(bench_dir / "array.json")] == [
        ("Q1", (digest,)), ("Q2", ())]
    (bench_dir / "plain.txt").write_text(f"{GENERIC}\n\n{LONG}\n")
    assert [e.question for e in load_benchmark(bench_dir / "plain.txt")] == [GENERIC, LONG]


@pytest.mark.parametrize("row,message", [
    ({"question": GENERIC, "image": "missing.png"}, "benchmark image 'missing.png' cannot be read"),
    ({"question": GENERIC, "image_sha256": "abc"}, "64-character hex"),
    ({"image": "x.png"}, "needs a non-empty \"question\""),
])
def test_bad_benchmark_files_fail_with_the_line(tmp_path, row, message):
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="b.jsonl:2") as err:
        load_benchmark(tmp_path / "b.jsonl")
    assert message in str(err.value)


def test_generic_benchmark_question_rejects_only_the_row_with_the_benchmark_image(tmp_path):
    """End to end: four rows ask the same generic question about four images; the benchmark holds
    that question with one of those images (a copy of the file under its own folder)."""
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=4)
    rows = [json.loads(line) for line in input_path.read_text().splitlines()]
    for row in rows:
        row["conversations"][0]["value"] = "<image>\n" + GENERIC
    input_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench_dir = tmp_path / "bench"
    (bench_dir / "img").mkdir(parents=True)
    shutil.copy(image_root / rows[2]["image"], bench_dir / "img" / "x.png")
    bench = bench_dir / "bench.jsonl"
    bench.write_text(json.dumps({"question": GENERIC + " Choose the closest value.", "image": "img/x.png"}) + "\n"
                     + json.dumps({"question": GENERIC}) + "\n")  # the same text with no image
    vlm, reasoner = start_sims()
    try:
        cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=image_root, out=tmp_path / "out",
                            vlm={"url": vlm.url, "model": VLM_MODEL}, reasoner={"url": reasoner.url, "model": R1_MODEL},
                            dedup={"benchmark_questions": str(bench)}, progress=False)
        manifest = asyncio.run(Converter(cfg).run())
        sent = sim_stats(vlm)["completed"]
    finally:
        vlm.stop(), reasoner.stop()
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    contaminated = [r for r in rejects if r["reason"] == "contaminated"]
    assert [r["id"] for r in contaminated] == [rows[2]["id"]]
    assert contaminated[0]["stage"] == "dedup" and "same image" in contaminated[0]["detail"]
    assert "bench.jsonl:1" in contaminated[0]["detail"]
    assert sent == 2 * 3  # the three other rows went through the VLM (pseudo-CoT + description)
    assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == manifest["counts"]["read"] == 4


def test_deduplicator_finds_the_first_row_and_keeps_a_compact_index():
    import sys

    from pipeline.dedup import Deduplicator

    d = Deduplicator()
    a, b = "a" * 64, "b" * 64
    assert d.check("row-1", [a, b], "How many circles are there?") is None
    # Same images in another order, the same question up to case and spacing: a duplicate of row-1.
    assert d.check("row-2", [b, a], "how many  circles are there?") == "row-1"
    assert d.check("row-3", [a], "How many circles are there?") is None  # other images
    assert d.check("row-4", [a, b], "How many squares are there?") is None  # other question
    assert d.check("row-5", [a], "How many circles are there?") == "row-3"
    # The index holds one small int key per distinct row (kept for the whole run: 100K rows).
    assert len(d._seen) == 3 and all(isinstance(k, int) and sys.getsizeof(k) <= 44 for k in d._seen)
