"""Modality rewrite (rules v2): realistic sentences that mention a description or caption, each
asserted exactly: rewritten to an expected sentence, kept as it is, or rejected as residue.

The sentences follow the forms DeepSeek-R1 writes when it reasons over an image description
("Wait, the description mentions...", "Based on the description provided, ...", "Hmm, the
caption says..."), with LaTeX math, money amounts, captions printed in images and words that
come from the question or the options.
"""

import asyncio
import re
from pathlib import Path

import pytest

from pipeline.config import ConvertConfig
from pipeline.filters import Drop, Trace
from pipeline.prompts import PromptLibrary
from pipeline.quality import QualityGate
from pipeline.records import Option, Sample
from pipeline.rewrite import ModalityRewriter, math_spans

REWRITER = ModalityRewriter()

MOOD_Q = "Which of the following best describes the mood of the painting?"
CONTEST_Q = "What kind of event does the poster advertise?"
CONTEST_OPTS = ["a caption contest", "a spelling bee", "a book fair", "a bake sale"]
CAPTION_Q = "What year is written in the caption under the photo?"
DESCRIBE_OPTS = ["It describes a sunrise.", "It describes a storm.", "It describes a harvest.", "It describes a city."]

# (input, expected output): the rewrite must give exactly this, with no residue and no artifact.
REWRITES = [
    # The artifacts of the issue.
    ("The description says the image shows a cat.", "The image shows a cat."),
    ("The description says that the image shows a cat sleeping on a sofa.", "The image shows a cat sleeping on a sofa."),
    ("According to the description, the image shows three apples.", "The image shows three apples."),
    ("The caption states that the figure clearly shows two parallel lines.", "The figure clearly shows two parallel lines."),
    ("Based on the description, the diagram shows a right triangle.", "The diagram shows a right triangle."),
    ("The description never mentions a dog.", "The image never shows a dog."),
    ("The description never mentioned the time of day.", "The image never showed the time of day."),
    ("The descriptions never mention a third bar.", "The images never show a third bar."),
    ("The shirt costs $5 and the description says the hat costs $7.", "The shirt costs $5 and the image shows the hat costs $7."),
    ("A ticket is $12.50 and, according to the description, a child ticket is $6.", "A ticket is $12.50 and, looking at the image, a child ticket is $6."),
    ("The descriptions say the two bars are equal.", "The images show the two bars are equal."),
    ("The descriptions mention a red car and a blue car.", "The images show a red car and a blue car."),
    ("The descriptions don't mention any people.", "The images don't show any people."),
    ("The descriptions stated that both rooms have windows.", "The images showed that both rooms have windows."),
    ("According to the descriptions, the first photo is darker.", "Looking at the images, the first photo is darker."),
    ("The description says the caption at the bottom of the poster reads 'SALE'.", "The image shows the caption at the bottom of the poster reads 'SALE'."),
    ("The description mentions that the caption in the image says 'Welcome home'.", "The image shows that the caption in the image says 'Welcome home'."),
    # R1-style openings.
    ("Wait, the description mentions two red cubes and one blue sphere.", "Wait, the image shows two red cubes and one blue sphere."),
    ("Based on the description provided, the angle at B is $40^\\circ$.", "Looking at the image, the angle at B is $40^\\circ$."),
    ("Hmm, the caption says there is a bridge over the river.", "Hmm, the image shows there is a bridge over the river."),
    ("Okay, so the description says there are five people at the table.", "Okay, so the image shows there are five people at the table."),
    ("Let me re-read the description: the angle at B is $40^\\circ$.", "Let me look at the image again: the angle at B is $40^\\circ$."),
    ("Re-reading the description, I see a second door on the left.", "Looking at the image again, I see a second door on the left."),
    ("Wait, let me check the description again.", "Wait, let me check the image again."),
    ("But the description doesn't say whether the light is on.", "But the image doesn't show whether the light is on."),
    ("Alternatively, maybe the description is referring to the larger circle.", "Alternatively, maybe the image is referring to the larger circle."),
    ("Hmm, the description also notes a small label on the bottle.", "Hmm, the image also shows a small label on the bottle."),
    ("So according to the description, the answer should be 12.", "So looking at the image, the answer should be 12."),
    ("I can't see the image, but the description says the car is red.", "The image shows the car is red."),
    ("Since I can't see the image, I'll rely on the description. The bar is 30 units tall.", "The bar is 30 units tall."),
    ("I was given a description of the image rather than the image itself. The cat is on the left.", "The cat is on the left."),
    # Plain references.
    ("According to the description, there are three red apples on the table.", "Looking at the image, there are three red apples on the table."),
    ("The description says that the bar for 2019 is the tallest.", "The image shows that the bar for 2019 is the tallest."),
    ("Based on the description, the triangle has a right angle at C.", "Looking at the image, the triangle has a right angle at C."),
    ("Wait, the caption mentions a dog near the fence.", "Wait, the image shows a dog near the fence."),
    ("The image description shows five circles.", "The image shows five circles."),
    ("As described, the sign reads 'STOP'.", "As shown, the sign reads 'STOP'."),
    ("The man is described as wearing a blue hat.", "The man appears to be wearing a blue hat."),
    ("The man is described as having a beard.", "The man appears to have a beard."),
    ("The houses are described as having red roofs.", "The houses appear to have red roofs."),
    ("The shapes are described as being evenly spaced.", "The shapes appear to be evenly spaced."),
    ("The lake was described as frozen.", "The lake appeared to be frozen."),
    ("The description doesn't mention any other vehicles.", "The image doesn't show any other vehicles."),
    ("The description does not specify the color of the car.", "The image does not show the color of the car."),
    ("The caption didn't mention whether the light is on.", "The image didn't show whether the light is on."),
    ("The number of people isn't mentioned in the description.", "The number of people isn't shown in the image."),
    ("From the description, the graph is increasing.", "From the image, the graph is increasing."),
    ("In the caption, the label on the left axis is 'Temperature'.", "In the image, the label on the left axis is 'Temperature'."),
    ("The provided description lists four items: a cup, a pen, a book, and a lamp.", "The image shows four items: a cup, a pen, a book, and a lamp."),
    ("Hmm, the description mentioned that the car is red, so the answer is red.", "Hmm, the image showed that the car is red, so the answer is red."),
    ("The described scene contains a kitchen with two windows.", "The scene contains a kitchen with two windows."),
    ("The caption's mention of a red umbrella suggests rain.", "The presence of a red umbrella suggests rain."),
    ("Nothing in the description indicates a second door.", "Nothing in the image shows a second door."),
    ("The description-based estimate is 12.", "The image-based estimate is 12."),
    ("The description clearly says the clock shows 3:15.", "The image clearly shows the clock shows 3:15."),
    ("The text says the store opens at 9.", "The image shows the store opens at 9."),
    ("As mentioned in the description, the river flows east.", "As shown in the image, the river flows east."),
    ("The description of the image indicates that there are 12 students.", "The image shows that there are 12 students."),
    ("Given the description, the largest slice is blue.", "Looking at the image, the largest slice is blue."),
    ("The lengths given in the description are 3 cm and 4 cm.", "The lengths shown in the image are 3 cm and 4 cm."),
    ("The description describes a triangle with sides 3, 4 and 5.", "The image shows a triangle with sides 3, 4 and 5."),
    ("The diagram, as stated in the caption, has two parallel lines.", "The diagram, as shown in the image, has two parallel lines."),
    ("The description says:\n- a red car\n- a blue bike", "The image shows:\n- a red car\n- a blue bike"),
    ("This description tells us the boy is holding a kite.", "The image shows the boy is holding a kite."),
    ("The scene described above has three people.", "The scene shown above has three people."),
    ("Okay, so the description displays a pie chart.\n\nWait, the description illustrates two trends.", "Okay, so the image shows a pie chart.\n\nWait, the image shows two trends."),
    ("The objects described in the image are a cup and a spoon.", "The objects shown in the image are a cup and a spoon."),
    ("The description's details suggest a winter scene.", "The image's details suggest a winter scene."),
    ("The description is a bit vague about the background.", "The image is a bit vague about the background."),
    ("The description would show a label if there were one.", "The image would show a label if there were one."),
    ("As per the description, the door is open.", "Looking at the image, the door is open."),
    ("The detailed description says the bottle is half full.", "The image shows the bottle is half full."),
    ("The description only says the sky is cloudy.", "The image only shows the sky is cloudy."),
    ("The description explicitly states the length is 7 m.", "The image explicitly shows the length is 7 m."),
    ("The description above says the price is $20.", "The image shows the price is $20."),
    ("In the description, it says the bus is yellow.", "The image shows the bus is yellow."),
    ("From the description, it also mentions a bench.", "The image also shows a bench."),
    ("The description's first sentence says the sky is blue.", "The image shows the sky is blue."),
    ("Wait, the description provided mentions three dogs.", "Wait, the image shows three dogs."),
    ("That description says nothing about the time.", "The image shows nothing about the time."),
    ("Both descriptions agree that the door is open.", "The images agree that the door is open."),
    ("The description of the scene says there are two dogs.", "The image shows there are two dogs."),
    ("The description mentions a sign, and the sign says 'OPEN'.", "The image shows a sign, and the sign says 'OPEN'."),
    # Math and money stay as they are; text between them is prose.
    ("The description states that $x + y = 10$ and the description also says x is positive.", "The image shows that $x + y = 10$ and the image also shows x is positive."),
    ("In the detailed description, the area is $\\frac{1}{2} \\cdot b \\cdot h$ where the caption gives b = 4.", "In the image, the area is $\\frac{1}{2} \\cdot b \\cdot h$ where the image gives b = 4."),
    ("The description lists prices of $3, $4 and $5 for the three drinks.", "The image shows prices of $3, $4 and $5 for the three drinks."),
    ("It costs $1,200 and the description says the discount is $150.", "It costs $1,200 and the image shows the discount is $150."),
    ("Then $\\text{area} = 6$ and the description mentions a $3 \\times 4$ grid.", "Then $\\text{area} = 6$ and the image shows a $3 \\times 4$ grid."),
    ("The description says $$a^2 + b^2 = c^2$$ holds for the triangle.", "The image shows $$a^2 + b^2 = c^2$$ holds for the triangle."),
    ("Using \\(x = 2\\), the description says the line passes through \\((2, 5)\\).", "Using \\(x = 2\\), the image shows the line passes through \\((2, 5)\\)."),
    # Question words are kept; references to the description are still rewritten.
    ("The description says the woman is smiling, so the word that best describes the mood is joyful.",
     "The image shows the woman is smiling, so the word that best describes the mood is joyful.", MOOD_Q, ()),
    ("The description mentions a cartoon with blank speech bubbles, which suggests the caption contest.",
     "The image shows a cartoon with blank speech bubbles, which suggests the caption contest.", CONTEST_Q, CONTEST_OPTS),
    ("The description says the caption reads 'Summer 1969', so the year is 1969.",
     "The image shows the caption reads 'Summer 1969', so the year is 1969.", CAPTION_Q, ()),
    ("According to the description, the sky is orange, so option A describes it best.",
     "Looking at the image, the sky is orange, so option A describes it best.", "Which sentence describes the picture?", DESCRIBE_OPTS),
]

# Kept exactly as they are (nothing to rewrite) and not rejected.
KEPT = [
    ("The caption in the image says 'Welcome'.", "", ()),
    ("The caption under the photo reads 'Summer 1969'.", "", ()),
    ("The caption at the bottom of the chart reads 'Source: WHO'.", "", ()),
    ("A caption printed on the poster says \"Vote today\".", "", ()),
    ("The caption reads \"Best in show\", so the dog won.", "", ()),
    ("The photo's caption mentions the year 1969.", "", ()),
    ("The caption of the cartoon says 'I said no'.", "", ()),
    ("The image shows a cat.", "", ()),
    ("The answer is $x = 5$.", "", ()),
    ("Let me compute $\\text{description length} = 4$ first.", "", ()),
    ("The inscription on the stone is Latin, and the prescription bottle is empty.", "", ()),
    ("The transcription of the sign is 'EXIT'.", "", ()),
    ("I need to find which option best describes the mood.", MOOD_Q, ()),
    ("Calm best describes the mood, since the colours are soft.", MOOD_Q, ()),
    ("The caption contest option matches the cartoon with empty speech bubbles.", CONTEST_Q, CONTEST_OPTS),
    ("So the event is a caption contest.", CONTEST_Q, CONTEST_OPTS),
    ("The year in the caption is 1969.", CAPTION_Q, ()),
    ("Option B describes a storm, which matches the dark clouds.", "Which sentence describes the picture?", DESCRIBE_OPTS),
    ("The triangle described in the problem has a right angle.", "", ()),
    ("The question describes a trapezoid with parallel sides.", "", ()),
    ("Description B matches the picture best.", "Which description matches the picture?", ["Description A", "Description B"]),
    ("As mentioned earlier, the sum is 15.", "", ()),
    ("The situation described by option C matches the picture.", "", ()),
    ("The description in the question says the triangle is isosceles.", "", ()),
    ("As described in the question, the triangle is isosceles.", "", ()),
    ("The text in the image says 'EXIT'.", "", ()),
    ("Given the diagram, the answer is B.", "", ()),
    ("Costs are \\$5 and \\$7, so the total is \\$12.", "", ()),
    ("The sale price is $5 and the full price is $7, so the discount is $2.", "", ()),
]

# Rejected as residue: a reference to the description that no rule can rewrite.
RESIDUE = [
    ("It describes a red car parked by the road.", "", (), "describes"),
    ("There is no description of the background.", "", (), "description"),
    ("Description: a red car next to a tree.", "", (), "Description"),
    ("A caption like that would be vague.", "", (), "caption"),
    ("Nothing is said about the weather, which is described nowhere.", "", (), "described"),
    ("Captions can be misleading here.", "", (), "Captions"),
    ("Per my notes on a description of this kind, the car is red.", "", (), "description"),
    ("From what it describes, the answer is 4.", "What is the value of x?", (), "describes"),
    ("In other words, my description would be: two dogs on grass.", "", (), "description"),
    ("Describing the scene, it mentions two dogs.", "", (), "Describing"),
]


def _case(entry):
    source, expected, *ctx = entry
    question, options = (ctx + ["", ()])[:2] if ctx else ("", ())
    return source, expected, question, list(options)


@pytest.mark.parametrize("entry", REWRITES, ids=lambda e: e[0][:40])
def test_rewrite_reads_correctly(entry):
    source, expected, question, options = _case(entry)
    got = REWRITER.rewrite(source, question, options)
    assert got == expected
    assert REWRITER.residue_in(got, question, options) is None
    assert REWRITER.new_artifact(source, got) is None


@pytest.mark.parametrize("source,question,options", KEPT, ids=lambda e: str(e)[:40])
def test_legitimate_text_is_kept_as_is(source, question, options):
    assert REWRITER.rewrite(source, question, options) == source
    assert REWRITER.residue_in(source, question, options) is None


@pytest.mark.parametrize("source,question,options,word", RESIDUE, ids=lambda e: str(e)[:40])
def test_unrewritable_references_are_residue(source, question, options, word):
    got = REWRITER.rewrite(source, question, options)
    assert REWRITER.residue_in(got, question, options) == word


def test_suite_size():
    # The issue asks for at least 100 sentences; the report quotes this count.
    assert len(REWRITES) + len(KEPT) + len(RESIDUE) >= 100


_DOUBLED = re.compile(r"\b([A-Za-z]+)\s+\1\b", re.IGNORECASE)
_KNOWN_ARTIFACTS = ("image shows shows", "image displays displays", "image shows illustrates", "image mentioned that",
                    "image image", "shows shows", "the image shows the image shows", "image never show ", "the image in the image",
                    "images shows", "appears to be having")


def test_no_doubled_word_or_known_artifact_anywhere():
    outputs = [REWRITER.rewrite(*_case(e)[:1], *_case(e)[2:]) for e in REWRITES]
    outputs += [REWRITER.rewrite(s, q, list(o)) for s, q, o in KEPT]
    for out in outputs:
        assert _DOUBLED.search(out) is None, out
        low = out.lower() + " "
        for artifact in _KNOWN_ARTIFACTS:
            assert artifact not in low, out


def test_question_words_only_count_when_the_question_has_them():
    # The same sentences without their question: the words are references again.
    assert REWRITER.residue_in("I need to find which option best describes the mood.") is None  # a keep pattern
    assert REWRITER.residue_in("Calm best describes the mood, since the colours are soft.") == "describes"
    assert REWRITER.rewrite("The caption contest option matches the cartoon.") == "The image contest option matches the cartoon."
    assert REWRITER.residue_in("The year in the caption is 1969.") == "caption"
    # With the question, the phrase is protected from the rewrite too.
    assert REWRITER.rewrite("The caption contest option matches the cartoon.", CONTEST_Q, CONTEST_OPTS) == \
        "The caption contest option matches the cartoon."


def test_math_span_detection_tells_money_from_math():
    text = "It costs $5 and the description says $7, while $x+1$ and $$y$$ are math; $3 \\times 4$ too."
    spans = [text[s:e] for s, e in math_spans(text)]
    assert spans == ["$x+1$", "$$y$$", "$3 \\times 4$"]
    assert math_spans("between $ 5 $ dollars") == []  # spaces inside the delimiters: not math
    assert [("a $x$ b")[s:e] for s, e in math_spans("a $x$ b")] == ["$x$"]
    assert math_spans("pay \\$5 and \\$7") == []  # escaped dollars are never delimiters


def test_math_and_line_breaks_are_preserved():
    src = ("The description says the legs are $a = 3$ and $b = 4$.\n\n"
           "Then $$c = \\sqrt{a^2 + b^2} = 5$$ as described.\n"
           "Note: \\(\\text{description}\\) stays inside math.")
    got = REWRITER.rewrite(src)
    assert got == ("The image shows the legs are $a = 3$ and $b = 4$.\n\n"
                   "Then $$c = \\sqrt{a^2 + b^2} = 5$$ as shown.\n"
                   "Note: \\(\\text{description}\\) stays inside math.")
    assert got.count("\n") == src.count("\n")
    assert REWRITER.residue_in(got) is None  # a word inside math is not a reference


def test_artifact_detection():
    assert REWRITER.new_artifact("a cat", "the image image shows a cat") == "image image"
    assert REWRITER.new_artifact("the the cat", "the the cat") is None  # already in the source
    assert REWRITER.new_artifact("The description never mentions it.", "The image never show it.") == "The image never show"
    assert REWRITER.new_artifact("x", "the image in the image says") == "image in the image"
    assert REWRITER.new_artifact("x", "The images shows two cars.") == "The images shows"


def test_stray_placeholder_characters_in_model_output_do_not_break_the_rewrite():
    text = "The description says \ue000\ue105\ue001 a cat with $x$ legs."
    assert REWRITER.rewrite(text) == "The image shows \ue105 a cat with $x$ legs."


def test_a_rules_file_with_a_bad_group_reference_fails_at_load(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        'rules:\n  - {pattern: "the description", replace: "\\\\1"}\nresidue: "x"\nartifacts: ["y"]\n')
    with pytest.raises(ValueError, match="refers to group 1"):
        ModalityRewriter("bad", tmp_path)


def test_v1_rules_still_load_for_old_configs():
    v1 = ModalityRewriter("rewrite_rules.v1")
    assert v1.rewrite("The description says the bar is red.") == "The image shows the bar is red."
    assert v1.tag.startswith("rewrite_rules.v1@") and REWRITER.tag.startswith("rewrite_rules.v2@")


TREND_Q = "Which option best describes the trend in the graph?"
TREND_OPTIONS = ["steadily increasing", "increasing with a dip", "decreasing", "constant"]
TREND_TRACE = (Path(__file__).parent / "fixtures" / "rewrite" / "r1_trend_trace.txt").read_text(encoding="utf-8")
TREND_EXPECTED = (Path(__file__).parent / "fixtures" / "rewrite" / "r1_trend_trace.rewritten.txt").read_text(encoding="utf-8")


def test_a_whole_r1_style_trace():
    got = REWRITER.rewrite(TREND_TRACE, TREND_Q, TREND_OPTIONS)
    assert got == TREND_EXPECTED.strip()
    assert REWRITER.residue_in(got, TREND_Q, TREND_OPTIONS) is None
    assert REWRITER.new_artifact(TREND_TRACE, got) is None
    # Without the question, "B best describes the trend" is a reference like any other.
    assert REWRITER.residue_in(REWRITER.rewrite(TREND_TRACE)) == "describes"


def _gate_rewrite(question, options, reasoning):
    cfg = ConvertConfig()
    gate = QualityGate(cfg, PromptLibrary(cfg.prompts.directory), None, None)
    sample = Sample(index=0, id="s0", source="t", question=question, answer="B",
                    options=[Option(letter=chr(65 + i), text=t) for i, t in enumerate(options)])
    trace = Trace(question=question, answer="B", options=sample.options, description="d", reasoning=reasoning,
                  final_text="", pred="B", tokens=100)
    return asyncio.run(gate.rewrite(sample, trace)), gate


def test_quality_gate_gives_the_rewriter_the_question_and_options():
    text, gate = _gate_rewrite(TREND_Q, TREND_OPTIONS, TREND_TRACE)
    assert text == TREND_EXPECTED.strip()
    assert gate.tags["rewrite_rules"].startswith("rewrite_rules.v2@")
    # An option, not the question, holds the word.
    text, _ = _gate_rewrite("What kind of event does the poster advertise?", CONTEST_OPTS,
                            "The description mentions blank speech bubbles, so it is a caption contest.")
    assert text == "The image shows blank speech bubbles, so it is a caption contest."
    dropped, gate = _gate_rewrite("What is shown?", [], "It describes a red car, so the answer is B.")
    assert dropped == Drop("rewrite_residue", "still refers to the description: 'describes'")
    assert gate.stats()["rewrite"]["dropped"] == 1


def test_quality_gate_strips_special_tokens_from_the_kept_reasoning():
    text, _ = _gate_rewrite("What is shown?", [], "<｜begin▁of▁sentence｜>The description says a car.<|im_end|>")
    assert text == "The image shows a car."
