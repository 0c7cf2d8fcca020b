"""Options and earlier turns reach every prompt and the kept human turn, rendered once, never twice."""

import asyncio
import json
import urllib.request

import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import ConvertConfig
from pipeline.prompts import PromptLibrary
from pipeline.question import QuestionRenderer, options_listed
from pipeline.records import Option, Sample, Turn
from pipeline.runner import Converter
from pipeline.sources.common import make_sample

from .conftest import R1_MODEL, VLM_MODEL, read_jsonl, start_sims

R = QuestionRenderer(PromptLibrary())
OPTS = [Option(letter="A", text="57"), Option(letter="B", text="113"), Option(letter="C", text="123")]


def test_column_options_are_listed_after_the_question():
    s = Sample(index=0, id="x", source="t", question="Find the measure of angle 1.", options=OPTS)
    assert R.turn(s) == "Find the measure of angle 1.\nChoices:\nA. 57\nB. 113\nC. 123"


def test_a_rendered_question_is_kept_per_sample_and_never_served_for_another():
    r = QuestionRenderer(PromptLibrary())
    s = Sample(index=0, id="x", source="t", question="Find the measure of angle 1.", options=OPTS)
    first = r.prompt(s)
    assert r.prompt(s) is first and r.turn(s) == first  # no earlier turns: the same text
    other = s.model_copy(update={"question": "Find the measure of angle 2."})
    assert "angle 2" in r.prompt(other) and r.prompt(s) is first
    for i in range(5000):  # bounded: old entries go
        r.turn(Sample(index=i, id=str(i), source="t", question=f"Q{i}?"))
    assert len(r._rendered) <= 4097 and r.turn(s) == first


def test_options_already_in_the_question_are_not_listed_twice():
    # Mulberry's real layout: "Choices:\nA: 57\n..." inside the question (parsed by the reader).
    q = ("Based on the image, directly select the correct answer for the following question:\n"
         "Question: Find the measure of angle 1.\nChoices:\nA: 57\nB: 113\nC: 123")
    s = make_sample(row_id="m", source="mulberry", images=["a.png"], question="<image>" + q, answer="B")
    assert [o.text for o in s.options] == ["57", "113", "123"]
    assert options_listed(s.question, s.options)
    assert R.turn(s) == q
    assert R.turn(s).count("113") == 1


def test_options_that_differ_from_the_listed_ones_are_rendered():
    s = Sample(index=0, id="x", source="t", question="Pick one.\nA. red\nB. blue", options=OPTS)
    assert not options_listed(s.question, s.options)
    assert R.turn(s).endswith("Choices:\nA. 57\nB. 113\nC. 123")


def test_no_options_leaves_the_question_alone():
    s = Sample(index=0, id="x", source="t", question="How many cubes are red?")
    assert R.turn(s) == R.prompt(s) == "How many cubes are red?"


def test_earlier_turns_go_into_prompts_but_not_into_the_human_turn():
    s = Sample(index=0, id="x#turn1", source="t", question="And the other one?",
               context=[Turn(question="What colour is the left car?", answer="Red.")])
    p = R.prompt(s)
    assert p.index("What colour is the left car?") < p.index("Red.") < p.index("Current question: And the other one?")
    assert R.turn(s) == "And the other one?"


def _dataset(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(img_dir / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"{i}.png", "question": f"Which value is shown in panel {i}?",
                     "answer": "B", "options": ["57", "113", "123"]})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, img_dir


def test_column_options_reach_every_prompt_and_the_kept_turn(tmp_path):
    path, img_dir = _dataset(tmp_path)
    vlm, reasoner = start_sims()
    try:
        cfg = ConvertConfig(source_format="jsonl", input=path, image_root=img_dir, out=tmp_path / "out",
                            columns={"options": "options"}, progress=False,
                            vlm={"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 4},
                            reasoner={"url": reasoner.url, "model": R1_MODEL, "max_concurrency": 4})
        manifest = asyncio.run(Converter(cfg).run())
        prompts = [p for sim in (vlm, reasoner) for p in
                   json.loads(urllib.request.urlopen(sim.url.removesuffix("/v1") + "/sim/prompts").read())]
    finally:
        vlm.stop(), reasoner.stop()
    assert manifest["counts"]["read"] == 4
    by_stage = {}
    for p in prompts:
        by_stage.setdefault(p["stage"], []).append(p["text"])
    assert set(by_stage) >= {"pseudo_cot", "description", "reasoning"}
    for stage, texts in by_stage.items():
        for text in texts:
            assert "Choices:\nA. 57\nB. 113\nC. 123" in text, (stage, text)
    kept = read_jsonl(tmp_path / "out" / "vision_r1_cold.jsonl")
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert len(kept) == manifest["counts"]["kept"] > 0
    for rec in kept:
        human = rec["conversations"][0]["value"]
        assert human.startswith("<image>\nWhich value is shown in panel")
        assert human.endswith("Choices:\nA. 57\nB. 113\nC. 123")
    for row in rows:
        assert [o["text"] for o in row["options"]] == ["57", "113", "123"]


def test_kept_conversation_keeps_earlier_turns_and_one_image_token_per_image():
    from pipeline.kept import conversation

    s = Sample(index=0, id="x#turn1", source="t", question="And the other one?",
               context=[Turn(question="What colour is the left car?", answer="Red.")])
    conv = conversation(s, R.turn(s), 2, "<think>\nblue\n</think>\n<answer> Final Answer:Blue </answer>")
    assert [t["from"] for t in conv] == ["human", "gpt", "human", "gpt"]
    assert conv[0]["value"] == "<image>\n<image>\nWhat colour is the left car?"
    assert conv[1]["value"] == "Red."
    assert conv[2]["value"] == "And the other one?"
    assert sum(t["value"].count("<image>") for t in conv) == 2


def test_kept_conversation_places_image_tokens_in_their_turns_and_keeps_the_system_prompt():
    from pipeline.kept import conversation

    # LLaMA-Factory's mllm_demo row 1: "<image>Who are they?" ... "What are they doing?<image>", the same image twice.
    s = Sample(index=0, id="d#turn1", source="t", question="What are they doing?", turn_images=1, system="Be brief.",
               images=["1.jpg", "1.jpg"],
               context=[Turn(question="Who are they?", answer="They're Kane and Gretzka.", turn_images=1)])
    conv = conversation(s, R.turn(s), 2, "G")
    assert conv[0] == {"from": "system", "value": "Be brief."}
    assert [t["value"] for t in conv[1:]] == ["<image>\nWho are they?", "They're Kane and Gretzka.",
                                              "<image>\nWhat are they doing?", "G"]


def test_the_kept_final_answer_is_the_letter_or_the_clean_gold():
    from pipeline.verify.gold import final_answer

    opts = [Option(letter="A", text="32°"), Option(letter="B", text="58°"), Option(letter="C", text="64°")]
    assert final_answer("58°.", opts) == "B"        # Mulberry: an option's text with a trailing period
    assert final_answer("**B**", opts) == "B"       # LLaVA-CoT
    assert final_answer("B: 58°", opts) == "B"      # Mulberry / LLaVA-CoT "letter: text"
    assert final_answer("21", []) == "21"
    assert final_answer("**21**", []) == "21"
    assert final_answer("The enrollment rate in primary education in 1985 was approximately 76%.", []) == \
        "The enrollment rate in primary education in 1985 was approximately 76%"
    # An option text that starts with the article "A" is not letter A.
    cats = [Option(letter="A", text="A cat"), Option(letter="B", text="A dog")]
    assert final_answer("A dog", cats) == "B"
