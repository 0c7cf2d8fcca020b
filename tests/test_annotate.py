"""Image annotation: real offline OCR, a tiny random Grounding DINO built here, routing, batching,
and the annotations reaching the description request."""

import asyncio
import json
import urllib.request

import pytest
from PIL import Image, ImageDraw, ImageFont

from pipeline.annotate import OcrLine
from pipeline.annotate.ocr import reading_order
from pipeline.annotate.queries import grounding_queries, noun_phrases
from pipeline.config import AnnotationConfig, ConvertConfig
from pipeline.demo_data import make_demo_dataset
from pipeline.runner import Converter

from .conftest import R1_MODEL, VLM_MODEL, start_sims
from .tiny_models import build_tiny_grounding_dino

pytest.importorskip("rapidocr_onnxruntime")


def render(lines: list[tuple[str, tuple[int, int]]], size=(640, 320)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)
    for text, xy in lines:
        draw.text(xy, text, fill="black", font=font)
    return img


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    corpus = ["how many circles are in picture. what color is the square. blue circles. green triangle. red square"] * 20
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("dino") / "gdino", corpus)


def test_rapidocr_reads_rendered_text_and_numbers_in_reading_order():
    from pipeline.annotate.ocr import RapidOcrBackend

    img = render([("TOTAL 42.50", (340, 200)), ("INVOICE 2026", (30, 40)), ("Qty 7", (30, 200))])
    lines = RapidOcrBackend(min_score=0.5).read([img])[0]
    texts = [l.text.replace(" ", "") for l in lines]
    assert texts == ["INVOICE2026", "Qty7", "TOTAL42.50"]  # top row first, then left to right
    for l in lines:
        x1, y1, x2, y2 = l.box
        assert 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000 and l.score >= 0.5
    invoice = lines[0].box
    assert invoice[0] < 100 and invoice[1] < 250  # top-left of a 640x320 canvas, on the 0-1000 scale
    assert RapidOcrBackend(min_score=0.9999).read([img])[0] == []  # the confidence threshold drops lines


def test_easyocr_backend_where_it_imports():
    pytest.importorskip("easyocr")  # needs torchvision: runs on machines that have it
    from pipeline.annotate.ocr import EasyOcrBackend

    lines = EasyOcrBackend(min_score=0.3).read([render([("HELLO 42", (40, 120))])])[0]
    assert any("42" in l.text for l in lines)


def test_reading_order_groups_rows():
    mk = lambda t, x, y: OcrLine(text=t, box=[x, y, x + 100, y + 40], score=1.0)  # noqa: E731
    ordered = reading_order([mk("c", 500, 300), mk("b", 400, 12), mk("a", 10, 0), mk("d", 10, 310)])
    assert [l.text for l in ordered] == ["a", "b", "d", "c"]


def test_grounding_queries_from_question_and_pseudo_cot():
    assert noun_phrases("How many red circles are next to the blue square?") == ["blue square", "red circles"]
    qs = grounding_queries("What color is the car parked near the tree?",
                           "CAPTION: a red car under a large oak tree beside a wooden fence.", max_queries=4)
    assert qs[:2] == ["car parked", "tree"] or "car" in qs[0]
    assert "wooden fence" in qs and len(qs) <= 4


def test_tiny_grounding_dino_end_to_end_boxes_are_normalised(tiny_dino):
    from pipeline.annotate.grounding import GroundingDinoBackend

    dino = GroundingDinoBackend(str(tiny_dino), box_threshold=0.0, text_threshold=0.0)
    images = [Image.new("RGB", (300, 200), "white"), Image.new("RGB", (160, 240), "gray")]
    results = dino.detect(images, [["blue circles", "green triangle"], ["red square"]])
    assert len(results) == 2
    for objects in results:
        assert objects, "threshold 0 keeps every query box"
        assert [o.score for o in objects] == sorted((o.score for o in objects), reverse=True)
        for o in objects:
            x1, y1, x2, y2 = o.box
            assert all(isinstance(v, int) for v in o.box) and 0 <= x1 <= x2 <= 1000 and 0 <= y1 <= y2 <= 1000
            assert 0.0 <= o.score <= 1.0 and isinstance(o.label, str)
    strict = GroundingDinoBackend(str(tiny_dino), box_threshold=1.01, text_threshold=0.0)
    assert strict.detect(images[:1], [["blue circles"]]) == [[]]


def test_models_load_once_and_requests_are_batched(tiny_dino):
    from pipeline.annotate.annotator import Annotator
    from pipeline.images import load_image
    from pipeline.records import Sample
    from pipeline.config import ImageConfig

    cfg = AnnotationConfig(enabled=True, grounding={"enabled": True, "model": str(tiny_dino), "box_threshold": 0.0,
                                                    "text_threshold": 0.0},
                           routing={"grounding_max_ocr_chars": 10_000}, batch_size=4, batch_wait_s=0.2)
    a, b = Annotator(cfg), Annotator(cfg)
    assert a.ocr_backend is b.ocr_backend and a.grounding_backend is b.grounding_backend
    root = make_demo_dataset(__import__("pathlib").Path(__import__("tempfile").mkdtemp()), n=4)[1]
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    images = [load_image(root, p, ImageConfig()) for p in paths]
    samples = [Sample(index=i, id=str(i), source="s", images=[p], question="How many circles are in picture?",
                      answer="1") for i, p in enumerate(paths)]

    async def go():
        return await asyncio.gather(*(a.annotate(s, [im], "CAPTION: blue circles") for s, im in zip(samples, images)))

    results = asyncio.run(go())
    assert a._ocr.batches == [4] and a._ground.batches == [4]  # four samples, one batch each
    assert all(r.route[0] == "ocr:rapidocr" and r.route[1].startswith("grounding:") for r in results)


def test_routing_by_source_and_text_density(tiny_dino, tmp_path):
    from pipeline.annotate.annotator import Annotator
    from pipeline.config import ImageConfig
    from pipeline.images import load_image
    from pipeline.records import Sample

    render([("QUARTERLY REVENUE REPORT 2026", (10, 20)), ("Region North 1200 South 900", (10, 120))]).save(tmp_path / "doc.png")
    Image.new("RGB", (200, 200), "green").save(tmp_path / "scene.png")
    cfg = AnnotationConfig(enabled=True, grounding={"enabled": True, "model": str(tiny_dino)},
                           routing={"ocr_sources": ["docs", "photos"], "grounding_sources": ["photos"],
                                    "grounding_max_ocr_chars": 20})
    ann = Annotator(cfg)

    def run(source, name):
        s = Sample(index=0, id="x", source=source, images=[name], question="Where is the green box?", answer="1")
        return asyncio.run(ann.annotate(s, [load_image(tmp_path, name, ImageConfig())], ""))

    doc = run("photos", "doc.png")
    assert doc.ocr and doc.objects == [] and doc.route[-1].startswith("grounding skipped: ")
    scene = run("photos", "scene.png")
    assert scene.ocr == [] and scene.route[-1].startswith("grounding:")
    assert run("docs", "scene.png").route == ["ocr:rapidocr"]  # OCR only for this source
    assert run("charts", "doc.png").route == ["skipped: source not routed"]


def test_annotations_reach_the_description_request_and_the_record(tmp_path, tiny_dino):
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=8)
    vlm, reasoner = start_sims()
    try:
        cfg = ConvertConfig(
            source_format="llava-cot", input=input_path, image_root=image_root, out=tmp_path / "out",
            vlm={"url": vlm.url, "model": VLM_MODEL}, reasoner={"url": reasoner.url, "model": R1_MODEL},
            annotation={"enabled": True, "grounding": {"enabled": True, "model": str(tiny_dino),
                                                        "box_threshold": 0.0, "text_threshold": 0.0}},
            progress=False)
        asyncio.run(Converter(cfg).run())
        prompts = json.loads(urllib.request.urlopen(vlm.url.removesuffix("/v1") + "/sim/prompts").read())
    finally:
        vlm.stop(), reasoner.stop()
    import pyarrow.parquet as pq

    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    descriptions = [p["text"] for p in prompts if p["stage"] == "description"]
    arithmetic = [r for r in rows.values() if "expression" in r["question"]]
    assert arithmetic
    for row in arithmetic:
        assert row["ocr"], "the rendered expression was read"
        expr = row["ocr"][0]["text"]
        assert "+" in expr and "?" in expr.replace(" ", "") or "=" in expr
        prompt = next(d for d in descriptions if row["question"] in d)
        assert "Text read from the image by OCR" in prompt and f'"{expr}"' in prompt
    shapes = [r for r in rows.values() if r["objects"]]
    assert shapes
    for row in shapes:
        prompt = next(d for d in descriptions if row["question"] in d)
        assert "Objects located by a detector" in prompt
        assert f"{row['objects'][0]['label']} at {row['objects'][0]['box']}" in prompt
        assert all(0 <= v <= 1000 for o in row["objects"] for v in o["box"])
    assert all(r["prompts"]["description_annotated"].startswith("description_annotated.v1@") for r in rows.values())
