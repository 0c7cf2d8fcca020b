"""Source readers: formats, per-row errors, multi-turn, streaming."""

import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ColumnMapping, ConvertConfig
from pipeline.records import Rejected, Sample
from pipeline.sources import open_source
from pipeline.sources.generic import read_jsonl_mapped, read_parquet_mapped
from pipeline.sources.llava_cot import read_llava_cot
from pipeline.sources.mulberry import read_mulberry

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
