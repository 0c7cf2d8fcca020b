"""Real-shaped rows end to end, over real HTTP, against a simulator that answers in R1's real forms.

The rows (tests/fixtures/realshape/, written from the documented shapes of Mulberry-SFT and
LLaVA-CoT, see its README) carry golds such as `58°.`, `B: 45`, `**B**`, `B: 5 MPa` and a whole
sentence; the simulated reasoner answers with another but equivalent form (option text for a letter,
"C. 123", `\\boxed{...}`, ...). Geometry diagrams are written as transparent PNGs, as such
figures often are.
"""

import asyncio
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import ConvertConfig
from pipeline.runner import Converter
from pipeline.sources import iter_items

from .conftest import R1_MODEL, VLM_MODEL, read_jsonl, start_sims

FIX = Path(__file__).parent / "fixtures" / "realshape"


def _materialise(fmt: str, name: str, root: Path) -> None:
    """The images the rows name: transparent line drawings for diagrams (PNG), photos as JPEG."""
    cfg = ConvertConfig(source_format=fmt, input=FIX / name, image_root=root, out=root.parent / "plan")
    for item in iter_items(cfg, write_images=False):
        for rel in getattr(item, "images", []):
            path = root / rel
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".png"):
                im = Image.new("RGBA", (160, 120), (0, 0, 0, 0))
                for x in range(20, 140):
                    im.putpixel((x, 60), (0, 0, 0, 255))  # a black line on a transparent background
                im.save(path)
            else:
                Image.new("RGB", (160, 120), (200, 120, 40)).save(path, quality=90)


@pytest.fixture(scope="module")
def sims():
    vlm, reasoner = start_sims()
    yield vlm, reasoner
    vlm.stop(), reasoner.stop()


def _convert(tmp_path, sims, fmt, name, judge=False):
    vlm, reasoner = sims
    root = tmp_path / "images_in"
    _materialise(fmt, name, root)
    out = tmp_path / f"out_{judge}"
    cfg = ConvertConfig(source_format=fmt, input=FIX / name, image_root=root, out=out, progress=False,
                        vlm={"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 4},
                        reasoner={"url": reasoner.url, "model": R1_MODEL, "max_concurrency": 4},
                        verify={"judge": {"enabled": judge, "url": vlm.url, "model": VLM_MODEL}})
    manifest = asyncio.run(Converter(cfg).run())
    rows = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    rejects = {r["id"]: r for r in read_jsonl(out / "rejects.jsonl")}
    c = manifest["counts"]
    assert c["kept"] + c["rejected"] == c["read"] == len(rows) + len(rejects)
    return manifest, rows, rejects, out


def _final(row):
    return row["conversations"][-1]["value"].rsplit("<answer> Final Answer:", 1)[1].removesuffix(" </answer>")


def test_mulberry_rows(tmp_path, sims):
    manifest, rows, rejects, out = _convert(tmp_path, sims, "mulberry", "mulberry_sft.json")
    assert manifest["counts"]["read"] == 5
    # Golds C, "58°." (option C's text), "B: 45", B: each kept, ending in the option letter.
    assert {i: _final(rows[i]) for i in rows} == {"mulberry_sft:0": "C", "mulberry_sft:1": "C",
                                                   "mulberry_sft:2": "B", "mulberry_sft:4": "B"}
    assert all(r["match_method"] in ("letter", "option_text", "numeric") for r in rows.values())
    # The simulator did not echo the gold's own form.
    assert any(r["pred_answer"].strip() != r["answer"].strip() for r in rows.values())
    for r in rows.values():
        human = r["conversations"][0]["value"]
        assert human.startswith("<image>\nBased on the image, directly select the correct answer")
        assert human.count("Choices:") == 1 and "\nA: " in human and "\nA. " not in human  # listed once
    # The sentence gold cannot be decided by rules: counted and rejected, never silently kept or dropped.
    assert rejects["mulberry_sft:3"]["reason"] == "undecided"
    assert manifest["counts"]["undecided"] == 1
    # The transparent diagrams were sent on white, and the trainer reads that same file.
    for r in rows.values():
        assert r["images"][0].startswith("images/")
        with Image.open(out / r["images"][0]) as im:  # LLaMA-Factory: a plain convert("RGB")
            rgb = im.convert("RGB")
        assert rgb.getpixel((5, 5)) == (255, 255, 255) and rgb.getpixel((60, 60)) == (0, 0, 0)


def test_mulberry_sentence_gold_decided_by_the_answer_judge(tmp_path, sims):
    manifest, rows, rejects, _ = _convert(tmp_path, sims, "mulberry", "mulberry_sft.json", judge=True)
    row = rows["mulberry_sft:3"]
    assert row["match_method"] == "judge" and row["answer_judge_response"].startswith("VERDICT: SAME")
    assert manifest["counts"]["undecided"] == 0 and not rejects
    assert _final(row) == "The enrollment rate in primary education in 1985 was approximately 76%"


def test_llava_cot_rows(tmp_path, sims):
    manifest, rows, rejects, out = _convert(tmp_path, sims, "llava-cot", "llava_cot_train.jsonl")
    assert manifest["counts"]["read"] == 8
    assert rejects == {"no_image_row": rejects["no_image_row"]} and rejects["no_image_row"]["reason"] == "no_image"
    assert _final(rows["clevr_count_2"]) == "B"   # gold "**B**"
    assert _final(rows["sqa_shear"]) == "B"       # gold "B: 5 MPa"
    assert _final(rows["chart_21"]) == "21"
    # One-line option list ("Options: A: 15 MPa, B: 5 MPa, ...") parsed, and not listed a second time.
    assert [o["text"] for o in rows["sqa_shear"]["options"]] == ["15 MPa", "5 MPa", "20 MPa", "2 MPa"]
    assert "Choices:" not in rows["sqa_shear"]["conversations"][0]["value"]
    # The follow-up turn keeps its context: the earlier question and answer come first.
    conv = rows["vg_multi#turn1"]["conversations"]
    assert [t["from"] for t in conv] == ["human", "gpt", "human", "gpt"]
    assert conv[0]["value"].startswith("<image>\n") and conv[2]["value"].count("<image>") == 0
    assert conv[1]["value"] == rows["vg_multi#turn1"]["context"][0]["answer"]
    # Each JSONL record names exactly as many images as its <image> tokens.
    for rec in read_jsonl(out / "vision_r1_cold.jsonl"):
        n = 1 if isinstance(rec["image"], str) else len(rec["image"])
        assert sum(t["value"].count("<image>") for t in rec["conversations"]) == n
