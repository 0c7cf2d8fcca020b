"""Quality features end to end against the simulated endpoints: best-of-k, answer leaks,
judge, LLM rewrite, dedup and decontamination."""

import asyncio
import json
import shutil

import urllib.request

import pytest

from pipeline.llm import parse_completion
from pipeline.config import ConvertConfig
from pipeline.demo_data import make_demo_dataset
from pipeline.rewrite import ModalityRewriter
from pipeline.runner import Converter
from pipeline.simulator import SimConfig, SimServer
from pipeline.llm import ResponseStore
from pipeline.verify.compare import check_output
from pipeline.verify.options import parse_options

from .conftest import R1_MODEL, VLM_MODEL, read_jsonl, sim_stats, start_sims

import pyarrow.parquet as pq


def run(input_path, image_root, out, vlm, reasoner, reasoner_cfg=None, **kw):
    reasoner_cfg = {"url": reasoner.url, "model": R1_MODEL, "max_concurrency": 8, **(reasoner_cfg or {})}
    cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=image_root, out=out,
                        vlm={"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 8},
                        reasoner=reasoner_cfg, progress=False, **kw)
    manifest = asyncio.run(Converter(cfg).run())
    return manifest, pq.read_table(out / "data").to_pylist(), read_jsonl(out / "rejects.jsonl")


@pytest.fixture
def data(tmp_path):
    return make_demo_dataset(tmp_path / "input", n=16)


@pytest.mark.parametrize("use_n", [True, False])
def test_best_of_k_keeps_shortest_correct_trace_and_stores_pass_rate(tmp_path, data, use_n):
    vlm, reasoner = start_sims(reasoner={"wrong_rate": 0.4})
    try:
        manifest, rows, rejects = run(*data, tmp_path / "out", vlm, reasoner, samples_per_question=4,
                                      reasoner_cfg={"use_n": use_n})
        r_stats = sim_stats(reasoner)
        prompts = json.loads(urllib.request.urlopen(reasoner.url.removesuffix("/v1") + "/sim/prompts").read())
    finally:
        vlm.stop(), reasoner.stop()
    assert r_stats["completed"] == (16 if use_n else 64)
    assert manifest["counts"]["kept"] == len(rows) > 0
    rates = {row["pass_rate"] for row in rows}
    assert all(row["k"] == 4 and row["pass_rate"] == row["k_correct"] / 4 for row in rows)
    assert len(rates) > 1 and all(0 < r <= 1 for r in rates)
    for rej in rejects:
        if rej["reason"] == "wrong_answer":
            assert "0 of 4 traces correct" in rej["detail"]
    # Re-derive every trace of each kept sample (prompts from the simulator, responses from the
    # store): the kept reasoning is the shortest correct trace after the rewrite.
    keys_by_question = {}
    for p in prompts:
        if p["stage"] == "reasoning":
            q = p["text"].split("Question: ", 1)[1].split("\nPut your final answer")[0]
            keys_by_question.setdefault(q, set()).add(p["key"])
    store = ResponseStore(tmp_path / "out" / ".state" / "responses.sqlite")
    rewriter = ModalityRewriter()
    for row in rows:
        traces = []
        for key in keys_by_question[row["question"]]:
            raw = store.get(key)
            traces += [parse_completion(raw, key, True, i) for i in range(len(raw["choices"]))]
        assert len(traces) == 4
        # The options as the source reader parsed them from the question (the simulated reasoner answers
        # letter golds with the option text too).
        options = parse_options(row["question"])
        correct = [t for t in traces if check_output(t.content, t.reasoning, row["answer"], options).correct]
        assert len(correct) == row["k_correct"]
        assert row["reasoning"] == min((rewriter.rewrite(t.reasoning) for t in correct), key=len)
    store.close()
    for row in rows:
        assert row["reasoning_original"] and len(row["reasoning"]) <= len(row["reasoning_original"]) + 50


def test_leaking_descriptions_are_regenerated_or_rejected(tmp_path, data):
    vlm, reasoner = start_sims(vlm={"leak_rate": 0.5})
    try:
        m, rows, rejects = run(*data, tmp_path / "regen", vlm, reasoner)
        leak = m["answer_leak"]
        assert leak["dropped"] > 0 and leak["regenerated"] == leak["dropped"]
        assert "answer_leak" not in m["counts"]["rejected_by_reason"]
        assert any(row["description_attempts"] == 2 for row in rows)
        for row in rows:
            assert "correct answer is" not in row["description"]
        prompts = json.loads(urllib.request.urlopen(
            vlm.url.removesuffix("/v1") + "/sim/prompts").read())
        assert sum("gave the answer away" in p["text"] for p in prompts) == leak["regenerated"]

        m2, rows2, rejects2 = run(*data, tmp_path / "reject", vlm, reasoner, quality={"answer_leak": "reject"})
        leaked = [r for r in rejects2 if r["reason"] == "answer_leak"]
        assert len(leaked) == leak["dropped"] and all(r["stage"] == "description" for r in leaked)
        assert m2["counts"]["kept"] + m2["counts"]["rejected"] == 16
    finally:
        vlm.stop(), reasoner.stop()


@pytest.mark.parametrize("drop_invalid", [True, False])
def test_llm_judge_marks_and_drops(tmp_path, data, drop_invalid):
    vlm, reasoner = start_sims()
    judge = SimServer(SimConfig(role="vlm", models=["sim-judge"], judge_invalid_rate=0.35)).start()
    try:
        m, rows, rejects = run(*data, tmp_path / "out", vlm, reasoner,
                               judge={"enabled": True, "url": judge.url, "model": "sim-judge",
                                      "drop_invalid": drop_invalid})
        judged = sim_stats(judge)["completed"]
    finally:
        vlm.stop(), reasoner.stop(), judge.stop()
    assert judged == m["filters"]["judge"]["seen"] > 0
    invalid = m["filters"]["judge"]["dropped"]
    assert invalid > 0
    assert all(row["judge_response"].startswith("VERDICT:") for row in rows)
    if drop_invalid:
        assert all(row["filter"] == "valid" for row in rows)
        assert sum(r["reason"] == "judge_invalid" for r in rejects) == invalid
    else:
        assert sum(row["filter"] == "invalid" for row in rows) == invalid
        assert "judge_invalid" not in m["counts"]["rejected_by_reason"]
    assert m["models"]["judge"] == "sim-judge" and m["prompts"]


def test_llm_rewrite_goes_through_the_vlm_and_the_same_checks(tmp_path, data):
    vlm, reasoner = start_sims()
    try:
        m, rows, _ = run(*data, tmp_path / "out", vlm, reasoner, quality={"rewrite": "llm"})
        prompts = json.loads(urllib.request.urlopen(
            vlm.url.removesuffix("/v1") + "/sim/prompts").read())
    finally:
        vlm.stop(), reasoner.stop()
    assert sum("<reasoning>" in p["text"] for p in prompts) == m["filters"]["rewrite"]["seen"] > 0
    assert rows and m["usage_by_stage"]["rewrite"]["requests"] == m["filters"]["rewrite"]["seen"]
    for row in rows:
        assert "description" not in row["reasoning"].lower()
        assert row["prompts"]["rewrite_llm"].startswith("rewrite_llm.v1@")


def question_of(row):
    return row["conversations"][0]["value"].replace("<image>\n", "")


def test_duplicates_and_contaminated_rows_are_rejected_before_any_model_call(tmp_path):
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=8)
    rows = [json.loads(l) for l in input_path.read_text().splitlines()]
    # Same image file, question with other case and spacing -> duplicate.
    dup = json.loads(json.dumps(rows[1]))
    dup["id"] = "dup-of-1"
    dup["conversations"][0]["value"] = "<image>\n" + question_of(rows[1]).upper().replace(" ", "  ") + " "
    # Same image content under another name, same question -> duplicate.
    shutil.copy(image_root / rows[2]["image"], image_root / "copy.png")
    copy = json.loads(json.dumps(rows[2]))
    copy["id"], copy["image"] = "copy-of-2", "copy.png"
    # Same question, different image -> not a duplicate.
    other = json.loads(json.dumps(rows[2]))
    other["id"], other["image"] = "other-image", rows[3]["image"]
    input_path.write_text("".join(json.dumps(r) + "\n" for r in rows + [dup, copy, other]))
    bench = tmp_path / "bench.jsonl"
    question_4 = question_of(rows[4])
    # A short question counts only with the same image (a path relative to the benchmark file).
    image_4 = (image_root / rows[4]["image"]).relative_to(tmp_path)
    bench.write_text(json.dumps({"question": "Unrelated benchmark question about a bridge and a river?"}) + "\n"
                     + json.dumps({"question": question_4.lower() + " Answer briefly.", "image": str(image_4)}) + "\n")
    vlm, reasoner = start_sims()
    try:
        m, _, rejects = run(input_path, image_root, tmp_path / "out", vlm, reasoner,
                            dedup={"benchmark_questions": str(bench), "ngram": 4, "threshold": 0.9})
        sent = sim_stats(vlm)["completed"]
    finally:
        vlm.stop(), reasoner.stop()
    reasons = {r["id"]: (r["stage"], r["reason"]) for r in rejects if r["stage"] == "dedup"}
    assert reasons == {"dup-of-1": ("dedup", "duplicate"), "copy-of-2": ("dedup", "duplicate"),
                       rows[4]["id"]: ("dedup", "contaminated")}
    detail = next(r["detail"] for r in rejects if r["id"] == "dup-of-1")
    assert rows[1]["id"] in detail
    assert sent == 2 * (11 - 3)  # screened rows cost no VLM call
    assert m["counts"]["kept"] + m["counts"]["rejected"] == 11
