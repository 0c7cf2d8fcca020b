"""How the simulated reasoner states its final answer: the forms DeepSeek-R1 really ends with.

The simulator learns the gold in its dataset form (``B``, ``B: 45``, ``**B**``, ``58°.``, ``21``,
``5 MPa``, a sentence), resolves it against the options it reads from the prompt, and renders one
answer -- right or wrong -- in one of many equivalent forms. A correct matcher must accept every
rendering of the right answer and reject every rendering of a wrong one. Where the gold has another
equivalent form, the rendering never repeats the gold's own text (a letter gold is answered with the
option text or "B. 4", an option-text gold with the letter, 0.5 as \\frac{1}{2}).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from fractions import Fraction

from ..records import Option
from ..verify.options import parse_options

_BOLD = re.compile(r"^\*\*(.+?)\*\*$", re.DOTALL)
_LETTER = re.compile(r"^\(?([A-H])\)?$")
_LETTER_TEXT = re.compile(r"^\(?([A-H])\)?\s*[:.)：]\s*(.+)$")
# A number with an optional unit: "21", "0.5", "58°", "76%", "5 MPa", "12 cm^2".
_QUANTITY = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*(°|%|[A-Za-zµμΩ][A-Za-z0-9µμΩ/²³^]{0,7})?$")
_YES, _NO = {"yes", "true"}, {"no", "false"}
# Same number, other unit: a wrong answer a matcher that ignores units would accept.
_OTHER_UNIT = {"m": "km", "km": "m", "cm": "mm", "mm": "cm", "MPa": "kPa", "kPa": "MPa", "kg": "g", "g": "kg",
               "s": "ms", "ms": "s", "N": "kN", "V": "mV", "A": "mA", "W": "kW", "cm^2": "m^2", "m^2": "cm^2"}
_LATEX_UNIT = {"°": "^\\circ", "%": "\\%"}


@dataclass(frozen=True)
class Answer:
    """One answer resolved against the options; every rendering of it states the same thing."""

    raw: str  # as the dataset wrote it, bold markers and a trailing period removed
    letter: str | None = None
    text: str | None = None  # the option's text, or a free-text / sentence answer
    number: str | None = None  # the numeric value as written ("0.5", "58")
    unit: str | None = None  # "°", "%", "MPa", ...
    yes: bool | None = None
    sentence: bool = False


@dataclass(frozen=True)
class Rendering:
    form: str  # which real shape this is (see FORMS)
    final: str  # the answer part of the output (after the think)
    payload: str  # what a matcher should extract from `final`
    claim: str  # how the closing sentence of the reasoning names the answer


def clean_gold(gold: str) -> str:
    g = gold.strip()
    if m := _BOLD.match(g):
        g = m.group(1).strip()
    # "58°." (Mulberry) and sentences end with a period that is not part of the answer.
    return g[:-1].rstrip() if g.endswith(".") and len(g) > 1 else g


def _quantity(text: str) -> tuple[str, str | None] | None:
    m = _QUANTITY.match(text.replace("^\\circ", "°").replace("^{\\circ}", "°").replace("\\%", "%").strip())
    return (m.group(1), m.group(2)) if m else None


def _norm(text: str, case: bool = False) -> str:
    text = clean_gold(text).replace("^{\\circ}", "°").replace("^\\circ", "°")
    text = re.sub(r"\s+", " ", text).strip()
    return text if case else text.lower()


def _with_option(letter: str, options: list[Option], raw: str) -> Answer:
    text = next((o.text for o in options if o.letter == letter), None)
    q = _quantity(text) if text else None
    return Answer(raw=raw, letter=letter, text=text, number=q[0] if q else None, unit=q[1] if q else None)


def resolve(gold: str, options: list[Option]) -> Answer:
    """Interpret a dataset gold: letter, "letter: text", option text, yes/no, quantity, sentence, text."""
    g = clean_gold(gold)
    letters = {o.letter for o in options}
    if (m := _LETTER.match(g)) and (not options or m.group(1) in letters):
        return _with_option(m.group(1), options, g)
    if (m := _LETTER_TEXT.match(g)) and (m.group(1) in letters or (not options and len(m.group(2)) < 40)):
        if options:
            return _with_option(m.group(1), options, g)
        q = _quantity(m.group(2))
        return Answer(raw=g, letter=m.group(1), text=m.group(2), number=q[0] if q else None, unit=q[1] if q else None)
    same = [o for o in options if _norm(o.text) == _norm(g)]
    if len(same) == 1:
        return _with_option(same[0].letter, options, g)
    if g.lower() in _YES | _NO:
        return Answer(raw=g, yes=g.lower() in _YES)
    if q := _quantity(g):
        return Answer(raw=g, number=q[0], unit=q[1])
    return Answer(raw=g, text=g, sentence=len(g.split()) >= 4)


def options_in(prompt: str) -> list[Option]:
    """Options as the reasoner sees them: in the question part of its prompt."""
    tail = prompt.split("Question:", 1)[1] if "Question:" in prompt else prompt
    return parse_options(tail)


# ---- wrong answers ------------------------------------------------------------------------------

def _shift(number: str, step: int) -> str:
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = Fraction(number) + Fraction(step, 10**decimals)
    return f"{float(value):.{decimals}f}" if decimals else str(int(value))


def wrong(answer: Answer, options: list[Option], rng: random.Random) -> Answer:
    """A definitely wrong answer of the same kind (another option, another value, the other yes/no)."""
    if answer.letter and options:
        others = [o for o in options if o.letter != answer.letter and _norm(o.text) != _norm(answer.text or "")]
        if others:
            return _with_option(rng.choice(others).letter, options, "")
    if answer.letter:
        other = "B" if answer.letter == "A" else chr(ord(answer.letter) - 1)
        return Answer(raw="", letter=other)
    if answer.yes is not None:
        return Answer(raw="", yes=not answer.yes)
    if answer.number is not None:
        if answer.unit in _OTHER_UNIT and rng.random() < 0.5:
            return replace(answer, raw="", unit=_OTHER_UNIT[answer.unit])  # "5 km" for "5 m"
        return replace(answer, raw="", number=_shift(answer.number, rng.choice([1, 2, -1])))
    if answer.sentence:
        nums = re.findall(r"\d+(?:\.\d+)?", answer.text or "")
        if nums:
            text = answer.text or ""
            at = text.rfind(nums[-1])  # the last figure is the one the sentence is about
            return replace(answer, raw="", text=text[:at] + _shift(nums[-1], 1) + text[at + len(nums[-1]):])
        return Answer(raw="", text="It cannot be determined from the given details", sentence=True)
    return Answer(raw="", text="none of the above")


# ---- renderings -----------------------------------------------------------------------------------

def _fraction(number: str, command: str = "frac") -> str | None:
    """\\frac{1}{2} for 0.5: only a non-integer decimal that is exactly a small fraction."""
    if "." not in number:
        return None
    value = Fraction(number)
    if value.denominator == 1 or value.denominator > 12:
        return None
    sign = "-" if value < 0 else ""
    return f"{sign}\\{command}{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _latex_value(number: str, unit: str | None, style: int) -> str:
    if not unit:
        return number
    if unit in _LATEX_UNIT:
        return number + (_LATEX_UNIT[unit] if style != 2 else "^{\\circ}" if unit == "°" else unit)
    return (f"{number}\\,\\text{{{unit}}}", f"{number} \\text{{ {unit}}}", f"{number} \\mathrm{{{unit}}}")[style % 3]


def _plain_value(number: str, unit: str | None) -> str:
    if not unit:
        return number
    return f"{number}{unit}" if unit in ("°", "%") else f"{number} {unit}"


def _yes_no_clause(yes: bool, question: str) -> str:
    """ "Yes, there is a triangle in the drawing" from "Is there a triangle in the drawing?"."""
    m = re.match(r"^\s*(is|are) there (.+?)\?", question, re.IGNORECASE)
    if m:
        verb = m.group(1).lower()
        thing = m.group(2)
        if yes:
            return f"there {verb} {thing}"
        return f"there {verb} no {thing[2:]}" if thing.startswith("a ") else f"there {verb} not {thing}"
    return "that is the case" if yes else "that is not the case"


def candidates(a: Answer, rng: random.Random, question: str = "") -> list[Rendering]:
    """Every real form that states answer `a` (letter forms only when the letter is known, ...)."""
    out: list[Rendering] = []
    add = lambda form, final, payload, claim: out.append(Rendering(form, final, payload, claim))  # noqa: E731
    if a.letter:
        L = a.letter
        add("boxed_letter", f"\\boxed{{{L}}}", L, L)
        add("boxed_text_letter", f"\\boxed{{\\text{{{L}}}}}", f"\\text{{{L}}}", L)
        add("bold_answer_letter", f"**Answer:** {L}", L, f"option {L}")
        add("answer_colon_letter", f"Answer: {L}", L, L)
        add("paren_letter", f"So the answer is ({L}).", f"({L})", f"({L})")
        add("final_answer_heading", f"**Final Answer**\n\\boxed{{{L}}}", L, L)
        if a.text:
            t = a.text
            add("boxed_letter_dot_text", f"\\boxed{{{L}. {t}}}", f"{L}. {t}", f"{L}. {t}")
            add("correct_option_is", f"The correct option is {L}: {t}", f"{L}: {t}", f"{L}, {t}")
            shown = _latex_value(a.number, a.unit, rng.randrange(3)) if a.number is not None else t
            add("boxed_option_text", f"\\boxed{{{shown}}}", shown, t)
            add("bold_answer_option_text", f"**Answer:** {t}", t, t)
    elif a.yes is not None:
        word = "Yes" if a.yes else "No"
        clause = _yes_no_clause(a.yes, question)
        add("boxed_yes_no_text", f"\\boxed{{\\text{{{word}}}}}", f"\\text{{{word}}}", word.lower())
        add("boxed_yes_no_lower", f"\\boxed{{{word.lower()}}}", word.lower(), word.lower())
        add("yes_no_sentence", f"{word}, {clause}.", f"{word}, {clause}", word.lower())
        add("bold_answer_yes_no", f"**Answer:** {word}, {clause}.", f"{word}, {clause}", word.lower())
        add("final_answer_heading", f"**Final Answer**\n\\boxed{{{word}}}", word, word.lower())
    elif a.number is not None:
        style = rng.randrange(3)
        shown = _latex_value(a.number, a.unit, style)
        plain = _plain_value(a.number, a.unit)
        add("boxed_value", f"\\boxed{{{shown}}}", shown, plain)
        add("answer_colon_value", f"Answer: {plain}", plain, plain)
        add("final_answer_heading", f"**Final Answer**\n\\boxed{{{shown}}}", shown, plain)
        add("value_sentence", f"The answer is {plain}.", plain, plain)
        if a.unit:
            add("boxed_value_no_unit", f"\\boxed{{{a.number}}}", a.number, plain)
        if frac := _fraction(a.number, ("frac", "dfrac")[style % 2]):
            shown_frac = frac + ("" if not a.unit else _latex_value("", a.unit, style))
            slash = re.sub(r"\\d?frac\{(\d+)\}\{(\d+)\}", r"\1/\2", frac)
            add("boxed_fraction", f"\\boxed{{{shown_frac}}}", shown_frac, slash)
            add("answer_colon_fraction", f"Answer: {slash}", slash, slash)
    else:
        t = a.text or a.raw
        if a.sentence:
            body = t[0].lower() + t[1:] if t[:2] != t[:2].upper() else t
            add("short_sentence", f"In short, {body}.", f"In short, {body}", body)
            add("bold_answer_text", f"**Answer:** {t}.", t, body)
            if m := re.search(r"(\d+(?:\.\d+)?)\s*(%|°)?[^\d]*$", t):  # the sentence's key figure
                shown = _latex_value(m.group(1), m.group(2), 0)
                add("boxed_key_value", f"\\boxed{{{shown}}}", shown, _plain_value(m.group(1), m.group(2)))
        else:
            add("boxed_text", f"\\boxed{{\\text{{{t}}}}}", f"\\text{{{t}}}", t)
            add("short_sentence", f"It is {t}.", f"It is {t}", t)
            add("bold_answer_text", f"**Answer:** {t}", t, t)
            add("final_answer_heading", f"**Final Answer**\n\\boxed{{\\text{{{t}}}}}", f"\\text{{{t}}}", t)
    return out


def _plain(payload: str) -> str:
    """The literal text a matcher compares, less wrappers that change nothing (\\text{}, parentheses)."""
    text = re.sub(r"\\text\{\s*([^}]*?)\s*\}", r"\1", payload).strip()
    text = text[1:-1] if text[:1] == "(" and text[-1:] == ")" else text
    return re.sub(r"\s+", " ", clean_gold(text)).strip()


def choose(a: Answer, rng: random.Random, gold_text: str | None = None, question: str = "",
           avoid: Answer | None = None) -> Rendering:
    """One form, picked by `rng`; never the gold's own text (`gold_text`) when another correct form
    exists; for a wrong answer, never a form that also states the right one (`avoid`: "5" for "5 kPa")."""
    forms = candidates(a, rng, question)
    if gold_text is not None:
        different = [r for r in forms if _plain(r.payload) != _plain(gold_text)]
        forms = different or forms
    if avoid is not None:
        right = {_plain(r.payload).lower() for r in candidates(avoid, random.Random(0), question)}
        forms = [r for r in forms if _plain(r.payload).lower() not in right] or forms
    return forms[rng.randrange(len(forms))]


FORMS = ("boxed_letter", "boxed_text_letter", "bold_answer_letter", "answer_colon_letter", "paren_letter",
         "final_answer_heading", "boxed_letter_dot_text", "correct_option_is", "boxed_option_text",
         "bold_answer_option_text", "boxed_yes_no_text", "boxed_yes_no_lower", "yes_no_sentence",
         "bold_answer_yes_no", "boxed_value", "answer_colon_value", "value_sentence", "boxed_value_no_unit",
         "boxed_fraction", "short_sentence", "bold_answer_text", "boxed_text", "boxed_key_value",
         "answer_colon_fraction")
