"""Deterministic simulated completions: same request -> same text, lognormal lengths.

Protocol between the simulated roles (simulation only): the pseudo-CoT ends with
``CONCLUSION: <answer>``; the description carries that fact as "the decisive detail ... is <answer>";
the simulated reasoner reads it back, resolves it against the options in its prompt and answers in
one of DeepSeek-R1's real final-answer forms (see answers.py), never by echoing the gold's own text
when an equivalent form exists. A configurable share of traces is answered wrongly, in the same forms.
The simulated VLM can write Qwen special tokens into its output (``special_token_rate``, default 0).
"""

from __future__ import annotations

import hashlib
import math
import random
import re

from . import answers

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
# What real R1 traces do: talk about "the description" (the modality rewrite must handle every one).
_REFERENCES = ["According to the description, the drawing is simple and clean.",
               "The description says the figure has a plain white background.",
               "As described, every object is clearly separated from the others.",
               "The description mentions that the lines are drawn in a single colour.",
               "Hmm, the description never mentions any hidden parts, so I can rely on what is listed.",
               "From the description, nothing overlaps anything else.",
               "Wait, the description states that the labels are printed clearly."]
_THINK_OPENERS = ["Okay, let me try to figure this out.", "Okay, so I need to answer this question about the image.",
                  "Okay, let's see.", "Alright, let me work through this step by step.",
                  "Okay, let me start by understanding what the question is asking."]
_SUMMARIES = ["Putting the details together gives one consistent result.",
              "Checking each detail against the question leads to a single answer.",
              "Step by step, the visible details determine the answer."]
# Special tokens of Qwen2.5-VL that random-weight and real models sometimes write into their output.
SPECIAL_TOKENS = ("<|im_end|>", "<|video_pad|>", "<|endoftext|>", "<|image_pad|>", "<|vision_start|>", "<|im_start|>")
_SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
# The description prompt (prompts/description.v1.j2) continues on the pseudo-CoT's last line.
_CONCLUSION = re.compile(r"CONCLUSION:\s*(.+?)(?:, provide a detailed description|$)", re.MULTILINE)
# The fact ends where the description's own closing sentence (or its leaked answer) starts, so golds
# with inner periods ("0.5", "58°.", a whole sentence) are read back whole.
_DECISIVE = re.compile(r"the decisive detail for the question is (.+?)\.\s+(?:So the correct answer is|Nothing else in the image is relevant)", re.DOTALL)
_DECISIVE_OLD = re.compile(r"the decisive detail for the question is (.+?)\.(?:\s|$)")
_CORRECT = re.compile(r"Correct answer:\s*(.+)")


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


def with_special_tokens(text: str, rng: random.Random, rate: float) -> str:
    """With probability `rate`, one or two special tokens between sentences or at the end."""
    if rate <= 0 or rng.random() >= rate:
        return text
    for _ in range(rng.choice((1, 1, 2))):
        token = rng.choice(SPECIAL_TOKENS)
        cuts = [m.end() for m in re.finditer(r"[.!?] ", text)] + [len(text)]
        at = rng.choice(cuts)
        text = text[:at] + token + text[at:]
    return text


def strip_special(text: str) -> str:
    return _SPECIAL.sub("", text)


def pseudo_cot(prompt: str, n_words: int, rng: random.Random, special_token_rate: float = 0.0) -> str:
    answer = (_CORRECT.search(prompt).group(1).strip() if _CORRECT.search(prompt) else "unknown")
    caption, steps = filler_words(rng, n_words // 2), filler_words(rng, n_words // 2)
    tokens = random.Random(rng.random())  # its own stream: the rate never changes the text around it
    return (f"SUMMARY: Find what the question asks from the image.\n"
            f"CAPTION: {with_special_tokens(caption, tokens, special_token_rate)}\n"
            f"REASONING: {steps}\nCONCLUSION: {answer}")


def description(prompt: str, n_words: int, rng: random.Random, leak_rate: float = 0.0,
                special_token_rate: float = 0.0) -> str:
    m = _CONCLUSION.search(prompt)
    # The whole conclusion line (golds may hold commas: "1,000", sentences), less a closing period.
    fact = strip_special(m.group(1)).strip().removesuffix(".").strip() if m else "not visible"
    q = re.search(r"question:(.+?) and a thinking process", prompt, re.DOTALL)
    retry = "gave the answer away" in prompt
    leak = (not retry and rng_for("leak", q.group(1) if q else prompt).random() < leak_rate)
    tokens = random.Random(rng.random())
    body = with_special_tokens(filler_words(rng, n_words), tokens, special_token_rate)
    end = "<|im_end|>" if special_token_rate > 0 and tokens.random() < special_token_rate else ""
    return (f"The image shows a simple synthetic scene. {body} "
            f"Looking closely, the decisive detail for the question is {fact}. "
            + (f"So the correct answer is {fact}. " if leak else "")
            + "Nothing else in the image is relevant." + end)


def judge(prompt: str, invalid_rate: float) -> str:
    q = re.search(r"Question:\s*(.+)", prompt)
    invalid = rng_for("judge", q.group(1) if q else prompt).random() < invalid_rate
    if invalid:
        return "VERDICT: INVALID\nStep 3 uses a detail the description does not support."
    return "VERDICT: VALID\nEvery step is supported by the description and ends at the reference answer."


_NUMBERS = re.compile(r"\d+(?:\.\d+)?")
_WORDS = re.compile(r"[a-z]{3,}")


def answer_judge(prompt: str) -> str:
    """A stand-in for an LLM answer judge (simulation only): SAME when the candidate carries the same
    figures as the reference and shares most of its content words, else DIFFERENT."""
    ref = re.search(r"Reference answer:\s*(.+)", prompt)
    cand = re.search(r"Candidate answer:\s*(.+)", prompt)
    if not ref or not cand:
        return "I cannot tell."
    r, c = ref.group(1).lower(), cand.group(1).lower()
    words_r, words_c = set(_WORDS.findall(r)), set(_WORDS.findall(c))
    nums_r, nums_c = _NUMBERS.findall(r), _NUMBERS.findall(c)
    overlap = len(words_r & words_c) / max(1, min(len(words_r), len(words_c)))
    # A bare value ("76%") answers a sentence gold when it is one of the sentence's figures.
    bare_value = not words_c and nums_c and set(nums_c) <= set(nums_r)
    if bare_value or (sorted(nums_r) == sorted(nums_c) and overlap >= 0.5):
        return "VERDICT: SAME\nBoth state the same facts."
    return "VERDICT: DIFFERENT\nThe candidate states another value or fact."


def llm_rewrite(prompt: str) -> str:
    m = re.search(r"<reasoning>\s*(.*?)\s*</reasoning>", prompt, re.DOTALL)
    text = m.group(1) if m else ""
    for a, b in (("According to the description,", "Looking at the image,"),
                 ("The description says", "The image shows"), ("As described,", "As shown,")):
        text = text.replace(a, b)
    return f"<reasoning>\n{text}\n</reasoning>"


def read_gold(prompt: str) -> str:
    """The gold as the description states it (the simulated roles' protocol)."""
    m = _DECISIVE.search(prompt) or _DECISIVE_OLD.search(prompt)
    return strip_special(m.group(1)).strip() if m else "unknown"


def _distractor(said: answers.Answer, options: list, rng: random.Random) -> str | None:
    """Another candidate the trace can rule out ("so it's not C; it must be B")."""
    if said.letter and options:
        others = [o.letter for o in options if o.letter != said.letter]
        return rng.choice(others) if others else None
    if said.number is not None and not said.letter:
        return answers._plain_value(answers._shift(said.number, rng.choice((1, -1))), said.unit)
    return None


def think_text(n_words: int, rng: random.Random, claim: str, distractor: str | None) -> str:
    """An R1-like trace: "Okay, ...", reflection words, description references, a consistent conclusion."""
    sentences = re.split(r"(?<=[.!?]) ", filler_words(rng, n_words, references=True))
    paragraphs = [rng.choice(_THINK_OPENERS)]
    while sentences:
        take = rng.randint(3, 6)
        paragraphs.append(" ".join(sentences[:take]))
        sentences = sentences[take:]
    if distractor and rng.random() < 0.4:
        paragraphs.insert(len(paragraphs) // 2 + 1,
                          f"Hmm, could it be {distractor}? Wait, no, that does not fit what I found so far.")
    closings = [f"So the answer should be {claim}.", f"Therefore, the answer is {claim}.",
                f"Putting it together, I'm fairly confident the answer is {claim}."]
    if distractor:
        closings.append(f"So it's not {distractor}; it must be {claim}.")
    paragraphs.append(rng.choice(closings))
    return "\n\n".join(paragraphs)


def reasoning(prompt: str, n_words: int, rng: random.Random, wrong_rate: float, key: str) -> tuple[str, str]:
    """(think, final answer text). Right or wrong, the answer comes in one of R1's real forms."""
    q = re.search(r"Question:\s*(.+)", prompt)
    question = q.group(1) if q else prompt[-200:]
    options = answers.options_in(prompt)
    truth = answers.resolve(read_gold(prompt), options)
    form_rng = rng_for("shape", key)
    if rng_for("wrong", question, key).random() < wrong_rate:  # per trace: best-of-k sees mixed results
        said = answers.wrong(truth, options, form_rng)
        rendering = answers.choose(said, form_rng, question=question, avoid=truth)
    else:
        said = truth
        rendering = answers.choose(truth, form_rng, gold_text=truth.raw, question=question)
    distractor = _distractor(said, options, form_rng)
    think = think_text(n_words, rng, rendering.claim, distractor)
    return think, f"{form_rng.choice(_SUMMARIES)}\n\n{rendering.final}"


def question_trace(prompts, question: str, rng: random.Random, reasoning_rng: random.Random, key: str, *,
                   pseudo_words: int, description_words: int, median_words: float, sigma: float,
                   min_words: int, max_words: int) -> str:
    """The simulated reasoner's thinking for `question` after the three stages (pseudo-CoT ->
    description -> blind reasoning prompt, rendered from `prompts`, a PromptLibrary), without
    servers: traces for the rewrite's tests and benchmark. Lengths are lognormal, clipped."""
    pseudo = pseudo_cot(prompts.get("pseudo_cot.v1").render(question=question, answer="B"), pseudo_words, rng)
    desc = description(prompts.get("description.v1").render(question=question, pseudo_cot=pseudo),
                       description_words, rng)
    prompt = prompts.get("reasoning_blind.v1").render(description=desc, question=question)
    words = int(min(max_words, max(min_words, rng.lognormvariate(math.log(median_words), sigma))))
    think, _ = reasoning(prompt, words, reasoning_rng, 0.2, key)
    return think
