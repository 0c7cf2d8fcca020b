"""The piece-by-piece modality rewrite (pipeline/rewrite.py) gives byte-identical results to the
whole-text implementation it replaced (tests/_rewrite_reference.py), for `rewrite`, `residue_in`
and `new_artifact`, on:

- every string literal of the rewrite tests (tests/test_rewrite.py, tests/test_quality_e2e.py) and
  the R1-style trace of tests/fixtures/rewrite;
- every string of the real-shaped and published fixtures (Mulberry / LLaVA-CoT rows: questions,
  "### Image Description" answers, <SUMMARY>/<CAPTION> blocks);
- 300 traces of the simulator's reasoning generator (pipeline/simulator/content.py `reasoning`) over
  the fixtures' questions and options;
- 200 more simulator traces with the strings above and the adversarial lines below spliced in at
  random places, joined by spaces, line breaks, CRLF, tabs, double spaces or nothing;
- the adversarial lines themselves (math across lines, captions printed in images at a line end,
  "description" at the very start or end, CRLF, placeholder characters, doubled words made across a
  line break, characters IGNORECASE folds to ASCII letters, sentence breaks inside math, ...);

each under several questions/options (none, the fixtures', the rewrite tests' "describes"/"caption"
questions), with the v2 rules and, on a share of them, the v1 rules (no trigger: whole-text scans);
and a rules file written to put `^`, `$`, `\\A`, `\\Z`, lookbehinds and lookaheads at the piece ends.
The load-time checks (a rule the trigger does not cover, one that can hold a line break, ...) and
the regex analysis (pipeline/linescan.py) are tested at the end.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

import pytest

from pipeline.linescan import FOLDS_TO_ASCII, shape
from pipeline.prompts import PromptLibrary
from pipeline.rewrite import ModalityRewriter
from pipeline.simulator import content

from . import _rewrite_reference as reference
from .realshape_questions import fixture_questions

TESTS = Path(__file__).parent
FIX = TESTS / "fixtures"

# (question, options) under which every text is checked, besides the fixtures' own.
CONTEXTS = [
    ("", []),
    ("Which of the following best describes the mood of the painting?", []),
    ("What kind of event does the poster advertise?", ["a caption contest", "a spelling bee", "a book fair"]),
    ("What year is written in the caption under the photo?", []),
    ("Which sentence describes the picture?", ["It describes a sunrise.", "It describes a storm."]),
    ("Which description matches the picture?", ["Description A", "Description B"]),
    ("Which option best describes the trend in the graph?", ["steadily increasing", "increasing with a dip"]),
]

ADVERSARIAL = [
    # Math over several lines, with references inside and around it.
    "The description says $$\nx = 1.\nthe description of y\n$$ and then the description mentions z.",
    "$$\\text{description} = 3$$\nThe description says the area is $$a\n= 2. b!$$ units.",
    "Since I can't see the image, $$x\n= 2$$ so the description says y is 3. Next.",
    "Since I can't see the image, I'll use $x = 2$ and the description. The rest is fine.",
    "Then \\(a.\nb\\) and the caption says \\[c;\nd\\] with the description.",
    "Price: $5. The description says $x$ is $7! Then $y.z$ and the caption.",
    # A caption printed in the image, at a line end or split over lines.
    "The caption under the photo\nreads 'Summer'. The description says the caption at the bottom of the poster",
    "A caption printed on the poster says\n\"Vote\". The caption reads \"Best\"",
    "The photo's caption\nThe caption of the cartoon",
    # "description" at the very start and the very end.
    "description",
    "Description",
    "The description",
    "description B",
    "Description B.",
    "It is described by option C",
    "the description says",
    "Look at it. The description",
    "description\n",
    "\ndescription\n",
    # CRLF and other line ends, tabs, double spaces.
    "The description says the cat is black.\r\nAccording to the description, the dog is white.\r\n",
    "Description B\r\nOption B describes\r\nthe description\r",
    "The  description\tsays two  cats.\tAccording to\tthe  description ,x",
    "I can't  see\tthe  image, but the description\tsays it is red.",
    "The\ttext\tsays 5. The given  text is long. the text   clearly mentions a cat.",
    # Placeholder characters in the text itself.
    "The description says \ue000\ue105\ue001 a cat with $x$ legs.",
    "\ue000The caption\ue001 reads \ue100 \ue001\ue000",
    "\ue001description\ue000 $x$ \ue000\ue101\ue001",
    # Doubled words, existing or made by the rewrite across a line break.
    "We keep looking\nAccording to the description, the cat is black.",
    "It is the\nthe description says the the cat.",
    "the image\nThe description mentions the image in the image.",
    "I see image\nimage description shows shows a cat.",
    "Looking at the image, the image is dark. According to the description, the image is dark.",
    # Characters IGNORECASE takes for ASCII letters, and ones whose lower case is longer.
    "The deſcription says a cat. The DESCRİPTION mentions a dog. The captıon states it. Kelvin: \u212a.",
    "İİİ the description says x. İ",
    "\u212aeep the description ſays x; the ſee the image",
    "The deſcription says a cat.",
    "I can't ſee the image, but the captıon says x. The text ſays y.",
    "Option B deſcribes it; the deſcription B. The \u212aey caption reads 'K'.",
    "İİİİİİİİİİİİİİİİİİİİİİİİİİİİİİ. The cat. The description says x. The dog.",
    "İ\nThe description says x.\nAccording to the description, y; the caption mentions z!",
    # Dropped sentences, then references after them (the text moves under the rules).
    "Since I can't see the image, I'll rely on the description. The description says the cat is black. "
    "According to the description, x.",
    "I was given a description of the image. The description mentions a dog.\nThe caption says y.",
    "I only have a description. As described, it is red; because I can't see the image, I guess. "
    "The description says 4.\nSince I cannot view the picture itself, ok! The caption states 5.",
    "As I can't see the image, but the description says 3, the answer is 3. The description notes 4.",
    # Sentence breaks everywhere.
    "e.g. the description says 3.5 cats; the caption? reads! x. As described... the text says so!?",
    "The description says: 'a. b; c!' and the caption reads 'd?'",
    "The description.The caption.The text says.I can't see the image.",
    "...description...caption...;;;!!!???",
    "Is it description B? Or description C! It is described by option A? Or by option D!\ndescription E\n",
    "Maybe description B!description C?description D;description E.description F",
    "The caption says! The caption reads? \"Hi\" The caption reads 'x'! the description provided! the description provided?",
    # Question words (the phrases of the question and options), within and across lines.
    "Which option best describes the mood? Calm best describes the mood.\nbest\ndescribes the mood",
    "The caption contest option\nmatches. A caption\ncontest it is; the caption.",
    "Description A matches.\nDescription\nB matches. description b",
    # Mixed, with non-ASCII text.
    "Angle ABC is 58° — the description says so. The caption “Sale” is printed.",
    "According to the description, the café's sign reads 'ouvert'. The description's ñ is fine.",
    "",
    "\n\n",
    " ",
    "The image shows a cat.",
]


def _literals(path: Path) -> list[str]:
    """Every string literal of a test module (sources, expected outputs, questions, options)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.strip()]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _fixture_strings() -> list[str]:
    out = []
    for path in sorted([*(FIX / "realshape").glob("*.json*"), *(FIX / "published").glob("*.json*"),
                        *(FIX / "llama_factory").glob("*.json")]):
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
        out += [s for row in rows for s in _strings(row) if s.strip()]
    return out + [p.read_text(encoding="utf-8") for p in sorted((FIX / "rewrite").glob("*.txt"))]


def _simulated(n: int, questions: list[tuple[str, list[str]]], seed: int) -> list[tuple[str, str, list[str]]]:
    prompts = PromptLibrary()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question, options = questions[i % len(questions)]
        think = content.question_trace(prompts, question, rng, content.rng_for("equiv", str(seed), str(i)),
                                       f"equiv-{i}:0", pseudo_words=40, description_words=60, median_words=400,
                                       sigma=0.8, min_words=30, max_words=2500)
        out.append((think, question, options))
    return out


def _spliced(traces: list[str], pool: list[str], rng: random.Random) -> list[str]:
    joins = [" ", " ", "\n", "\n\n", "\r\n", "\t", "  ", ""]
    out = []
    for trace in traces:
        parts = re.split(r"(?<=[.!?]) ", trace)
        for _ in range(rng.randint(1, 8)):
            parts.insert(rng.randint(0, len(parts)), rng.choice(pool))
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(joins) + part
        out.append(text)
    return out


@pytest.fixture(scope="module")
def corpus():
    literals = _literals(TESTS / "test_rewrite.py") + _literals(TESTS / "test_quality_e2e.py")
    fixtures = _fixture_strings()
    questions = fixture_questions()
    simulated = _simulated(300, questions, seed=1)
    rng = random.Random(2)
    spliced = _spliced([t for t, _, _ in _simulated(200, questions, seed=3)], literals + fixtures + ADVERSARIAL, rng)
    return {"literals": literals, "fixtures": fixtures, "questions": questions, "simulated": simulated,
            "spliced": spliced, "adversarial": ADVERSARIAL}


def _compare(fast: ModalityRewriter, ref, text: str, question: str, options: list[str]) -> str:
    """Both implementations on one text; returns the rewrite (asserting every result is identical)."""
    ctx = (text[:80], question[:40], options)
    out = ref.rewrite(text, question, options)
    assert fast.rewrite(text, question, options) == out, ctx
    for probe in (text, out):
        assert fast.residue_in(probe, question, options) == ref.residue_in(probe, question, options), (probe[:80], ctx)
    assert fast.new_artifact(text, out) == ref.new_artifact(text, out), ctx
    assert fast.new_artifact(out, text) == ref.new_artifact(out, text), ctx
    return out


@pytest.fixture(scope="module")
def v2():
    return ModalityRewriter(), reference.ModalityRewriter()


def test_rewrite_test_sentences_and_fixtures(corpus, v2):
    texts = corpus["literals"] + corpus["fixtures"] + corpus["adversarial"]
    contexts = CONTEXTS + corpus["questions"][:3]
    for text in texts:
        for question, options in contexts:
            _compare(*v2, text, question, options)
    assert len(corpus["literals"]) >= 250 and len(corpus["fixtures"]) >= 60


def test_simulated_traces(corpus, v2):
    rng = random.Random(4)
    changed = 0
    for text, question, options in corpus["simulated"]:
        for q, o in ((question, options), rng.choice(CONTEXTS)):
            changed += _compare(*v2, text, q, o) != text.strip()
    assert len(corpus["simulated"]) == 300 and changed > 300  # most traces talk about the description


def test_spliced_traces(corpus, v2):
    rng = random.Random(5)
    for text in corpus["spliced"]:
        _compare(*v2, text, *rng.choice(CONTEXTS + corpus["questions"]))
    assert len(corpus["spliced"]) == 200


def test_artifacts_found_and_not_found_alike(corpus, v2):
    """new_artifact on pairs where `after` holds artifacts `before` may or may not have."""
    fast, ref = v2
    rng = random.Random(6)
    made = ["the image image", "image\nimage", "images of the image", "the image never show", "the images shows",
            "looking at the image, the image", "appears to be having", "The image shows the image shows",
            "x.\nx", "Shows. shows", "the\tthe", "ſee ſee", "a\r\na"]
    hits = 0
    for text in corpus["spliced"][:80] + corpus["adversarial"]:
        after = text
        for _ in range(rng.randint(0, 3) if rng.random() < 0.3 else rng.randint(1, 3)):
            k = rng.randint(0, len(after))
            after = after[:k] + rng.choice(made) + after[k:]
        got = fast.new_artifact(text, after)
        assert got == ref.new_artifact(text, after), (text[:80], after[:80])
        assert fast.new_artifact(after, text) == ref.new_artifact(after, text)
        hits += got is not None
    assert hits >= 20, hits
    # And pairs made to hold each artifact once, in and out of `before`.
    for artifact in made:
        for before in ("x", f"A {artifact}.", f"{artifact}\n{artifact}"):
            for after in (f"The description. {artifact} y", f"{artifact}", f"z\n{artifact}\n"):
                assert fast.new_artifact(before, after) == ref.new_artifact(before, after), (before, after)


def test_v1_rules_without_a_trigger(corpus):
    fast, ref = ModalityRewriter("rewrite_rules.v1"), reference.ModalityRewriter("rewrite_rules.v1")
    assert fast.plan is None
    for text in corpus["literals"][:150] + corpus["adversarial"] + corpus["spliced"][:40]:
        _compare(fast, ref, text, "", [])


def test_v2_rules_are_scanned_piece_by_piece():
    rw = ModalityRewriter()
    assert rw.plan is not None and rw.plan.breaks == "\n.!?;"
    # Every keep pattern needs one of the words "descri" / "caption" only.
    assert {rw.plan.words[k] for ids in rw.plan.keep for k in ids} == {"descri", "caption"}


def test_folds_to_ascii_are_all_the_characters_ignorecase_takes_for_ascii_letters():
    everything = "".join(chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000)
    found = set(re.compile("[a-z]", re.IGNORECASE).findall(everything))
    for letter in "abcdefghijklmnopqrstuvwxyz":
        found |= set(re.compile(letter, re.IGNORECASE).findall(everything))
    assert found == set(FOLDS_TO_ASCII)
    # str.lower() makes one character longer (the lower-cased text must line up with the text).
    assert [c for c in everything if len(c.lower()) != 1] == ["\u0130"]


def _rules_file(tmp_path, rules: str, trigger: str = "descri|caption", words: str = "[descri, caption]",
                keep: str = "[]", residue: str = "\\\\bdescription\\\\b") -> Path:
    (tmp_path / "t.yaml").write_text(
        f'trigger:\n  pattern: "{trigger}"\n  words: {words}\nkeep: {keep}\nrules:\n{rules}\n'
        f'residue: "{residue}"\nartifacts: ["\\\\bimage image\\\\b"]\n', encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("rule,why", [
    ('  - {pattern: "the picture", replace: "the image"}', "need not hold a trigger match"),
    ('  - {pattern: "description\\\\s+of", replace: "x"}', "can hold a line break"),
    ('  - {pattern: "description$", replace: "x"}', "uses AT_END"),
    ('  - {pattern: "description(?=\\\\s\\\\w)", replace: "x"}', "look past a line break"),
    ('  - {pattern: "description", replace: "a\\\\nb"}', "adds a break"),
])
def test_a_rule_the_trigger_does_not_cover_fails_at_load(tmp_path, rule, why):
    with pytest.raises(ValueError, match=why):
        ModalityRewriter("t", _rules_file(tmp_path, rule))


@pytest.mark.parametrize("trigger,words,why", [
    ("descri|caption|\\\\bx", "[descri, caption]", "AT"),
    ("descri|caption", "[descri]", "need not hold one of the trigger words"),
    ("descri|caption|a\\\\tb", "[descri, caption, a]", "a space, tab or line break"),
    ("descri|caption", "[descri, 'cap tion.']", "trigger words"),
    ("descri|caption", "[descri, caption, café]", "trigger words"),
])
def test_an_unfit_trigger_fails_at_load(tmp_path, trigger, words, why):
    with pytest.raises(ValueError, match=why):
        ModalityRewriter("t", _rules_file(tmp_path, '  - {pattern: "the description", replace: "the image"}',
                                          trigger=trigger, words=words))


def test_sentence_breaks_are_not_used_when_a_pattern_can_hold_one(tmp_path):
    rules = '  - {pattern: "the description\\\\. It", replace: "the image. It"}'
    with pytest.raises(ValueError, match="adds a break"):  # the replacement holds a period
        ModalityRewriter("t", _rules_file(tmp_path, rules))
    rules = '  - {pattern: "the description\\\\.", replace: "the image"}'
    rw = ModalityRewriter("t", _rules_file(tmp_path, rules))
    assert rw.plan is not None and rw.plan.breaks == "\n!?;"
    assert rw.rewrite("A. The description. B") == "A. The image B"


def test_shape_reads_what_matters():
    s = shape(re.compile(r"descriptions?[ \t]+\(?[A-H]\)?(?=\s|[,.;:)]|$)", re.I), re.compile("descri", re.I))
    assert s.covered and s.local("\n.!?;") and "AT_END" in s.anchors and s.sees >= {"\n", "."}
    assert not s.context_free("\n")  # its lookahead looks at the line break
    s = shape(re.compile(r"\b([a-z]+)\s+\1\b", re.I))
    assert not s.local("\n") and s.context_free(".!?;")
    s = shape(re.compile(r"(?:the|a) (?:big )*caption", re.I), re.compile("caption", re.I))
    assert s.covered and s.local("\n")
    assert not shape(re.compile(r"the (?:picture|caption)", re.I), re.compile("caption", re.I)).covered


ANCHORED_RULES = r'''
trigger:
  pattern: "descri|caption"
  words: [descri, caption]
keep:
  - "description x$"
  - "^caption"
  - "(?m)^the caption$"
  - "captions?\\Z"
  - "(?<=\\n)descriptions? y"
  - "(?<![.!])description z\\b"
  - "\\Adescription q"
drop_sentences:
  - "I have a description[^.\\n]*[.!]"
rules:
  - {pattern: "^the description", replace: "START"}
  - {pattern: "(?m)^description:", replace: "LINE:"}
  - {pattern: "(?<=\\n)description w", replace: "W"}
  - {pattern: "description(?=[.!?;\\n])", replace: "BEFORE-BREAK"}
  - {pattern: "(?<=[.!?;]\\x20)the caption", replace: "AFTER-BREAK"}
  - {pattern: "(?<![.!?;\\n])caption(?=\\x20x)", replace: "MID"}
  - {pattern: "caption(?=;)", replace: "SEMI"}
  - {pattern: "\\Bdescri(?:ption)?", replace: "X"}
  - {pattern: "the (?:description|caption)", replace: "the image"}
residue: "\\bdescri\\w*|\\bcaption\\w*"
artifacts: ["\\b(\\w+)\\s+\\1\\b", "image image", "(?<=\\n)the image$", "^the image", "image(?=\\n)"]
'''

ANCHORED_TEXTS = [
    "description x\nmore", "description x", "description x\n", "a description x\n\nb", "caption here", "x caption",
    "the caption\nthe caption", "a\nthe caption\n", "the captions", "the caption\n", "captions\n\n", "x\ndescription y",
    "description y", "x.\ndescriptions y.", "a. description z", "a description z. b! description z", "description q",
    " description q", "I have a description of it. The description says. the description\nthe description",
    "description: a\ndescription: b. description w\ndescription w", "the description. the caption! the caption",
    "predescription. adescri the description; the caption? the caption", "x\nthe image\nthe image",
    "the image image\nimage\nimage", "The description\r\nthe caption\r\n", "a caption x. the caption x;caption x",
]


def test_anchors_and_lookarounds_at_piece_ends(tmp_path):
    """A rules file with `^`, `$`, `\\A`, `\\Z`, lookbehinds and lookaheads at line and sentence breaks:
    the pieces see what the whole text shows there."""
    (tmp_path / "anchored.yaml").write_text(ANCHORED_RULES, encoding="utf-8")
    fast, ref = ModalityRewriter("anchored", tmp_path), reference.ModalityRewriter("anchored", tmp_path)
    assert fast.plan is not None and fast.plan.breaks == "\n.!?;"
    # `$` and `^` look at the ends of the text: whole-text scans; a lookahead at a line break: sentences only.
    assert fast._artifact_breaks == [".!?;", ".!?;", None, None, ".!?;"]
    rng = random.Random(7)
    texts = ANCHORED_TEXTS + ADVERSARIAL
    texts += ["".join(rng.choice([*ANCHORED_TEXTS, "\n", ". ", "! ", "; "]) for _ in range(6)) for _ in range(300)]
    for text in texts:
        _compare(fast, ref, text, "", [])
    # An artifact whose lookahead looks at a line break: a piece equal to one of `before` but ending
    # at another break is scanned again.
    pairs = [("the image. x", "the image\nx"), ("the image\nx", "the image. x"), ("image;", "image\n"),
             ("x\nthe image", "x.the image"), ("a\nthe image b", "a\nthe image")]
    for before, after in pairs + [(a, b) for a in texts[:60] for b in texts[:60:7]]:
        assert fast.new_artifact(before, after) == ref.new_artifact(before, after), (before, after)
    # The same pattern alone (no doubled-word pattern to narrow the breaks of all of them).
    (tmp_path / "alone.yaml").write_text(ANCHORED_RULES.replace(
        'artifacts: ["\\\\b(\\\\w+)\\\\s+\\\\1\\\\b", ', 'artifacts: ['), encoding="utf-8")
    fast, ref = ModalityRewriter("alone", tmp_path), reference.ModalityRewriter("alone", tmp_path)
    assert fast._artifact_breaks == [".!?;", None, None, ".!?;"]
    for before, after in pairs:
        assert fast.new_artifact(before, after) == ref.new_artifact(before, after), (before, after)
