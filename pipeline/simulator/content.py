"""Deterministic simulated completions: same request -> same text, lognormal lengths.

Protocol between the simulated roles (simulation only): the pseudo-CoT ends with
``CONCLUSION: <answer>``; the description carries that fact as "the decisive detail ... is <answer>";
the simulated reasoner reads it back. A configurable share of questions is answered wrongly.
"""

from __future__ import annotations

import hashlib
import random
import re

# Sentences are composed from parts so long traces are not n-gram loops (which the filters reject).
_OPENERS = ["Let me look at", "Now consider", "I should check", "Next, focus on", "Hmm, what about",
            "Wait, let me re-examine", "Alternatively, think about", "To be careful, verify", "Looking again at",
            "It helps to compare", "Then I count", "So far I have covered"]
_OBJECTS = ["the upper left corner", "the shapes near the centre", "the label under the figure", "the second row",
            "the outline of each object", "the colour of the largest region", "the edge of the drawing",
            "the spacing between items", "the text printed at the top", "the lower right area",
            "the relative sizes", "the boundary lines", "the background", "the brightest element"]
_THOUGHTS = ["and it matches what I expected", "which rules out one possibility", "and nothing there is ambiguous",
             "because it could change the count", "so the earlier step still holds", "to avoid a careless slip",
             "and the numbers stay consistent", "which supports the current reading", "before moving on",
             "since small details matter here", "and that settles this part", "while keeping the question in mind"]
_REFERENCES = ["According to the description, the drawing is simple and clean.",
               "The description says the figure has a plain white background.",
               "As described, every object is clearly separated from the others."]
_CONCLUSION = re.compile(r"CONCLUSION:\s*(.+)")
_DECISIVE = re.compile(r"the decisive detail for the question is (.+?)\.(?:\s|$)")
_CORRECT = re.compile(r"Correct answer:\s*(.+)")
_OPTIONS = re.compile(r"^\s*\(?([A-H])[\.\):]", re.MULTILINE)


def rng_for(*parts: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big"))


def sample_length(rng: random.Random, mu: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(mu, sigma))))


def filler_words(rng: random.Random, n_words: int, references: bool = False) -> str:
    words = 0
    sentences: list[str] = []
    while words < n_words:
        if references and rng.random() < 0.04:
            sentence = rng.choice(_REFERENCES)  # what real R1 traces do: talk about "the description"
        else:
            sentence = f"{rng.choice(_OPENERS)} {rng.choice(_OBJECTS)}, {rng.choice(_THOUGHTS)} (step {len(sentences) + 1})."
        words += len(sentence.split())
        sentences.append(sentence)
    return " ".join(sentences)


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


def description(prompt: str, n_words: int, rng: random.Random, leak_rate: float = 0.0) -> str:
    m = _CONCLUSION.search(prompt)
    fact = m.group(1).strip().split(",")[0].strip() if m else "not visible"
    q = re.search(r"question:(.+?) and a thinking process", prompt, re.DOTALL)
    retry = "gave the answer away" in prompt
    leak = (not retry and rng_for("leak", q.group(1) if q else prompt).random() < leak_rate)
    return (f"The image shows a simple synthetic scene. {filler_words(rng, n_words)} "
            f"Looking closely, the decisive detail for the question is {fact}. "
            + (f"So the correct answer is {fact}. " if leak else "")
            + "Nothing else in the image is relevant.")


def judge(prompt: str, invalid_rate: float) -> str:
    q = re.search(r"Question:\s*(.+)", prompt)
    invalid = rng_for("judge", q.group(1) if q else prompt).random() < invalid_rate
    if invalid:
        return "VERDICT: INVALID\nStep 3 uses a detail the description does not support."
    return "VERDICT: VALID\nEvery step is supported by the description and ends at the reference answer."


def llm_rewrite(prompt: str) -> str:
    m = re.search(r"<reasoning>\s*(.*?)\s*</reasoning>", prompt, re.DOTALL)
    text = m.group(1) if m else ""
    for a, b in (("According to the description,", "Looking at the image,"),
                 ("The description says", "The image shows"), ("As described,", "As shown,")):
        text = text.replace(a, b)
    return f"<reasoning>\n{text}\n</reasoning>"


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
    if rng_for("wrong", question, key).random() < wrong_rate:  # per trace: best-of-k sees mixed results
        answer = wrong_answer(answer, prompt)
    think = (f"Okay, let me work through this. {filler_words(rng, n_words, references=True)}\n"
             f"Wait, putting it together, the answer should be {answer}.")
    shape = ANSWER_SHAPES[rng_for("shape", key).randrange(len(ANSWER_SHAPES))]
    return think, final_line(shape, answer)
