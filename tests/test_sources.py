"""Source readers: formats, per-row errors, multi-turn, streaming."""

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import tracemalloc
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import ColumnMapping, ConvertConfig, ShareGptMapping
from pipeline.records import Rejected, Sample, Turn
from pipeline.runner import Converter
from pipeline.sources import check_input, iter_items, open_source
from pipeline.sources.answers import gold_answer
from pipeline.sources.generic import read_jsonl_mapped, read_parquet_mapped
from pipeline.sources.hf import read_hf
from pipeline.sources.llava_cot import read_llava_cot
from pipeline.sources.mulberry import read_mulberry
from pipeline.sources.sharegpt import read_sharegpt

LLAVA_GPT = ("<SUMMARY>I will count.</SUMMARY> <CAPTION>Two cats.</CAPTION> <REASONING>One, two.</REASONING> "
             "<CONCLUSION>B</CONCLUSION>")


def test_llava_cot_rows(tmp_path):
    rows = [
        {"id": "a", "image": "x/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nHow many cats?\nA. 1\nB. 2"}, {"from": "gpt", "value": LLAVA_GPT}]},
        {"id": "multi", "image": "x/2.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "<CONCLUSION>red</CONCLUSION>"},
            {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "<CONCLUSION>round</CONCLUSION>"}]},
        {"id": "noconc", "image": "x/3.jpg", "conversations": [
            {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "no tags here"}]},
        {"id": "noconv", "image": "x/4.jpg"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n{not json\n" +
                    "\n".join(json.dumps(r) for r in rows[2:]) + "\n")
    items = list(read_llava_cot(path, "llava"))
    samples = [i for i in items if isinstance(i, Sample)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [s.id for s in samples] == ["a", "multi", "multi#turn1", "noconc"]
    a = samples[0]
    assert a.question == "How many cats?\nA. 1\nB. 2" and a.answer == "B" and a.images == ["x/1.jpg"]
    assert [o.letter for o in a.options] == ["A", "B"]
    assert (samples[1].answer, samples[2].answer, samples[2].question) == ("red", "round", "And the shape?")
    assert samples[3].answer == ""  # validated later as missing_answer
    assert [(r.id, r.reason) for r in rejected] == [("llava:line3", "malformed_row"), ("noconv", "malformed_row")]


def test_mulberry_rows_and_broken_array(tmp_path):
    rows = [
        {"images": ["m/1.png"], "messages": [
            {"role": "user", "content": "<image>\nQuestion: Which is larger?\nA. 3\nB. 5"},
            {"role": "assistant", "content": "### Image Description: ... ### Step 1: compare. ### The final answer is: B"}]},
        {"images": "m/2.png", "messages": [
            {"role": "user", "content": "<image>\nWhat is 2+2?"},
            {"role": "assistant", "content": "### The final answer is: 4."}]},
        {"images": [], "messages": []},
    ]
    good = tmp_path / "mulberry.json"
    good.write_text(json.dumps(rows))
    items = list(read_mulberry(good, "mulberry"))
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "Rejected"]
    assert items[0].question == "Which is larger?\nA. 3\nB. 5" and items[0].answer == "B"
    assert items[1].answer == "4" and items[1].images == ["m/2.png"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(rows[:2])[:-40])
    items = list(read_mulberry(broken, "mulberry"))
    assert isinstance(items[0], Sample)
    assert isinstance(items[-1], Rejected) and items[-1].reason == "malformed_input"


def test_generic_jsonl_and_parquet_with_mapping(tmp_path):
    cols = ColumnMapping(id="qid", image="img", question="q", answer="a", options="choices")
    rows = [{"qid": 7, "img": "p/1.png", "q": "Pick one", "a": "B", "choices": ["cat", "dog"]},
            {"qid": None, "img": ["p/2.png", "p/3.png"], "q": "Compare", "a": "left", "choices": None}]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{**rows[0], "img": ["p/1.png"]}, rows[1]]), pqf)
    for items in (list(read_jsonl_mapped(jl, "mine", cols)), list(read_parquet_mapped(pqf, "mine", cols))):
        assert items[0].id == "7" and [(o.letter, o.text) for o in items[0].options] == [("A", "cat"), ("B", "dog")]
        assert items[1].images == ["p/2.png", "p/3.png"] and items[1].id.startswith("mine:")


def test_open_source_assigns_indices_and_limit(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "image": "a.png", "conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "<CONCLUSION>1</CONCLUSION>"}]}) + "\n"
        for i in range(10)))
    cfg = ConvertConfig(input=path, limit=4)
    items = list(open_source(cfg))
    assert [(i.index, i.id) for i in items] == [(0, "0"), (1, "1"), (2, "2"), (3, "3")]


def _first_items_peak_bytes(gen, n=5) -> int:
    tracemalloc.start()
    try:
        for _, _item in zip(range(n), gen):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_readers_stream_a_300k_row_file(tmp_path):
    """Reading the first rows of a 300K-row file must not load the file (~60 MB as rows)."""
    row = {"id": "x", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown here in this picture?"},
        {"from": "gpt", "value": "<CONCLUSION>a cat</CONCLUSION>"}]}
    line = json.dumps(row) + "\n"
    jl = tmp_path / "big.jsonl"
    with open(jl, "w") as fh:
        for _ in range(300_000):
            fh.write(line)
    mrow = {"images": ["a.png"], "messages": [{"role": "user", "content": "<image>\nWhat?"},
                                              {"role": "assistant", "content": "The final answer is: cat"}]}
    mj = tmp_path / "big.json"
    with open(mj, "w") as fh:
        fh.write("[" + ",".join([json.dumps(mrow)] * 300_000) + "]")
    assert jl.stat().st_size > 40_000_000 and mj.stat().st_size > 30_000_000
    assert _first_items_peak_bytes(read_llava_cot(jl, "big")) < 2_000_000
    assert _first_items_peak_bytes(read_mulberry(mj, "big")) < 2_000_000


# ---------------------------------------------------------------------------------------------------------------
# Real files and real shapes (tests/fixtures/*/PROVENANCE, tests/fixtures/realshape/README.md)



FIXTURES = Path(__file__).parent / "fixtures"
LF = FIXTURES / "llama_factory"
REAL = FIXTURES / "realshape"


def _samples(items):
    return [i for i in items if isinstance(i, Sample)]


def _opts(s):
    return [(o.letter, o.text) for o in s.options]


def test_mllm_demo_read_through_its_own_dataset_info_entry(tmp_path):
    cfg = ConvertConfig(dataset_info=LF / "dataset_info.json", dataset="mllm_demo", out=tmp_path / "out")
    assert cfg.source_format == "sharegpt" and cfg.input == LF / "mllm_demo.json" and cfg.image_root == LF
    assert (cfg.sharegpt.messages, cfg.sharegpt.role_tag, cfg.sharegpt.user_tag) == ("messages", "role", "user")
    assert cfg.sharegpt.system_tag is None  # the entry's tags leave it out: LLaMA-Factory sets it to None too
    check_input(cfg)
    items = list(iter_items(cfg))
    assert all(isinstance(i, Sample) for i in items) and len(items) == 12  # 6 rows x 2 question turns
    first, follow = items[0], items[1]
    assert (first.id, first.question, first.images, first.turn_images, first.context) == (
        "mllm_demo:0", "Who are they?", ["mllm_demo_data/1.jpg"], 1, [])
    assert first.answer == "They're Kane and Gretzka from Bayern Munich."  # conversation data: the whole reply
    # "<image>" at the end of the follow-up and the same image listed twice: the follow-up gets both.
    assert (follow.id, follow.question, follow.images, follow.turn_images) == (
        "mllm_demo:0#turn1", "What are they doing?", ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"], 1)
    assert follow.context == [Turn(question="Who are they?", answer="They're Kane and Gretzka from Bayern Munich.",
                                   turn_images=1)]
    # A follow-up without its own <image> still carries the image of its context turn.
    muller = items[3]
    assert (muller.question, muller.images, muller.turn_images) == (
        "Why is he on the ground?", ["mllm_demo_data/2.jpg"], 0)
    assert muller.context[0].question == "Who is he?"
    assert items[6].question == "他们是谁？"
    assert items[7].context[0].answer == "他们是拜仁慕尼黑的凯恩和格雷茨卡。"
    for s in items:  # every path resolves from the dataset_dir, as LLaMA-Factory's media_dir does
        assert s.images and all((cfg.image_root / p).is_file() for p in s.images)
        assert sum(t.turn_images for t in s.context) + s.turn_images == len(s.images)
    firsts = list(iter_items(cfg.model_copy(update={"multi_turn": "first"})))
    assert [s.id for s in firsts] == [f"mllm_demo:{i}" for i in range(6)] and all(not s.context for s in firsts)


MULBERRY_EXPECTED = [
    # (question start, options, answer, images)
    ("Based on the image, directly select the correct answer for the following question:\nQuestion: In the figure, "
     "a \\parallel b, c \\parallel d, and m \\angle 4 = 57. Find the measure of \\angle 5.\nChoices:\nA: 57\nB: 113\n"
     "C: 123\nD: 133", [("A", "57"), ("B", "113"), ("C", "123"), ("D", "133")], "C",
     ["geo3k/train/567/img_diagram.png"]),
    ("Based on the image, directly select the correct answer for the following question:\nQuestion: Find m \\angle 2."
     "\nChoices:\nA: 29°\nB: 32°\nC: 58°\nD: 122°",
     [("A", "29°"), ("B", "32°"), ("C", "58°"), ("D", "122°")], "58°",
     ["geo3k/train/1092/img_diagram.png"]),
    ("Based on the image, directly select the correct answer for the following question:\nQuestion: Find x.\nChoices:"
     "\nA: 30\nB: 45\nC: 60\nD: 90", [("A", "30"), ("B", "45"), ("C", "60"), ("D", "90")], "B: 45",
     ["geo3k/train/74/img_diagram.png"]),
    ("What was the enrollment rate in primary education in 1985?", [],
     "The enrollment rate in primary education in 1985 was approximately 76%", ["chartqa/train/png/two_col_1234.png"]),
    # Reflection row: the abandoned path's "final answer" (A) must not win over the last one.
    ("Based on the image, directly select the correct answer for the following question:\nQuestion: Find x.\nChoices:"
     "\nA: 4\nB: 6\nC: 8\nD: 19", [("A", "4"), ("B", "6"), ("C", "8"), ("D", "19")], "B",
     ["geo3k/train/661/img_diagram.png"]),
]


def _view(s):
    return (s.question, _opts(s), s.answer, s.images)


def test_realshape_mulberry_rows_by_both_readers():
    direct = list(read_mulberry(REAL / "mulberry_sft.json", "mulberry"))
    assert [_view(s) for s in direct] == [tuple(e) for e in MULBERRY_EXPECTED]
    assert all(s.turn_images == 1 and not s.context for s in direct)
    # The Vision-R1-cold shape of the same rows (conversations, from/value, user/assistant) via dataset_info.
    cfg = ConvertConfig(dataset_info=REAL / "dataset_info.json", dataset="realshape_mulberry")
    assert [_view(s) for s in iter_items(cfg)] == [tuple(e) for e in MULBERRY_EXPECTED]


LLAVA_EXPECTED = {
    "clevr_count_1": ("Subtract all tiny shiny balls. Subtract all purple objects. How many objects are left?\n"
                      "A. 4\nB. 8\nC. 2\nD. 6", [("A", "4"), ("B", "8"), ("C", "2"), ("D", "6")], "B",
                      ["CLEVR_v1.0/images/train/CLEVR_train_000001.png"]),
    "clevr_count_2": ("How many cylinders are there?\nA. 1\nB. 2\nC. 3", [("A", "1"), ("B", "2"), ("C", "3")], "**B**",
                      ["CLEVR_v1.0/images/train/CLEVR_train_000002.png"]),
    "sqa_shear": ("Determine the shear modulus of the polymer.\nOptions: A: 15 MPa, B: 5 MPa, C: 20 MPa, D: 2 MPa",
                  None, "B: 5 MPa", ["ai2d/abc_images/shear_block.png"]),
    "chart_21": ("What is the highest value in the blue bars?", [], "21", ["chartqa/train/png/multi_col_100.png"]),
    "coco_sentence": ("What is on the plate?", [], "The plate holds broccoli and bread.",
                      ["coco/train2017/000000000009.jpg"]),
    "no_image_row": ("What is 2 + 3?", [], "5", []),
    "vg_multi": ("What colour is the bus?", [], "Red", ["vg/VG_100K/2356.jpg"]),
    "vg_multi#turn1": ("And how many decks does it have?", [], "2", ["vg/VG_100K/2356.jpg"]),
}


def _check_llava(samples):
    assert [s.id for s in samples] == list(LLAVA_EXPECTED)
    for s in samples:
        question, options, answer, images = LLAVA_EXPECTED[s.id]
        assert (s.question, s.answer, s.images) == (question, answer, images), s.id
        if options is not None:  # the inline "Options: A: x, B: y" layout is left to the option parser's own tests
            assert _opts(s) == options, s.id
    multi = samples[-1]
    assert multi.context == [Turn(question="What colour is the bus?", answer="Red", turn_images=1)]
    assert (multi.turn_images, samples[-2].turn_images, samples[5].turn_images) == (0, 1, 0)


def test_realshape_llava_cot_rows_by_both_readers():
    _check_llava(_samples(read_llava_cot(REAL / "llava_cot_train.jsonl", "llava")))
    cfg = ConvertConfig(dataset_info=REAL / "dataset_info.json", dataset="realshape_llava_cot")
    items = list(iter_items(cfg))
    assert all(isinstance(i, Sample) for i in items)
    # sharegpt rows without an "id" column get positional ids; compare by position.
    _check_llava([s.model_copy(update={"id": k}) for s, k in zip(items, LLAVA_EXPECTED)])


def test_published_llava_cot_readme_examples():
    items = list(read_llava_cot(FIXTURES / "published" / "llava_cot_readme.jsonl", "readme"))
    assert [(s.id, s.answer, s.images) for s in items] == [
        ("llava_cot_readme_1", "**B**", ["figures/reasoning.png"]),
        ("llava_cot_readme_2", "B: 5 MPa", ["figures/science.png"])]
    assert items[0].question.startswith("Subtract all tiny shiny balls.") and items[0].question.endswith("D. 6")
    assert items[1].question.endswith("**Options:** A: 15 MPa, B: 5 MPa, C: 20 MPa, D: 2 MPa")


@pytest.mark.parametrize("text,regex,expected", [
    ("<SUMMARY> s </SUMMARY>\n\n<CONCLUSION> 21 </CONCLUSION>", None, "21"),
    ("### Step 1:\nx\n\n### The final answer is:\nC", None, "C"),
    ("Answer:D", None, "D"),  # Mulberry's CoMCTS input rows
    ("<think>\nx\n</think>\n<answer> Final Answer:B </answer>", None, "B"),  # Vision-R1-cold output read back
    ("**Answer:** 12 cm", None, "12 cm"),
    ("They're Kane and Gretzka from Bayern Munich.", None, "They're Kane and Gretzka from Bayern Munich."),
    # "answer:" inside a sentence is prose, not a label: the whole reply stays.
    ("The short answer: it depends on the light.", None, "The short answer: it depends on the light."),
    ("Reasoning... so the result is [[42]] overall", r"\[\[(.+?)\]\]", "42"),
    ("no brackets here", r"\[\[(.+?)\]\]", None),  # a configured regex that misses is a missing answer
    ("   ", None, None),
])
def test_gold_answer_forms(text, regex, expected):
    assert gold_answer(text, re.compile(regex) if regex else None) == expected


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_sharegpt_rows_as_llama_factory_reads_them(tmp_path):
    m = ShareGptMapping(messages="messages", images="images", system="system", role_tag="role", content_tag="content",
                        user_tag="user", assistant_tag="assistant")

    def row(*turns, images="a.png", **extra):
        return {"messages": [{"role": r, "content": c} for r, c in turns], "images": images, **extra}

    rows = [
        row(("system", "You are a geometry tutor."), ("user", "<image>Find x.\nA. 3\nB. 4"),
            ("assistant", "### The final answer is:\nB"), id="sys_turn"),
        row(("user", "<image>What is shown?"), ("assistant", "A dog."), system="Be brief.", id="sys_column"),
        row(("user", "<image>Q1"), ("assistant", "A1"), ("user", "Q2"), id="odd"),  # last question unanswered
        row(("assistant", "A0"), ("user", "<image>Q"), id="order"),
        row(("user", "<image>Q"), ("function_call", "{}"), id="tool"),
        row(("user", "<image>Q"), ("assistant", "A"), images=["a.png", "b.png"], id="mismatch"),
        row(("user", "<image><image>Compare."), ("assistant", "Left."), images=["a.png", "b.png"], id="two"),
        {"messages": [{"role": "user", "content": ["<image>", "Q"]}, {"role": "assistant", "content": "A"}],
         "id": "parts"},
        row(("user", "Q without token"), ("assistant", "A"), images=["a.png"], id="notoken"),
        row(("user", "<image>Q1"), ("assistant", ""), ("user", "Q2"), ("assistant", "A2"), id="noctx"),
        row(("user", "<image>Q"), ("assistant", "A"), images=[], id="tokens_no_images"),
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    items = {i.id: i for i in read_sharegpt(path, "d", m)}
    assert (items["sys_turn"].system, items["sys_turn"].answer, _opts(items["sys_turn"])) == (
        "You are a geometry tutor.", "B", [("A", "3"), ("B", "4")])
    assert (items["sys_column"].system, items["sys_column"].answer) == ("Be brief.", "A dog.")
    reasons = {k: (v.reason, v.detail) for k, v in items.items() if isinstance(v, Rejected)}
    assert reasons["odd"][0] == "malformed_row" and "no answer turn" in reasons["odd"][1]
    assert reasons["order"][0] == "malformed_row" and "'assistant'" in reasons["order"][1]
    assert reasons["tool"][0] == "unsupported_row"
    assert reasons["mismatch"] == ("image_token_mismatch", "1 <image> tokens in the question turns but 2 images")
    assert reasons["parts"][0] == "malformed_row" and "list" in reasons["parts"][1]
    assert reasons["noctx#turn1"][0] == "missing_context"
    assert items["noctx"].answer == "" and isinstance(items["noctx"], Sample)  # rejected later as missing_answer
    assert (items["two"].images, items["two"].turn_images) == (["a.png", "b.png"], 2)
    assert (items["notoken"].images, items["notoken"].turn_images) == (["a.png"], 1)
    # No images at all is the runner's `no_image` reject, not a token mismatch.
    assert (items["tokens_no_images"].images, items["tokens_no_images"].turn_images) == ([], 0)
    # The same rows as a JSON array (streamed with ijson) read identically.
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(rows))
    assert [i.model_dump() for i in read_sharegpt(arr, "d", m)] == [i.model_dump() for i in read_sharegpt(path, "d", m)]


def test_dataset_info_errors_fail_the_config(tmp_path):
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({
        "a": {"file_name": "a.json"},
        "hub": {"hf_hub_url": "org/set", "formatting": "sharegpt"},
        "nomsg": {"file_name": "b.json", "formatting": "sharegpt", "columns": {"images": "images"}}}))
    for name, needle in [("zzz", "entries: a, hub, nomsg"), ("a", "'alpaca'"),
                         ("hub", "--source-format hf --input org/set"), ("nomsg", "messages")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            ConvertConfig(dataset_info=info, dataset=name)
    with pytest.raises(ValueError, match="answer_regex"):
        ConvertConfig(answer_regex="(unclosed")




def test_malformed_rows_are_per_row_rejects(tmp_path, sims):
    vlm, reasoner = sims
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "ok.png")

    def row(rid, image="ok.png", q="What is the decisive value?", a="7"):
        return json.dumps({"id": rid, "image": image, "question": q, "answer": a}).encode()

    lines = [
        row("good"),
        b'{"id": "latin1", "image": "ok.png", "question": "caf\xe9?", "answer": "7"}',  # invalid UTF-8
        row("nul_path", image="ok.png\u0000.jpg"),
        row("nul_question", q="What\u0000is it?"),
        b'["not", "an", "object"]',
        row("number", image=42),
        row("dict", image={"src": "ok.png"}),
        row("nested", image=[["ok.png"]]),
        row("good2", q="And the decisive value here?"),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = ConvertConfig(source_format="jsonl", input=path, image_root=root, out=tmp_path / "out",
                        vlm={"url": vlm.url, "model": "sim-qwen2.5-vl", "max_concurrency": 4},
                        reasoner={"url": reasoner.url, "model": "sim-r1", "max_concurrency": 4, "max_backoff_s": 0.2},
                        progress=False)
    manifest = asyncio.run(Converter(cfg).run())
    assert manifest["counts"]["read"] == 9
    assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 9
    rejects = {r["id"]: (r["stage"], r["reason"], r["detail"])
               for r in map(json.loads, (cfg.out / "rejects.jsonl").open())}
    assert rejects["d:line2"][:2] == ("read", "malformed_row") and "not valid UTF-8 (byte 0xe9" in rejects["d:line2"][2]
    assert rejects["nul_path"][:2] == ("read", "bad_image_field") and "NUL" in rejects["nul_path"][2]
    assert rejects["nul_question"] == ("read", "malformed_row", "NUL byte in the question")
    assert rejects["d:line5"] == ("read", "malformed_row", "line 5: a JSON list, not an object")
    assert rejects["number"][:2] == ("read", "bad_image_field") and "holds a int" in rejects["number"][2]
    assert rejects["dict"][:2] == ("read", "bad_image_field")
    assert "neither bytes nor a path (keys: src)" in rejects["dict"][2]
    assert rejects["nested"][:2] == ("read", "bad_image_field")
    assert all(rejects[k][0] != "read" for k in {"good", "good2"} & set(rejects))  # good rows reach the models
    assert len(rejects) == 9 - manifest["counts"]["kept"]




def _png(color, size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


FEATURES = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                              "question": datasets.Value("string"), "answer": datasets.Value("string")})


def _embedded_rows():
    red, blue = _png("red"), _png("blue")
    return {"id": ["r1", "r2", "r3"], "image": [{"bytes": red, "path": None}, {"bytes": blue, "path": "b.png"},
                                                   {"bytes": red, "path": "dup.png"}],
            "question": ["What colour?", "Which colour?", "Colour again?"], "answer": ["red", "blue", "red"]}


def _images_in(out):
    return sorted(p.name for p in (out / "images").iterdir())


def test_hf_saved_folder_hub_layout_glob_and_parquet_structs(tmp_path):
    ds = datasets.Dataset.from_dict(_embedded_rows(), features=FEATURES)
    red_sha = hashlib.sha256(_png("red")).hexdigest()
    cols = ColumnMapping()
    # 1. save_to_disk folder (a DatasetDict too, with the split chosen)
    ds.save_to_disk(tmp_path / "disk")
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "dict")
    # 2. a folder laid out like a hub repo: data/train-*.parquet + README configs
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    ds.select([0]).to_parquet(tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet")
    (tmp_path / "hub" / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: validation\n    path: data/validation-*\n---\n")
    for spec, split in [(tmp_path / "disk", "train"), (tmp_path / "dict", "train"), (tmp_path / "hub", "train"),
                        (tmp_path / "hub" / "data" / "train-*.parquet", "train"),
                        (tmp_path / "disk" / "*.arrow", "train")]:
        out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
        items = list(read_hf(str(spec), "set", cols, out, split))
        assert [s.id for s in items] == ["r1", "r2", "r3"], spec
        # Embedded bytes win over the struct's path; identical bytes share one content-addressed file.
        assert items[0].images == items[2].images == [str((out / "images" / f"{red_sha}.png").resolve())]
        assert _images_in(out) == sorted({f"{red_sha}.png", f"{hashlib.sha256(_png('blue')).hexdigest()}.png"})
        assert Image.open(items[1].images[0]).getpixel((0, 0)) == (0, 0, 255)
        mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
        assert [s.images for s in read_hf(str(spec), "set", cols, out, split)] == [s.images for s in items]
        assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes  # resumed: nothing rewritten
    assert [s.id for s in read_hf(str(tmp_path / "dict"), "s", cols, tmp_path / "o", "test")] == ["r2"]
    assert [s.id for s in read_hf(str(tmp_path / "hub"), "s", cols, tmp_path / "o", "validation")] == ["r1"]
    # 3. the plain parquet format reads Image structs too (it used to fail with "File name too long")
    out = tmp_path / "out_parquet"
    pitems = list(read_parquet_mapped(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", "p", cols, out))
    blue_sha = hashlib.sha256(_png("blue")).hexdigest()
    assert [Path(s.images[0]).name for s in pitems] == [f"{red_sha}.png", f"{blue_sha}.png", f"{red_sha}.png"]


def test_hf_lists_of_images_and_path_strings(tmp_path):
    feats = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                               "images": datasets.Sequence(datasets.Image()), "path": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"question": ["<image><image>Compare.", "One?"], "answer": ["left", "1"],
                                     "images": [[{"bytes": _png("red"), "path": None},
                                                 {"bytes": _png("green"), "path": None}], []],
                                     "path": ["x/1.png", "x/2.png"]}, features=feats)
    ds.save_to_disk(tmp_path / "disk")
    out = tmp_path / "out"
    items = list(read_hf(str(tmp_path / "disk"), "s", ColumnMapping(id=None, image="images"), out))
    assert [len(s.images) for s in items] == [2, 0] and items[0].question == "Compare."
    assert all(Path(p).parent == (out / "images").resolve() for p in items[0].images)
    paths = list(read_hf(str(tmp_path / "disk"), "s", ColumnMapping(id=None, image="path"), out))
    assert [s.images for s in paths] == [["x/1.png"], ["x/2.png"]]
    # A path column needs --image-root; an Image column does not.
    base = dict(source_format="hf", input=tmp_path / "disk", out=out)
    check_input(ConvertConfig(**base, columns={"id": None, "image": "images"}))
    with pytest.raises(ValueError, match="image-root"):
        check_input(ConvertConfig(**base, columns={"id": None, "image": "path"}))
    check_input(ConvertConfig(**base, columns={"id": None, "image": "path"}, image_root=tmp_path))


def test_hf_bad_image_values_are_rejects(tmp_path):
    from pipeline.sources.image_fields import ImageSink, RowError

    sink = ImageSink(tmp_path / "out")
    for value, reason in [({"bytes": b"not an image", "path": None}, "image_corrupt"),
                          ({"bytes": b"", "path": None}, "image_empty"),
                          ({"bytes": None, "path": None}, "bad_image_field"), (3.5, "bad_image_field"),
                          ({"bytes": "aGVsbG8=", "path": None}, "bad_image_field")]:
        with pytest.raises(RowError) as exc:
            sink.paths(value)
        assert exc.value.reason == reason, value
    assert sink.paths({"bytes": None, "path": "rel/a.png"}) == ["rel/a.png"]  # a path-only struct stays a path
    assert sink.paths(None) == [] and sink.paths("") == []


def test_wrong_column_names_fail_before_any_request(tmp_path):
    jl = _write_jsonl(tmp_path / "d.jsonl", [{"qid": 1, "img": "a.png", "q": "Q?", "a": "A"}])
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"qid": 1, "img": "a.png", "q": "Q?", "a": "A"}]), pqf)
    datasets.Dataset.from_dict({"qid": [1], "img": ["a.png"], "q": ["Q?"], "a": ["A"]}).save_to_disk(tmp_path / "disk")
    cols = {"id": "qid", "image": "img", "question": "question", "answer": "a"}  # "question" is mistyped
    for fmt, inp in [("jsonl", jl), ("parquet", pqf), ("hf", tmp_path / "disk")]:
        cfg = ConvertConfig(source_format=fmt, input=inp, image_root=tmp_path, columns=cols,
                            vlm={"url": "http://127.0.0.1:9/v1", "model": "m"},
                            reasoner={"url": "http://127.0.0.1:9/v1", "model": "r"})
        with pytest.raises(ValueError, match=r"column\(s\) 'question' not in .*columns there: qid, img, q, a"):
            Converter(cfg)  # raises in the constructor: before the endpoint check, before any request
    # The default id column may be absent (positional ids); an explicitly named one may not.
    ok = ConvertConfig(source_format="jsonl", input=jl, image_root=tmp_path,
                       columns={"image": "img", "question": "q", "answer": "a"})
    check_input(ok)
    check_input(ConvertConfig.model_validate(ok.model_dump(mode="json")))  # as build.py re-validates shard configs
    with pytest.raises(ValueError, match="'uid'"):
        check_input(ConvertConfig(source_format="jsonl", input=jl, image_root=tmp_path,
                                  columns={"id": "uid", "image": "img", "question": "q", "answer": "a"}))
    sg = _write_jsonl(tmp_path / "s.jsonl", [{"messages": [], "images": []}])
    with pytest.raises(ValueError, match="'conversations' not in .*columns there: messages, images"):
        check_input(ConvertConfig(source_format="sharegpt", input=sg))
    with pytest.raises(ValueError, match="set sharegpt.images: images"):  # would silently read no image at all
        check_input(ConvertConfig(source_format="sharegpt", input=sg, sharegpt={"messages": "messages"}))
    check_input(ConvertConfig(source_format="sharegpt", input=sg,
                              sharegpt={"messages": "messages", "images": "images"}))


def test_cli_wrong_column_exits_2_naming_the_columns(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    jl = _write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "img": "a.png", "question": "Q?", "answer": "A"}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("columns: {image: image_path}\n")
    res = CliRunner().invoke(app, ["convert", "--config", str(cfg), "--source-format", "jsonl", "--input", str(jl),
                                   "--image-root", str(tmp_path), "--out", str(tmp_path / "out"),
                                   "--vlm-url", "http://127.0.0.1:9/v1", "--vlm-model", "m",
                                   "--reasoner-url", "http://127.0.0.1:9/v1", "--reasoner-model", "r", "--no-progress"])
    assert res.exit_code == 2
    assert "'image_path' not in" in res.output and "id, img, question, answer" in res.output
    assert not (tmp_path / "out").exists()


def test_hf_reader_streams(tmp_path):
    """Reading the first rows of a 30 MB embedded-image dataset must not load it, nor its unmapped columns."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (100, 100), os.urandom(30_000)).save(buf, "PNG")  # noise: ~30 KB as PNG
    image, blob = buf.getvalue(), os.urandom(30_000)
    rows = {"id": [str(i) for i in range(500)], "image": [{"bytes": image, "path": None}] * 500,
            "question": ["Q?"] * 500, "answer": ["A"] * 500, "blob": [blob] * 500}
    feats = datasets.Features({**FEATURES, "blob": datasets.Value("binary")})
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(tmp_path / "disk")
    assert sum(f.stat().st_size for f in (tmp_path / "disk").glob("*.arrow")) > 30_000_000
    peak = _first_items_peak_bytes(read_hf(str(tmp_path / "disk"), "s", ColumnMapping(), tmp_path / "out"))
    assert peak < 8_000_000  # one batch of 64 rows of the mapped columns (~2 MB of images), not 30 MB


def test_hf_and_parquet_structs_convert_end_to_end(tmp_path, sims):
    """A datasets folder with an Image column converts; the output loads as LLaMA-Factory reads it."""
    from pipeline.demo_data import make_demo_dataset

    vlm, reasoner = sims
    input_path, image_root = make_demo_dataset(tmp_path / "demo", n=6)
    rows = [json.loads(line) for line in input_path.read_text().splitlines()]
    data = {"id": [r["id"] for r in rows],
            "image": [{"bytes": (image_root / r["image"]).read_bytes(), "path": None} for r in rows],
            "question": [r["conversations"][0]["value"].replace("<image>\n", "") for r in rows],
            "answer": [conclusion_of(r) for r in rows]}
    ds = datasets.Dataset.from_dict(data, features=FEATURES)
    ds.save_to_disk(tmp_path / "disk")
    ds.to_parquet(tmp_path / "structs.parquet")
    for fmt, inp in [("hf", tmp_path / "disk"), ("parquet", tmp_path / "structs.parquet")]:
        out = tmp_path / "work" / f"out_{fmt}"
        cfg = ConvertConfig(source_format=fmt, input=inp, out=out,  # no image_root: every image is embedded
                            vlm={"url": vlm.url, "model": "sim-qwen2.5-vl", "max_concurrency": 4},
                            reasoner={"url": reasoner.url, "model": "sim-r1", "max_concurrency": 4,
                                      "max_backoff_s": 0.2},
                            progress=False)
        manifest = asyncio.run(Converter(cfg).run())
        assert manifest["counts"]["read"] == 6 and manifest["counts"]["kept"] >= 3
        assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 6
        info = json.loads((out / "dataset_info.json").read_text())
        (entry,) = info.values()
        records = [json.loads(line) for line in (out / entry["file_name"]).read_text().splitlines()]
        assert len(records) == manifest["counts"]["kept"]
        for rec in records:
            image = rec[entry["columns"]["images"]]
            image = image if isinstance(image, str) else image[0]
            # Beside the JSONL, as LLaMA-Factory resolves it from its dataset_dir; the very bytes of the input.
            assert image.startswith("images/") and (out / image).is_file()
            assert (out / image).read_bytes() in data_bytes(data)
            Image.open(out / image).convert("RGB")


def data_bytes(data):
    return {im["bytes"] for im in data["image"]}


def conclusion_of(row):
    from pipeline.sources.llava_cot import conclusion

    return conclusion(row["conversations"][1]["value"])


def test_planning_pass_names_embedded_images_without_writing(tmp_path):
    datasets.Dataset.from_dict(_embedded_rows(), features=FEATURES).save_to_disk(tmp_path / "disk")
    cfg = ConvertConfig(source_format="hf", input=tmp_path / "disk", out=tmp_path / "out")
    planned = [s.images for s in iter_items(cfg, write_images=False)]
    assert not (tmp_path / "out").exists()
    assert [s.images for s in iter_items(cfg)] == planned and len(_images_in(tmp_path / "out")) == 2


def test_cli_reads_mllm_demo_through_dataset_info(tmp_path, sims):
    """The CLI flags --dataset-info/--dataset/--multi-turn reach the reader; every item ends kept or rejected."""
    from .conftest import R1_MODEL, VLM_MODEL, run_cli

    vlm, reasoner = sims
    data = tmp_path / "lf"
    shutil.copytree(LF, data)
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("reasoner: {max_backoff_s: 0.2}\nvlm: {max_backoff_s: 0.2}\n")
    proc = run_cli(["convert", "--config", str(cfg), "--dataset-info", str(data / "dataset_info.json"),
                    "--dataset", "mllm_demo", "--multi-turn", "first", "--out", str(out),
                    "--vlm-url", vlm.url, "--vlm-model", VLM_MODEL, "--reasoner-url", reasoner.url,
                    "--reasoner-model", R1_MODEL, "--no-progress"])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["read"] == 6  # first turns only
    assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 6
    for line in (out / "vision_r1_cold.jsonl").read_text().splitlines():
        rec = json.loads(line)
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        assert all((out / im).resolve().is_file() for im in images)
