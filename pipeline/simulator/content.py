"""Deterministic simulated completions: same request -> same text, lognormal lengths.

Protocol between the simulated roles (simulation only): the pseudo-CoT ends with
``CONCLUSION: <answer>``; the description carries that fact as "the decisive detail ... is <answer>";
the simulated reasoner reads it back. A configurable share of questions is answered wrongly.
"""

from __future__ import annotations

import hashlib
import random
import re

FILLER = [
    "Let me look at the relevant part of the image again.",
    "The layout suggests the elements are arranged from left to right.",
    "I should make sure I am counting each item exactly once.",
    "Hmm, the colours of the shapes could matter here.",
    "Wait, let me re-check the numbers before going further.",
    "Alternatively, I can reason about it from the other side.",
    "So far the observations are consistent with each other.",
    "Let me verify this step carefully.",
    "The text in the picture is clear enough to read.",
    "Checking the edges of the picture shows nothing else of interest.",
]
_CONCLUSION = re.compile(r"CONCLUSION:\s*(.+)")
_DECISIVE = re.compile(r"the decisive detail for the question is (.+?)\.(?:\s|$)")
_CORRECT = re.compile(r"Correct answer:\s*(.+)")
_OPTIONS = re.compile(r"^\s*\(?([A-H])[\.\):]", re.MULTILINE)


def rng_for(*parts: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big"))


def sample_length(rng: random.Random, mu: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(mu, sigma))))


def filler_words(rng: random.Random, n_words: int) -> str:
    words: list[str] = []
    lines: list[str] = []
    while len(words) < n_words:
        sentence = rng.choice(FILLER)
        words.extend(sentence.split())
        lines.append(sentence)
    return " ".join(lines)


def wrong_answer(answer: str, prompt: str) -> str:
    letters = _OPTIONS.findall(prompt)
    if answer.strip().upper() in letters and len(letters) > 1:
        return next(l for l in letters if l != answer.strip().upper())
    try:
        return str(int(float(answer)) + 1)
    except ValueError:
        return {"yes": "No", "no": "Yes"}.get(answer.strip().lower(), "unknown")


def pseudo_cot(prompt: str, n_words: int, rng: random.Random) -> str:
    answer = (_CORRECT.search(prompt).group(1).strip() if _CORRECT.search(prompt) else "unknown")
    return (f"SUMMARY: Find what the question asks from the image.\nCAPTION: {filler_words(rng, n_words // 2)}\n"
            f"REASONING: {filler_words(rng, n_words // 2)}\nCONCLUSION: {answer}")


def description(prompt: str, n_words: int, rng: random.Random) -> str:
    m = _CONCLUSION.search(prompt)
    fact = m.group(1).strip().split(",")[0].strip() if m else "not visible"
    return (f"The image shows a simple synthetic scene. {filler_words(rng, n_words)} "
            f"Looking closely, the decisive detail for the question is {fact}. "
            "Nothing else in the image is relevant.")


ANSWER_SHAPES = ("boxed", "the_answer_is", "final_answer", "answer_tag", "bold")


def final_line(shape: str, answer: str) -> str:
    return {
        "boxed": f"Therefore, the answer is \\boxed{{{answer}}}.",
        "the_answer_is": f"The answer is {answer}.",
        "final_answer": f"Final Answer: {answer}",
        "answer_tag": f"<answer> Final Answer:{answer} </answer>",
        "bold": f"So the result is:\n**{answer}**",
    }[shape]


def reasoning(prompt: str, n_words: int, rng: random.Random, wrong_rate: float, key: str) -> tuple[str, str]:
    m = _DECISIVE.search(prompt)
    answer = m.group(1).strip() if m else "unknown"
    q = re.search(r"Question:\s*(.+)", prompt)
    question = q.group(1) if q else prompt[-200:]
    if rng_for("wrong", question).random() < wrong_rate:
        answer = wrong_answer(answer, prompt)
    think = (f"Okay, let me work through this. {filler_words(rng, n_words)}\n"
             f"Wait, putting it together, the answer should be {answer}.")
    shape = ANSWER_SHAPES[rng_for("shape", key).randrange(len(ANSWER_SHAPES))]
    return think, final_line(shape, answer)
