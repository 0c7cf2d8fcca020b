"""Labelled answer-matching suite: (gold, reasoner output, options, expected) through the full path
(extraction + gold typing + matching, math-verify in a worker process).

The cases are hand-written from the documented real shapes, not copied rows: Mulberry-SFT golds
("C", "58°." = an option's text with a period, "B: 45", a whole sentence) and its "A: 57" choice lines,
LLaVA-CoT conclusions ("B", "**B**", "B: 5 MPa", "21", short sentences), Mulberry's CoMCTS LaTeX options,
and the ways DeepSeek-R1 ends a trace (\\boxed{B}, \\boxed{\\text{B}}, \\boxed{B. 4}, \\boxed{4} for B = 4,
"**Answer:** B", "**Final Answer**" + boxed, "The correct option is B: 4", "Answer: B", "(B)",
fractions for decimal golds, values with units and degree signs, a short sentence), as listed in
shared/realdata/README.md and shared/REFERENCE.md §4.

expected: "match" (with the method that must decide it), "wrong" or "undecided" (both must not match).
Run with `pytest -s` to print precision, recall and the false-match count.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.records import Option
from pipeline.verify.compare import check_output
from pipeline.verify.options import parse_options
from pipeline.verify.pool import VerifierPool


def mulberry(question: str, choices: list[str]) -> list[Option]:
    # Mulberry's layout: "Based on the image, directly select ...\nQuestion: ...\nChoices:\nA: 57\nB: 113"
    text = ("Based on the image, directly select the correct answer for the following question:\n"
            f"Question: {question}\nChoices:\n" + "\n".join(f"{chr(65 + i)}: {c}" for i, c in enumerate(choices)))
    opts = parse_options(text)
    assert [o.text for o in opts] == choices
    return opts


def dotted(choices: list[str]) -> list[Option]:
    text = "Which one?\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    opts = parse_options(text)
    assert [o.text for o in opts] == choices
    return opts


NUM = mulberry("How many sides does the shape have?", ["3", "4", "5", "6"])
GEO = mulberry("Find the measure of angle 2.", ["32°", "45°", "58°", "60°"])
GEO3K = mulberry("Find x.", ["57", "113", "123", "67"])
ANG = mulberry("Find the angle.", ["30", "45", "60", "90"])
MPA = dotted(["3 MPa", "5 MPa", "7 MPa", "9 MPa"])
SURD = mulberry("Find the length of AB.", ["\\sqrt{10}", "8", "2\\sqrt{5}", "4"])
SCENE = dotted(["A cat is on the mat", "A dog is on the sofa", "Two birds are on a branch", "Nothing is in the room"])
FRUIT = dotted(["apple", "banana", "orange", "pear"])
YN = dotted(["Yes", "No"])
COLOR = dotted(["red", "dark red", "blue", "green"])
NONE: list[Option] = []

SENTENCE = "The enrollment rate in primary education in 1985 was approximately 76%."
UMBRELLA = "The man is holding a red umbrella."
LONG_R1 = ("Okay, so I need to find the measure of angle 2. The two lines are parallel, so angle 1 and angle 2 are "
           "alternate interior angles. Wait, let me double-check: the transversal crosses both lines, yes. ")


@dataclass(frozen=True)
class Case:
    gold: str
    final: str
    options: list[Option]
    expected: str  # match | wrong | undecided
    method: str | None = None  # for matches: the rule that must decide it
    reasoning: str | None = None


def M(gold, final, options=NONE, method=None, reasoning=None):
    return Case(gold, final, options, "match", method, reasoning)


def W(gold, final, options=NONE, reasoning=None):
    return Case(gold, final, options, "wrong", None, reasoning)


def U(gold, final, options=NONE, reasoning=None):
    return Case(gold, final, options, "undecided", None, reasoning)


CASES: list[Case] = [
    # --- gold letter, options "A: 3" ... (B is "4"): every R1 ending shape -------------------------
    M("B", "**Final Answer**\n\\boxed{B}", NUM, "letter"),
    M("B", "The shape has four sides.\n\nThe answer is \\boxed{B}.", NUM, "letter"),
    M("B", "\\boxed{\\text{B}}", NUM, "letter"),
    M("B", "\\boxed{B. 4}", NUM, "letter"),
    M("B", "\\boxed{4}", NUM, "option_text"),
    M("B", "**Answer:** B", NUM, "letter"),
    M("B", "The correct option is B: 4", NUM, "letter"),
    M("B", "Answer: B", NUM, "letter"),
    M("B", "Counting the corners gives four, which is option (B)", NUM, "letter"),
    M("B", "<answer> Final Answer:B </answer>", NUM, "letter"),
    M("B", "Counting the corners gives four.\n\n**B. 4**", NUM, "letter"),
    M("B", "B", NUM, "letter"),
    M("B", "Option B", NUM, "letter"),
    M("B", "\\boxed{(B)}", NUM, "letter"),
    M("B", "The answer is B because the shape has four corners.", NUM, "letter"),
    M("B", "\\boxed{4.0}", NUM, "option_text"),
    M("B", "\\boxed{\\textbf{B}}", NUM, "letter"),
    M("B", "Final Answer: B) 4", NUM, "letter"),
    M("B", "**Answer: B**", NUM, "letter"),
    M("B", "The shape is a quadrilateral.\n\n**Final Answer:** \\boxed{B: 4}", NUM, "letter"),
    M("B", "Final Answer: $\\boxed{B}$", NUM, "letter"),
    M("B", "I'd choose (B).", NUM, "letter"),
    M("B", "Option B is correct.", NUM, "letter"),
    M("B", "", NUM, "letter", reasoning=LONG_R1 + "Counting again: four sides. Therefore, the answer is B."),
    M("B", "", NUM, "letter", reasoning=LONG_R1 + "So the answer is not C. Hmm.\n\nFinal Answer: B"),
    M("B", "**Final Answer**\n\\boxed{B}", NUM, "letter", reasoning=LONG_R1 + "Maybe the answer is C. No, wait."),
    M("B", "Therefore, the correct answer is **B**.", NUM, "letter"),
    M("B", "Thus, the answer is option **B**.", NUM, "letter"),
    M("B", "**Final Answer**\n\n\\[\n\\boxed{B}\n\\]", NUM, "letter"),
    M("B", "### Final Answer\nB", NUM, "letter"),
    M("B", "The correct choice is **(B) 4**.", NUM, "letter"),
    M("B", "I think the answer is B, not C.", NUM, "letter"),
    M("B", "\\boxed{\\text{(B) } 4}", NUM, "letter"),
    W("B", "\\boxed{C}", NUM),
    W("B", "\\boxed{5}", NUM),
    W("B", "\\boxed{B. 5}", NUM),  # letter and text name different options
    W("B", "The answer is B or C.", NUM),
    W("B", "\\boxed{B, D}", NUM),
    W("B", "Both B and D are possible.", NUM),
    W("B", "\\boxed{4.5}", NUM),
    W("B", "**Answer:** C", NUM),
    W("B", "The correct option is D: 6", NUM),
    W("B", "(A)", NUM),
    W("B", "\\boxed{14}", NUM),  # "4" inside "14" is not option B
    W("B", "", NUM),
    W("B", "The answer is not B.", NUM),
    W("B", "**Final Answer**\n\\boxed{C}", NUM, reasoning=LONG_R1 + "So the answer is B."),
    # --- Mulberry "58°." gold: an option's text with a trailing period ------------------------------
    M("58°.", "\\boxed{C}", GEO, "letter"),
    M("58°.", "\\boxed{58^\\circ}", GEO, "option_text"),
    M("58°.", "\\boxed{58°}", GEO, "option_text"),
    M("58°.", "**Final Answer**\n\\boxed{58}", GEO, "option_text"),
    M("58°.", "The measure of angle 2 is 58 degrees, so the answer is C.", GEO, "letter"),
    M("58°.", "\\boxed{C: 58°}", GEO, "letter"),
    M("58°.", "Thus angle 2 measures 58°.\n\n**Final Answer**\n\\boxed{C}", GEO, "letter", reasoning=LONG_R1),
    M("58°.", "\\boxed{58 \\text{ degrees}}", GEO, "option_text"),
    W("58°.", "\\boxed{D}", GEO),
    W("58°.", "\\boxed{32^\\circ}", GEO),
    W("58°.", "\\boxed{58.5^\\circ}", GEO),
    W("58°.", "\\boxed{122^\\circ}", GEO),
    # --- Mulberry "B: 45" gold --------------------------------------------------------------------
    M("B: 45", "\\boxed{B}", ANG, "letter"),
    M("B: 45", "\\boxed{45}", ANG, "option_text"),
    M("B: 45", "Answer: B: 45", ANG, "letter"),
    M("B: 45", "\\boxed{45^\\circ}", ANG, "option_text"),
    W("B: 45", "\\boxed{A}", ANG),
    W("B: 45", "\\boxed{4.5}", ANG),
    W("B: 45", "\\boxed{C: 60}", ANG),
    # the same gold when the question's choices were not given: the letter and the text both count
    M("B: 45", "\\boxed{B}", NONE, "letter"),
    M("B: 45", "\\boxed{45}", NONE, "option_text"),
    W("B: 45", "\\boxed{C}", NONE),
    W("B: 45", "\\boxed{46}", NONE),
    # --- Mulberry geo3k "A: 57" choices, gold letter ----------------------------------------------
    M("C", "Angles 1 and 2 are supplementary, so x = 180 - 57 = 123.\n\nAnswer: C", GEO3K, "letter"),
    M("D", "\\boxed{67}", GEO3K, "option_text"),
    M("C", "\\boxed{x = 123}", GEO3K, "option_text"),
    W("D", "\\boxed{57}", GEO3K),
    M("C", "### The final answer is:\nC", GEO3K, "letter"),  # Mulberry's own closing line
    W("D", "\\boxed{167}", GEO3K),
    W("C", "\\boxed{113}", GEO3K),
    # --- LLaVA-CoT "**B**" and "B: 5 MPa" golds ----------------------------------------------------
    M("**B**", "\\boxed{B}", MPA, "letter"),
    M("**B**", "\\boxed{5 \\text{ MPa}}", MPA, "option_text"),
    M("**B**", "The stress is \\boxed{5\\,\\mathrm{MPa}}.", MPA, "option_text"),
    M("B: 5 MPa", "B", MPA, "letter"),
    M("B: 5 MPa", "\\boxed{5 MPa}", MPA, "option_text"),
    M("B: 5 MPa", "The correct option is B: 5 MPa", MPA, "letter"),
    W("**B**", "\\boxed{5 \\text{ kPa}}", MPA),
    W("**B**", "\\boxed{7 MPa}", MPA),
    W("B: 5 MPa", "\\boxed{A}", MPA),
    M("B: 5 MPa", "\\boxed{5 \\text{ MPa}}", NONE, "option_text"),
    W("B: 5 MPa", "\\boxed{5 \\text{ kPa}}", NONE),
    # --- the article "A" is not option A ---------------------------------------------------------
    W("B", "A cat is on the mat", SCENE),
    M("A", "A cat is on the mat", SCENE, "option_text"),
    M("B", "A dog is on the sofa.", SCENE, "option_text"),
    W("B", "\\boxed{A}", SCENE),
    M("A cat is on the mat", "\\boxed{A}", SCENE, "letter"),
    W("A dog is on the sofa", "\\boxed{A}", SCENE),
    M("B", "A banana.", FRUIT, "option_text"),
    W("A", "A banana.", FRUIT),
    W("A", "A small banana lies on the plate.", FRUIT),
    M("A", "\\boxed{A}", FRUIT, "letter"),
    M("A", "An apple.", FRUIT, "option_text"),
    M("C", "A ripe orange", FRUIT, "option_text"),
    M("B", "The fruit on the plate is a banana.", FRUIT, "option_text"),
    W("B", "It is not a banana; it is a pear.", FRUIT),
    W("A", "\\boxed{dark red}", COLOR),
    M("B", "The car is dark red.", COLOR, "option_text"),
    M("A", "The car is red.", COLOR, "option_text"),
    M("banana", "\\boxed{B}", FRUIT, "letter"),
    W("banana", "\\boxed{D}", FRUIT),
    # --- yes / no --------------------------------------------------------------------------------
    M("Yes", "\\boxed{Yes}", NONE, "yes_no"),
    M("yes", "**Answer:** Yes, the light is red.", NONE, "yes_no"),
    M("No", "\\boxed{\\text{No}}", NONE, "yes_no"),
    M("yes", "<answer> Final Answer:Yes </answer>", NONE, "yes_no"),
    M("No", "Final Answer: No, there is no cup on the table.", NONE, "yes_no"),
    M("Yes", "\\boxed{True}", NONE, "yes_no"),
    W("No", "\\boxed{Yes}", NONE),
    U("Yes", "There is a triangle in the drawing.", NONE),
    M("Yes", "Yes, there is a triangle in the drawing.", NONE, "yes_no"),
    W("Yes", "The answer is no.", NONE),
    W("yes", "\\boxed{\\text{No}}", NONE),
    M("A", "\\boxed{Yes}", YN, "option_text"),
    W("A", "\\boxed{No}", YN),
    # --- numbers ---------------------------------------------------------------------------------
    M("21", "\\boxed{21}", NONE, "numeric"),
    M("21", "The man is \\boxed{21} years old.", NONE, "numeric"),
    M("21", "**Final Answer**\n\\boxed{21 \\text{ years}}", NONE, "numeric"),
    M("21", "\\boxed{21.0}", NONE, "numeric"),
    M("21", "The answer is 21.", NONE, "numeric"),
    M("5", "\\boxed{x=5}", NONE, "numeric"),
    W("5", "\\boxed{-5}", NONE),
    W("-3", "\\boxed{3}", NONE),
    M("100", "\\boxed{10^2}", NONE, "math"),
    M("12 cm^2", "\\boxed{12 \\text{ cm}^2}", NONE, "numeric"),
    W("12 cm^2", "\\boxed{12 \\text{ cm}}", NONE),
    W("Yes", "Not necessarily.", NONE),
    W("B", "Answer: A", NUM),
    W("21", "\\boxed{12}", NONE),
    W("21", "\\boxed{211}", NONE),
    W("21", "\\boxed{2}", NONE),
    M("0.5", "\\boxed{\\frac{1}{2}}", NONE, "math"),
    M("0.5", "\\boxed{\\dfrac{1}{2}}", NONE, "math"),
    M("0.5", "\\boxed{0.50}", NONE, "numeric"),
    W("0.5", "\\boxed{0.54}", NONE),
    W("0.54", "\\boxed{0.5}", NONE),
    M("0.75", "\\boxed{\\frac{3}{4}}", NONE, "math"),
    W("0.75", "\\boxed{\\frac{2}{3}}", NONE),
    M("1.5", "Final Answer: \\(\\frac{3}{2}\\)", NONE, "math"),
    M("3.14", "\\boxed{3.1416}", NONE, "numeric"),
    M("0.33", "\\boxed{0.333}", NONE, "numeric"),
    W("0.33", "\\boxed{0.3}", NONE),
    W("2.45", "\\boxed{2.5}", NONE),
    W("5 m", "\\boxed{5 \\text{ km}}", NONE),
    M("5 km", "\\boxed{5 \\text{ km}}", NONE, "numeric"),
    M("5 km", "\\boxed{5}", NONE, "numeric"),
    M("5 km", "\\boxed{5 \\text{ kilometers}}", NONE, "numeric"),
    W("5 km", "\\boxed{5 \\text{ m}}", NONE),
    W("5 km", "\\boxed{50 \\text{ km}}", NONE),
    M("3 cm", "\\boxed{30 \\text{ mm}}", NONE, "numeric"),  # units of one dimension convert exactly
    M("2 hours", "\\boxed{120 \\text{ minutes}}", NONE, "numeric"),
    W("3 cm", "\\boxed{3 \\text{ mm}}", NONE),
    W("2 hours", "\\boxed{2 \\text{ minutes}}", NONE),
    W("2 kg", "\\boxed{2 \\text{ km}}", NONE),
    M("7", "\\boxed{3+4}", NONE, "math"),
    M("B", "Final answer\nB", NUM, "letter"),
    M("A", "**Answer: (A) red**", COLOR, "letter"),
    M("A", "The color of the square is red (A).", COLOR, "letter"),
    W("B", "The square is red, not dark red.", COLOR),
    M("76%", "\\boxed{76\\%}", NONE, "numeric"),
    M("76%", "The answer is 76%.", NONE, "numeric"),
    M("76%", "\\boxed{0.76}", NONE, "numeric"),
    W("76%", "\\boxed{67\\%}", NONE),
    W("76%", "\\boxed{7.6\\%}", NONE),
    M("1200", "\\boxed{1,200}", NONE, "numeric"),
    M("1,200", "\\boxed{1200}", NONE, "numeric"),
    M("$12.50", "\\boxed{\\$12.50}", NONE, "numeric"),
    M("$12.50", "\\boxed{12.5}", NONE, "numeric"),
    W("$12.50", "\\boxed{\\$12.05}", NONE),
    M("58°", "\\boxed{58^\\circ}", NONE, "numeric"),
    M("58°", "\\boxed{58 \\text{ degrees}}", NONE, "numeric"),
    W("58°", "\\boxed{58 \\text{ cm}}", NONE),
    M("12", "There are 12 apples in total.\n\n\\boxed{12}", NONE, "numeric"),
    M("12", "So \\boxed{3} rows of \\boxed{4} give \\boxed{12}", NONE, "numeric"),
    W("12", "First \\boxed{12}, but recounting gives \\boxed{13}", NONE),
    M("12", "", NONE, "numeric", reasoning=LONG_R1 + "So there are 12 apples.\n\n**Final Answer:** 12"),
    U("12", "\\boxed{twelve}", NONE),
    # short sentences: judged by their one number, never when two numbers or a negation make it unclear
    M("12", "There are 12 circles in the picture.", NONE, "numeric"),
    W("12", "There are 13 circles.", NONE),
    U("12", "Between 11 and 13 circles.", NONE),
    U("12", "Not 12, there are more.", NONE),
    M("21", "He is 21 years old.", NONE, "numeric"),
    W("21", "He is 12 years old.", NONE),
    M("5 km", "The distance is 5 km.", NONE, "numeric"),
    W("5 km", "The distance is 5 m.", NONE),
    M("76%", "About 76% of children were enrolled.", NONE, "numeric"),
    W("2017", "It was built in 2018.", NONE),
    # --- expressions (math-verify in the worker) --------------------------------------------------
    M("\\frac{3}{4}", "\\boxed{\\frac{3}{4}}", NONE, "string"),
    M("\\frac{3}{4}", "\\boxed{0.75}", NONE, "math"),
    W("\\frac{3}{4}", "\\boxed{\\frac{4}{3}}", NONE),
    M("2\\sqrt{3}", "\\boxed{\\sqrt{12}}", NONE, "math"),
    W("2\\sqrt{3}", "\\boxed{3\\sqrt{2}}", NONE),
    M("x^2+2x+1", "\\boxed{(x+1)^2}", NONE, "math"),
    M("(1, 2)", "\\boxed{(1,2)}", NONE, "string"),
    W("(1, 2)", "\\boxed{(2, 1)}", NONE),
    M("A", "\\boxed{\\sqrt{10}}", SURD, "option_text"),
    M("A", "\\boxed{A}", SURD, "letter"),
    W("A", "\\boxed{2\\sqrt{5}}", SURD),
    W("A", "\\boxed{\\sqrt{20}}", SURD),
    M("C", "\\boxed{\\sqrt{20}}", SURD, "math"),
    # --- sentences and free text: only an exact match is decided; the rest is undecided ----------
    M(SENTENCE, SENTENCE, NONE, "string"),
    U(SENTENCE, "\\boxed{76\\%}", NONE),
    U(SENTENCE, "The enrollment rate was about 80% in 1985.", NONE),
    M(UMBRELLA, "The man is holding a red umbrella", NONE, "string"),
    U(UMBRELLA, "He holds a blue umbrella.", NONE),
    M("Paris", "\\boxed{\\text{Paris}}", NONE, "string"),
    M("Paris", "Paris.", NONE, "string"),
    U("Paris", "\\boxed{London}", NONE),
    M("red umbrella", "**Answer:** A red umbrella", NONE, "string"),
    U("red umbrella", "\\boxed{umbrella}", NONE),
    U("dog", "The answer is cat.", NONE),
    U("the Eiffel Tower", "The answer is the Louvre.", NONE),
]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=1, timeout_s=20) as p:
        yield p


def test_suite_size():
    negatives = [c for c in CASES if c.expected != "match"]
    assert len(CASES) >= 150 and len(negatives) >= 40


def test_matching_suite(pool):
    tp = fp = fn = tn = 0
    failures = []
    for i, c in enumerate(CASES):
        v = check_output(c.final, c.reasoning, c.gold, c.options, math=pool.math_sync)
        got = "match" if v.correct else ("wrong" if v.decided else "undecided")
        if c.expected == "match":
            tp += v.correct
            fn += not v.correct
        else:
            fp += v.correct
            tn += not v.correct
        if got != c.expected or (c.method and v.correct and v.method != c.method):
            failures.append(f"#{i} gold={c.gold!r} final={c.final!r}: expected {c.expected}/{c.method}, "
                            f"got {got}/{v.method} (pred={v.pred!r})")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    print(f"\nmatching suite: {len(CASES)} cases ({tp + fn} should match, {fp + tn} must not); "
          f"precision {precision:.1%}, recall {recall:.1%}, false matches {fp}, missed {fn}, "
          f"label or method disagreements {len(failures)}")
    assert not failures, "\n".join(failures)
    assert fp == 0 and fn == 0
