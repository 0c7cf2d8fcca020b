"""Rule filters fed hand-written traces shaped like real R1 output (long, with self-corrections)."""

import re
from pathlib import Path

import pytest

from pipeline.filters import Drop, FilterChain, Trace
from pipeline.filters.leaks import answer_leak
from pipeline.filters.rules import (ConsistencyFilter, DegenerateFilter, FormatFilter, HintLeakFilter, LanguageFilter,
                                    LengthFilter, lower_words)
from pipeline.verify.options import parse_options

MC_Q = "Which fruit is on the plate?\nA. apple\nB. banana\nC. orange\nD. pear"

GOOD = """Okay, let's see. The question asks which fruit is on the plate. From the image, there's a white plate in the
middle of a wooden table, and on it there is one elongated yellow fruit with a slightly green stem.

Hmm, so the shape is curved and long. An apple would be round, an orange would be round with a dimpled orange skin,
and a pear has that teardrop shape. None of those fit a long curved yellow fruit.

Wait, could it be a pear lying on its side? Let me check again. A pear is wider at the bottom and the colour is
usually green or yellow-green, but it is not curved like a crescent. The fruit here is clearly crescent-shaped.

Alternatively, maybe it's a plantain? That's not one of the options anyway, and it would look very similar.

So among the options, the one that matches a long, curved, yellow fruit is the banana, which is option B.
Therefore, the answer is B."""

OPTS = parse_options(MC_Q)


def trace(reasoning=GOOD, final="The fruit on the plate is a banana.\n\n**Answer: B**", pred="B", tokens=900,
          question=MC_Q, answer="B", description="A white plate with one long curved yellow fruit."):
    return Trace(question=question, answer=answer, options=parse_options(question), description=description,
                 reasoning=reasoning, final_text=final, pred=pred, tokens=tokens)


def reason_of(result):
    assert isinstance(result, Drop), "expected a drop"
    return result.reason


def test_good_trace_passes_every_filter():
    chain = FilterChain([FormatFilter(), DegenerateFilter(), LengthFilter(50, 4000), LanguageFilter("en"),
                         ConsistencyFilter(), HintLeakFilter()])
    assert chain(trace()) is True
    assert all(s == {"seen": 1, "passed": 1, "dropped": 0} for s in chain.stats().values())


@pytest.mark.parametrize("reasoning,final,pred,detail", [
    ("", "B", "B", "no reasoning block"),
    (GOOD + "\n</think>\n<think>\nLet me start over. The fruit is long.", "B", "B", "stray"),
    (GOOD, "<think>again</think> B", "B", "stray <think>"),
    (GOOD, "", None, "no final answer"),
])
def test_format_filter_rejects(reasoning, final, pred, detail):
    f = FormatFilter()
    result = f(trace(reasoning=reasoning, final=final, pred=pred))
    assert reason_of(result) == "bad_format" and detail in result.detail
    assert f.stats.dropped == 1


def test_degenerate_filter_catches_loops_repeats_and_empty():
    f = DegenerateFilter()
    loop = GOOD + "\n" + " ".join(["Wait, so the answer is B because the fruit is yellow."] * 40)
    result = f(trace(reasoning=loop))
    assert reason_of(result) == "degenerate" and "8-gram loop: distinct ratio 0.30 < 0.6" in result.detail
    repeated = GOOD + "\n" + "\n".join(["Let me double check the shape of the fruit again."] * 5)
    result = f(trace(reasoning=repeated))
    assert reason_of(result) == "degenerate" and "repeated 5 times" in result.detail
    assert reason_of(f(trace(reasoning="It is B."))) == "degenerate"
    # Natural repetition in a real trace ("Wait", "let me check") is not a loop.
    assert f(trace()) is True


@pytest.mark.parametrize("text", [
    (Path(__file__).parent / "fixtures" / "rewrite" / "r1_trend_trace.txt").read_text(encoding="utf-8"),
    "ÀÉÎ naïve café, 25°C ×3 ÷ 2² = µm ª º ½; NBSP\xa0here\x85there_x don't STOP\tnow\x1c\x1fend",
    "Straße İstanbul ſ K Ω 你好 mixed: not Latin-1, the regex path",
    "", "   ", "a_b__c 123abc ABC-def",
])
def test_lower_words_are_the_regex_words(text):
    words = lower_words(text)
    assert [w.decode("latin-1") if isinstance(w, bytes) else w for w in words] == re.findall(r"\w+", text.lower())


@pytest.mark.parametrize("text,stated", [
    # A real R1 trace (fixtures/rewrite/README.md) that concludes with "So B best describes the trend".
    ((Path(__file__).parent / "fixtures" / "rewrite" / "r1_trend_trace.txt").read_text(encoding="utf-8"), []),
    ("Hmm, THE ANSWER IS NOT C. So it must be B, since 25°C.\nTherefore, it's (D).\nI'll Choose: option (B).",
     ["B", "D)", "B)"]),
    ("À la fin, THE FINAL ANSWER SHOULD BE: **B**; I will go with B", ["B**", "B"]),
    ("The answer is ×2 — so it is B. ſo it is C. I Select: A", ["×2 — so it is B", "C", "A"]),  # beyond Latin-1
    ("Thus,it is B\nHENCE IT HAS TO BE 4 because of the scale.", ["B", "4 because of the scale"]),
])
def test_conclusions_are_found_alike_on_both_paths(text, stated):
    from pipeline.filters.rules import _CONCLUDES, conclusions

    found = [(m.span(), text[m.start("x"):m.end("x")]) for m in conclusions(text)]
    assert [x for _, x in found] == stated
    assert found == [(m.span(), m.group("x")) for m in _CONCLUDES.ignorecase.finditer(text) if not m.group("neg")]


def test_length_bounds():
    f = LengthFilter(min_tokens=200, max_tokens=2000)
    assert reason_of(f(trace(tokens=150))) == "too_short"
    assert reason_of(f(trace(tokens=2500))) == "too_long"
    assert f(trace(tokens=900)) is True


def test_language_filter_flags_chinese_drift_but_allows_quoted_image_text():
    f = LanguageFilter("en")
    drift = GOOD.replace("Wait, could it be a pear", "等等，这可能是梨吗？Wait, could it be a pear")
    result = f(trace(reasoning=drift))
    assert reason_of(result) == "language_mix" and "等等" in result.detail
    sign = trace(reasoning=GOOD + "\nThe sign on the plate says 香蕉, which means banana.",
                 description="A plate with a small sign reading 香蕉 and a long yellow fruit.")
    assert f(sign) is True
    zh = LanguageFilter("zh")
    assert reason_of(zh(trace())) == "language_mix"
    assert zh(trace(reasoning="好的，我们来看这个问题。盘子上有一个长长的弯曲的黄色水果，所以答案是香蕉，也就是选项B。")) is True


def test_consistency_filter():
    f = ConsistencyFilter()
    assert f(trace()) is True
    flipped = GOOD.replace("Therefore, the answer is B.", "Therefore, the answer is D.")
    result = f(trace(reasoning=flipped))
    assert reason_of(result) == "inconsistent" and "'D'" in result.detail
    # A self-correction that ends on the output answer is consistent.
    corrected = GOOD.replace("Therefore, the answer is B.", "So the answer is D. Wait, no, a pear is not curved. "
                                                            "Let me fix that: the answer is B.")
    assert f(trace(reasoning=corrected)) is True
    # Numbers: "the answer should be 12" vs output 12.0 is consistent; vs 13 is not.
    num = "Counting the rows: 3 rows of 4 gives 12 apples. Let me verify: 4 + 4 + 4 = 12. So the answer should be 12."
    assert f(trace(reasoning=num, question="How many apples?", answer="12", pred="12.0")) is True
    assert reason_of(f(trace(reasoning=num, question="How many apples?", answer="13", pred="13"))) == "inconsistent"
    # By option text: concluding "banana" while outputting B is consistent.
    text = GOOD.replace("Therefore, the answer is B.", "Therefore, the answer is banana.")
    assert f(trace(reasoning=text)) is True


@pytest.mark.parametrize("sentence", [
    "Since the reference answer is B, the fruit must be a banana.",
    "The given answer says banana, so let me justify it.",
    "I was told the answer is B, so I need to reason towards it.",
    "Using the hint, the answer is B.",
    "The answer provided is B, which matches the shape.",
])
def test_hint_leak_rejected(sentence):
    result = HintLeakFilter()(trace(reasoning=GOOD + "\n" + sentence))
    assert reason_of(result) == "hint_leak"


def test_hint_leak_does_not_flag_ordinary_reasoning():
    assert HintLeakFilter()(trace(reasoning=GOOD + "\nI have given this enough thought; the answer is B.")) is True


@pytest.mark.parametrize("text,said", [
    ("Since the REFERENCE Answer is B, it fits.", "REFERENCE Answer"),
    ("Hmm, I WAS TOLD the answer already.", "I WAS TOLD"),
    ("Using the hint (×2 scale), the answer is B.", "the hint"),  # beyond Latin-1: the IGNORECASE path
    ("At 25°C, À PROPOS: the Hint says B.", "the Hint"),  # Latin-1: the lower-cased path
    ("ÉTHE HINT and éthe hint", None),  # É/é are word characters: no word boundary before "the"
    ("Café\xa0i\xa0was\xa0told so", "i\xa0was\xa0told"),  # a no-break space is whitespace to both
    ("Using the hinT (×2 scale).", "the hinT"),
    ("We are told that the answer is 4 — fine.", "We are told that the answer"),
    ("The given  correct\nanswer is C.", "given  correct\nanswer"),
    ("Nothing hinted here; the hints of colour show the answer is B.", None),  # "hinted", "hints": other words
    ("I was toldly misled; the answer keys are elsewhere", None),
    ("The ſhint of a circle.", None),  # a long s is no "the hint"
    ("Ｔhe hint", None),  # a fullwidth T: not a word boundary before "he hint" either
    ("", None),
])
def test_hint_mentions_are_found_as_written_on_both_paths(text, said):
    from pipeline.filters.rules import _HINT, hint_mention

    assert hint_mention(text) == said
    # The fast (lower-cased Latin-1) path and the IGNORECASE one agree.
    m = _HINT.ignorecase.search(text)
    assert (m.group(0) if m else None) == said


@pytest.mark.parametrize("description,leaks", [
    ("A white plate holds one long, curved, yellow fruit with a green stem.", False),
    ("The plate holds a banana. The correct answer is B.", True),
    ("The plate holds a banana, so option B is correct.", True),
    ("Answering the question, the answer is banana.", True),
    ("There are five options listed below the plate: A to D.", False),
    ("The correct option is (B) because the fruit is curved.", True),
    # Any case, any script: the cheap "names none of answer/option/choice" exit must not hide one.
    ("À 25°C the plate holds a banana. THE CORRECT ANSWER IS B.", True),
    ("The plate holds a banana; the anſwer is B.", True),  # a long s: IGNORECASE reads it as s
    ("Le plat (25°C) tient une banane jaune.", False),
    ("A banana, 黄色的 fruit, on a plate.", False),
])
def test_answer_leak_in_description(description, leaks):
    result = answer_leak(description, "B", OPTS)
    assert (result is not True) == leaks
    if leaks:
        assert result.reason == "answer_leak"


def test_answer_leak_numeric_fact_is_not_a_leak_but_announcement_is():
    assert answer_leak("There are 5 red circles arranged in two rows.", "5", []) is True
    assert reason_of(answer_leak("There are circles; the answer is 5.", "5", [])) == "answer_leak"
