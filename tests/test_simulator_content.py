"""The simulated models answer in the forms real models write (realdata/README.md), not by echoing the gold.

Every check here reads the output *text* with its own small oracle (accepted renderings written out
per gold), independent of how the simulator builds it, so a simulator that drifts from real shapes,
answers wrongly when it means to be right, or echoes the gold's own text fails.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import openai
import pytest

from pipeline.prompts import PromptLibrary
from pipeline.simulator import SimConfig, SimServer, content

# Golds in the forms the datasets use, with the options as the reasoner's prompt shows them
# (the lead renders "Choices:" + "A. text" lines; Mulberry questions carry "A: text" lines).
CHOICES_DOT = "How many apples are on the plate?\nChoices:\nA. 3\nB. 4\nC. 5\nD. 6"
CHOICES_COLON = "Find the measure of angle 2.\nChoices:\nA: 57°\nB: 58°\nC: 113°\nD: 122°"
MULBERRY_45 = ("Based on the image, directly select the correct answer for the following question:\n"
               "Question: Find y.\nChoices:\nA: 30\nB: 45\nC: 60\nD: 90")
ANIMALS = "Which animal is shown?\nChoices:\nA. A cat\nB. A dog\nC. A bird"
SENTENCE = "The enrollment rate in primary education in 1985 was approximately 76%."

# gold, question, accepted renderings (normalised by `norm`), whether another form than the gold's own exists
CASES = [
    ("B", CHOICES_DOT, {"b", "4", "b.4", "b:4", "optionb", "b,4"}, True),
    ("58°.", CHOICES_COLON, {"b", "58°", "58", "b.58°", "b:58°", "optionb", "b,58°"}, True),
    ("B: 45", MULBERRY_45, {"b", "45", "b.45", "b:45", "optionb", "b,45"}, True),
    ("**B**", ANIMALS, {"b", "adog", "b.adog", "b:adog", "optionb", "b,adog"}, True),
    ("0.5", "What is the probability of drawing a red ball?", {"0.5"}, True),
    ("5 MPa", "What is the maximum stress in the beam?", {"5mpa", "5"}, True),
    ("58°", "What is the measure of angle ABC?", {"58°", "58"}, True),
    ("Yes", "Is there a triangle in drawing 3?", {"yes", "yes,thereisatriangleindrawing3"}, True),
    ("No", "Is there a triangle in drawing 4?", {"no", "no,thereisnotriangleindrawing4"}, True),
    ("21", "What is the value of the expression?", {"21"}, False),
    (SENTENCE, "What was the enrollment rate in primary education in 1985?",
     {norm for norm in ("theenrollmentrateinprimaryeducationin1985wasapproximately76%",
                        "inshort,theenrollmentrateinprimaryeducationin1985wasapproximately76%", "76%")}, True),
]

SPECIAL = re.compile(r"<\|[a-z_]+\|>")


PROMPTS = PromptLibrary()


def description_for(gold: str, **kw) -> str:
    # The real templates (prompts/*.j2), as the stages render them.
    pseudo = content.pseudo_cot(PROMPTS.get("pseudo_cot.v1").render(question="q", answer=gold), 40, random.Random(7))
    prompt = PROMPTS.get("description.v1").render(question="q", pseudo_cot=pseudo)
    return content.description(prompt, 40, random.Random(8), **kw)


def reasoner_prompt(gold: str, question: str) -> str:
    return PROMPTS.get("reasoning_blind.v1").render(description=description_for(gold), question=question)


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def payload(final: str) -> str:
    """What a person reads as the answer in the answer part of the output."""
    if (boxed := last_boxed(final)) is not None:
        return boxed
    last = final.strip().splitlines()[-1]
    for pattern in (r"\*\*Answer:\*\*\s*(.+)", r"^Answer:\s*(.+)", r"The correct option is\s*(.+)",
                    r"(?i)the answer is\s*(.+)"):
        if m := re.search(pattern, last):
            return m.group(1)
    return last


def norm(text: str) -> str:
    text = re.sub(r"\\(?:text|mathrm)\{\s*([^}]*?)\s*\}", r"\1", text)
    text = text.replace("^{\\circ}", "°").replace("^\\circ", "°").replace("\\%", "%").replace("\\,", "")
    text = re.sub(r"\\d?frac\{(\d+)\}\{(\d+)\}", lambda m: str(int(m.group(1)) / int(m.group(2))), text)
    text = re.sub(r"\b(\d+)/(\d+)\b", lambda m: str(int(m.group(1)) / int(m.group(2))), text)
    text = re.sub(r"\s+", "", text).lower().rstrip(".")
    return text[1:-1] if text[:1] == "(" and text[-1:] == ")" else text


def clean(gold: str) -> str:
    g = gold.strip().strip("*").strip()
    return g[:-1] if g.endswith(".") else g


def outputs(gold: str, question: str, wrong_rate: float, n: int) -> list[tuple[str, str]]:
    prompt = reasoner_prompt(gold, question)
    return [content.reasoning(prompt, 40, content.rng_for("len", str(i)), wrong_rate, f"req-{i}:0") for i in range(n)]


def closing_claim(think: str) -> str:
    last = think.strip().split("\n\n")[-1]
    m = re.search(r"(?:must be|answer should be|answer is)\s+(.+?)\.?$", last)
    assert m, last
    return m.group(1)


@pytest.mark.parametrize("gold,question,accepted,has_alternative", CASES, ids=[c[0][:12] for c in CASES])
def test_right_answers_are_right_in_every_form_and_wrong_ones_never(gold, question, accepted, has_alternative):
    right = outputs(gold, question, 0.0, 80)
    for think, final in right:
        said = payload(final)
        assert norm(said) in accepted, (gold, final)
        assert norm(closing_claim(think)) in accepted, (gold, think[-200:])
        if has_alternative:  # never the gold's own text when an equivalent form exists
            assert said.strip() != clean(gold), (gold, final)
    assert len({payload(f) for _, f in right}) >= 2 or not has_alternative  # varied, not one echo
    for think, final in outputs(gold, question, 1.0, 60):
        assert norm(payload(final)) not in accepted, (gold, final)
        assert norm(closing_claim(think)) not in accepted, (gold, think[-200:])


# The real final-answer shapes of DeepSeek-R1 (realdata/README.md); each must occur for some gold.
SHAPES = {
    "\\boxed{B}": r"\\boxed\{[A-D]\}",
    "\\boxed{\\text{B}}": r"\\boxed\{\\text\{[A-D]\}\}",
    "\\boxed{B. 4}": r"\\boxed\{[A-D]\. [^}]+\}",
    "\\boxed{4} for option B = 4": r"(?m)^\\boxed\{4\}$",
    "**Answer:** B": r"\*\*Answer:\*\* [A-D]$",
    "**Final Answer**\\n\\boxed{}": r"\*\*Final Answer\*\*\n\\boxed\{",
    "The correct option is B: 4": r"The correct option is [A-D]: \S+",
    "Answer: B": r"(?m)^Answer: [A-D]$",
    "(B)": r"\([A-D]\)",
    "fraction for a decimal gold": r"\\boxed\{\\frac\{1\}\{2\}\}",
    "degree sign": r"58\^(?:\\circ|\{\\circ\})",
    "value with a unit": r"5 ?(?:\\,|\\text\{ ?|\\mathrm\{)MPa",
    "Yes, ... sentence": r"(?m)^(?:\*\*Answer:\*\* )?Yes, there is a triangle",
    "short sentence": r"(?m)^(?:In short, the enrollment|It is )",
    "option text starting with the article A": r"\\boxed\{A (?:dog|cat|bird)\}|\*\*Answer:\*\* A (?:dog|cat|bird)",
}


def test_the_forms_cover_every_real_shape():
    seen: Counter = Counter()
    finals = [final for gold, question, _, _ in CASES for _, final in outputs(gold, question, 0.3, 80)]
    for final in finals:
        for name, pattern in SHAPES.items():
            if re.search(pattern, final):
                seen[name] += 1
    assert set(seen) == set(SHAPES), set(SHAPES) - set(seen)
    assert all(final.count("\n\n") >= 1 for final in finals)  # a summary line, then the answer


def test_same_request_same_text_and_traces_read_like_r1():
    prompt = reasoner_prompt("B", CHOICES_DOT)
    a = content.reasoning(prompt, 200, content.rng_for("x"), 0.2, "key:0")
    assert a == content.reasoning(prompt, 200, content.rng_for("x"), 0.2, "key:0")
    traces = [t for t, _ in outputs("B", CHOICES_DOT, 0.2, 60)]
    assert len(set(traces)) == 60
    assert all(t.startswith(("Okay", "Alright")) for t in traces)
    joined = "\n".join(traces)
    for marker in ("Wait", "Hmm", "Alternatively", "the description", "The description"):
        assert marker in joined, marker
    assert re.search(r"it's not [A-D]; it must be", joined)  # a conclusion reached by ruling one out
    assert re.search(r"could it be [A-D]\? Wait, no", joined)


def test_gold_is_read_back_whole_whatever_its_punctuation():
    for gold in ("1,000", "0.5", "58°.", SENTENCE, "B: 45"):
        prompt = reasoner_prompt(gold, "What is it?")
        assert content.read_gold(prompt) == gold.removesuffix(".")
    leaked = description_for("0.5", leak_rate=1.0)
    assert "So the correct answer is 0.5." in leaked and content.read_gold(leaked) == "0.5"


def test_special_tokens_only_when_asked_and_the_answer_survives():
    def vlm_outputs(rate):
        outs = []
        for i in range(120):
            pseudo = content.pseudo_cot(PROMPTS.get("pseudo_cot.v1").render(question="q", answer="B: 45"), 40,
                                        content.rng_for("p", str(i)), rate)
            outs.append(pseudo)
            prompt = PROMPTS.get("description.v1").render(question="q", pseudo_cot=pseudo)
            outs.append(content.description(prompt, 40, content.rng_for("d", str(i)), 0.0, rate))
        return outs

    assert not any(SPECIAL.search(o) for o in vlm_outputs(0.0))
    noisy = vlm_outputs(0.2)
    hit = [o for o in noisy if SPECIAL.search(o)]
    assert 0.1 * len(noisy) < len(hit) < 0.5 * len(noisy)
    assert {t for o in hit for t in SPECIAL.findall(o)} <= set(content.SPECIAL_TOKENS)
    assert len({t for o in hit for t in SPECIAL.findall(o)}) >= 3
    for o in noisy:
        if o.startswith("SUMMARY"):
            assert o.endswith("CONCLUSION: B: 45")  # the conclusion line itself stays clean
        else:
            assert content.read_gold(o + " ") == "B: 45"


@pytest.mark.parametrize("mode", ["field", "inline"])
def test_over_http_with_the_openai_client(mode):
    prompt = reasoner_prompt("B", CHOICES_DOT)
    with SimServer(SimConfig(models=["r1"], reasoning_mode=mode)) as sim:
        client = openai.OpenAI(base_url=sim.url, api_key="unused", max_retries=0)
        finals, raw = [], []
        for i in range(12):
            # A different seed per request: the request key (and so the form) changes.
            resp = client.chat.completions.create(model="r1", messages=[{"role": "user", "content": prompt}], seed=i)
            msg = resp.choices[0].message
            if mode == "field":
                think, final = msg.model_extra["reasoning_content"], msg.content
            else:
                think, final = msg.content.split("\n</think>\n\n")
                think = think.removeprefix("<think>\n")
            assert think.startswith(("Okay", "Alright")) and norm(payload(final)) in CASES[0][2]
            finals.append(final)
            raw.append(msg.content)
        again = client.chat.completions.create(model="r1", messages=[{"role": "user", "content": prompt}], seed=0)
        assert again.choices[0].message.content == raw[0]
    assert len(set(finals)) >= 3
