"""Modality rewrite: realistic sentences that mention a description or caption, asserted exactly."""

import pytest

from pipeline.rewrite import ModalityRewriter

REWRITER = ModalityRewriter()

CASES = [
 ("According to the description, there are three red apples on the table.", "Looking at the image, there are three red apples on the table."),
 ("The description says that the bar for 2019 is the tallest.", "The image shows that the bar for 2019 is the tallest."),
 ("Based on the description, the triangle has a right angle at C.", "Looking at the image, the triangle has a right angle at C."),
 ("Wait, the caption mentions a dog near the fence.", "Wait, the image shows a dog near the fence."),
 ("The image description shows five circles.", "The image shows five circles."),
 ("As described, the sign reads 'STOP'.", "As shown, the sign reads 'STOP'."),
 ("The man is described as wearing a blue hat.", "The man appears to be wearing a blue hat."),
 ("The description doesn't mention any other vehicles.", "The image doesn't show any other vehicles."),
 ("The number of people isn't mentioned in the description.", "The number of people isn't shown in the image."),
 ("From the description, the graph is increasing.", "From the image, the graph is increasing."),
 ("In the caption, the label on the left axis is 'Temperature'.", "In the image, the label on the left axis is 'Temperature'."),
 ("Let me re-read the description: the angle at B is $40^\\circ$.", "Let me look at the image again: the angle at B is $40^\\circ$."),
 ("The description states that $x + y = 10$ and the description also says x is positive.", "The image shows that $x + y = 10$ and the image also shows x is positive."),
 ("The provided description lists four items: a cup, a pen, a book, and a lamp.", "The image shows four items: a cup, a pen, a book, and a lamp."),
 ("Hmm, the description mentioned that the car is red, so the answer is red.", "Hmm, the image showed that the car is red, so the answer is red."),
 ("Since I can't see the image, I'll rely on the description. The bar is 30 units tall.", "The bar is 30 units tall."),
 ("The shapes are described as being evenly spaced.", "The shapes appear to be evenly spaced."),
 ("The described scene contains a kitchen with two windows.", "The scene contains a kitchen with two windows."),
 ("The caption's mention of a red umbrella suggests rain.", "The presence of a red umbrella suggests rain."),
 ("Nothing in the description indicates a second door.", "Nothing in the image shows a second door."),
 ("The description clearly says the clock shows 3:15.", "The image clearly shows the clock shows 3:15."),
 ("The text says the store opens at 9.", "The image shows the store opens at 9."),
 ("As mentioned in the description, the river flows east.", "As shown in the image, the river flows east."),
 ("The description of the image indicates that there are 12 students.", "The image shows that there are 12 students."),
 ("Given the description, the largest slice is blue.", "Looking at the image, the largest slice is blue."),
 ("The description does not specify the color of the car.", "The image does not show the color of the car."),
 ("The lengths given in the description are 3 cm and 4 cm.", "The lengths shown in the image are 3 cm and 4 cm."),
 ("The description describes a triangle with sides 3, 4 and 5.", "The image shows a triangle with sides 3, 4 and 5."),
 ("The diagram, as stated in the caption, has two parallel lines.", "The diagram, as shown in the image, has two parallel lines."),
 ("The description says:\n- a red car\n- a blue bike", "The image shows:\n- a red car\n- a blue bike"),
 ("The caption didn't mention whether the light is on.", "The image didn't show whether the light is on."),
 ("This description tells us the boy is holding a kite.", "The image shows the boy is holding a kite."),
 ("I was given a description of the image rather than the image itself. The cat is on the left.", "The cat is on the left."),
 ("The scene described above has three people.", "The scene shown above has three people."),
 ("Okay, so the description displays a pie chart.\n\nWait, the description illustrates two trends.", "Okay, so the image shows a pie chart.\n\nWait, the image shows two trends."),
 ("In the detailed description, the area is $\\frac{1}{2} \\cdot b \\cdot h$ where the caption gives b = 4.", "In the image, the area is $\\frac{1}{2} \\cdot b \\cdot h$ where the image gives b = 4."),
]


@pytest.mark.parametrize("source,expected", CASES)
def test_rewrite_reads_correctly(source, expected):
    got = REWRITER.rewrite(source)
    assert got == expected
    assert REWRITER.residue_in(got) is None
    assert REWRITER.new_artifact(source, got) is None


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_blind_replacement_artifacts_never_appear():
    # The artifacts in the released Vision-R1 data come from swapping nouns only.
    for source, _ in CASES:
        got = REWRITER.rewrite(source).lower()
        for artifact in ("image shows shows", "image displays displays", "image shows illustrates",
                         "image mentioned that", "image image", "shows shows"):
            assert artifact not in got


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


def test_residue_and_artifact_detection():
    assert REWRITER.residue_in("The captions in the dataset vary.") == "captions"
    assert REWRITER.residue_in("The image shows a cat.") is None
    assert REWRITER.new_artifact("a cat", "the image image shows a cat") == "image image"
    assert REWRITER.new_artifact("the the cat", "the the cat") is None  # already in the source
