"""Text clean-up, numbers with units, and units' canonical names, shared by golds and predictions.

Pure string work: nothing here imports math-verify (that runs only in worker processes, see pool.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_WRAPPERS = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|textit|mbox|operatorname)\s*\{(.*)\}$", re.DOTALL)
_INLINE_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
_HEDGE = re.compile(r"^(?:approximately|approx\.?|about|around|roughly|nearly|almost|≈|~|\\approx)\s*", re.IGNORECASE)
_ASSIGN = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|≈|\\approx)\s*")
_YES = {"yes", "true", "correct", "right"}
_NO = {"no", "false", "incorrect", "wrong", "not"}


def clean(text: str) -> str:
    """Strip the dress around an answer: bold, quotes, $..$, \\(..\\), \\text{..}, a final period."""
    s = text.strip()
    for _ in range(4):  # wrappers nest: **$\text{B}$**
        before = s
        s = s.strip().strip("*").strip()
        s = s.strip("\"'“”‘’`").strip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$").strip()
        for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(a) and s.endswith(b):
                s = s[len(a):-len(b)].strip()
        if m := _WRAPPERS.match(s):
            s = m.group(1).strip()
        s = s.rstrip(".。").strip()
        if s == before:
            break
    return s


def norm_text(text: str) -> str:
    """Case-, punctuation- and article-insensitive form for string comparison."""
    s = clean(text)
    s = _INLINE_TEXT.sub(r"\1", s).replace("$", "")
    s = s.lower().replace("’", "'")
    s = re.sub(r"[^\w\s%°\.\-/+=^']", " ", s)
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # a period is punctuation unless it sits inside a number
    s = re.sub(r"\s+", " ", s).strip()
    s = _ARTICLE.sub("", s)
    return s


def yes_no(text: str) -> bool | None:
    """True for a yes-answer, False for a no-answer, None when it is neither (first word decides)."""
    words = norm_text(text).split()
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    return None


def is_yes_no_gold(text: str) -> bool:
    return norm_text(text) in _YES | _NO - {"not"}


# --- numbers with units -------------------------------------------------------------------------

_LATEX_UNIT_FIXES = [
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?"), "°"), (re.compile(r"\\circ|\\degree"), "°"),
    (re.compile(r"\\%"), "%"), (re.compile(r"\\\$"), "$"), (re.compile(r"\\[,;:! ]|~"), " "),
    (re.compile(r"\^\s*\{?2\}?"), "^2"), (re.compile(r"\^\s*\{?3\}?"), "^3"),
    (re.compile(r"\\(?:text|mathrm|textrm|mbox)\s*\{([^{}]*)\}"), r" \1"), (re.compile(r"−"), "-"),
]
_NUM = re.compile(
    r"^(?P<cur>[$€£¥])?\s*(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)(?:[eE](?P<exp>[-+]?\d+))?"
    r"\s*(?P<unit>[^=+*<>()\[\]{}\\,;:!?]*)$"
)
_UNIT_OK = re.compile(r"^(?:[A-Za-zµΩ°%²³/\.\s\-]|\^[23])*$")  # words, symbols, ^2 / ^3; no other digits

# Canonical unit names; a plural "s" is dropped before the look-up.
_UNIT_ALIASES: dict[str, str] = {}
for canon, names in {
    "°": ["°", "degree", "deg", "°c"], "%": ["%", "percent", "per cent", "percentage"],
    "m": ["m", "meter", "metre"], "cm": ["cm", "centimeter", "centimetre"], "mm": ["mm", "millimeter", "millimetre"],
    "km": ["km", "kilometer", "kilometre"], "in": ["in", "inch", "inche", "\""], "ft": ["ft", "foot", "feet"],
    "yd": ["yd", "yard"], "mi": ["mi", "mile"], "kg": ["kg", "kilogram"], "g": ["g", "gram"], "mg": ["mg", "milligram"],
    "lb": ["lb", "pound"], "oz": ["oz", "ounce"], "t": ["ton", "tonne"], "s": ["s", "sec", "second"],
    "min": ["min", "minute"], "h": ["h", "hr", "hour"], "day": ["day"], "week": ["week"], "month": ["month"],
    "year": ["year", "yr", "year old"], "l": ["l", "liter", "litre"], "ml": ["ml", "milliliter", "millilitre"],
    "$": ["$", "dollar", "usd"], "€": ["€", "euro"], "£": ["£"], "¥": ["¥", "yuan", "yen"], "cent": ["cent"],
    "n": ["n", "newton"], "pa": ["pa", "pascal"], "kpa": ["kpa"], "mpa": ["mpa"], "j": ["j", "joule"],
    "w": ["w", "watt"], "v": ["v", "volt"], "a": ["amp", "ampere"], "ω": ["ω", "ohm"], "hz": ["hz", "hertz"],
    "km/h": ["km/h", "kmh", "kph", "kilometer per hour"], "m/s": ["m/s", "meter per second"], "mph": ["mph", "mile per hour"],
    "cm^2": ["cm^2", "cm²", "square cm", "sq cm", "square centimeter"], "m^2": ["m^2", "m²", "square meter", "sq m"],
    "km^2": ["km^2", "km²", "square kilometer"], "in^2": ["in^2", "square inch"], "ft^2": ["ft^2", "square feet", "sq ft", "square foot"],
    "cm^3": ["cm^3", "cm³", "cubic cm", "cubic centimeter"], "m^3": ["m^3", "m³", "cubic meter"],
    "": ["", "unit", "units", "square unit", "sq unit", "cubic unit", "unit^2", "units^2"],
}.items():
    for name in names:
        _UNIT_ALIASES[name] = canon


# Units of one dimension convert exactly (Decimal): 3 cm == 30 mm, 2 h == 120 min, 1 ft == 12 in.
_SCALE: dict[str, tuple[str, Decimal]] = {}
for dim, table in {
    "length": {"m": "1", "cm": "0.01", "mm": "0.001", "km": "1000", "in": "0.0254", "ft": "0.3048",
               "yd": "0.9144", "mi": "1609.344"},
    "time": {"s": "1", "min": "60", "h": "3600", "day": "86400", "week": "604800"},
    "mass": {"kg": "1", "g": "0.001", "mg": "0.000001", "lb": "0.45359237", "oz": "0.028349523125", "t": "1000"},
    "volume": {"l": "0.001", "ml": "0.000001", "m^3": "1", "cm^3": "0.000001"},
    "area": {"m^2": "1", "cm^2": "0.0001", "km^2": "1000000", "in^2": "0.00064516", "ft^2": "0.09290304"},
    "pressure": {"pa": "1", "kpa": "1000", "mpa": "1000000"},
    "speed": {"m/s": "1", "km/h": "0.2777777777777777777777777778"},
}.items():
    for name, factor in table.items():
        _SCALE[name] = (dim, Decimal(factor))


def convert(value: Decimal, unit: str, to: str) -> Decimal | None:
    """`value` in `unit` expressed in `to`, when both are known units of one dimension."""
    a, b = _SCALE.get(unit), _SCALE.get(to)
    if a is None or b is None or a[0] != b[0]:
        return None
    return value * a[1] / b[1]


def canonical_unit(unit: str) -> tuple[str, bool]:
    """(canonical name, known?) for a unit string; unknown words are compared as written."""
    u = re.sub(r"\s+", " ", unit.strip().rstrip(".").strip()).lower()
    u = u.replace("²", "^2").replace("³", "^3") if u not in _UNIT_ALIASES else u
    for cand in (u, u[:-1] if u.endswith("s") and len(u) > 2 else u, u.replace("es ", " ").replace("s ", " ")):
        if cand in _UNIT_ALIASES:
            return _UNIT_ALIASES[cand], True
    return u, False


@dataclass(frozen=True)
class Quantity:
    value: Decimal
    unit: str  # canonical; "" when none
    unit_known: bool
    text: str  # the numeric part as written


def _latex_units(s: str) -> str:
    for pat, rep in _LATEX_UNIT_FIXES:
        s = pat.sub(rep, s)
    return s


def parse_quantity(text: str) -> Quantity | None:
    """A number with an optional unit ("5 km", "58°", "$12.50", "76%", "1,200"), or None."""
    s = _latex_units(clean(text))
    s = _HEDGE.sub("", s)
    s = _ASSIGN.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    m = _NUM.match(s)
    if not m:
        return None
    unit = (m.group("unit") or "").strip()
    if not _UNIT_OK.match(unit) or len(unit.split()) > 3 or re.search(r"[/^]$|^[/^]", unit):
        return None
    if m.group("cur"):
        if unit:
            return None
        unit = m.group("cur")
    raw = m.group("num").replace(",", "")
    try:
        value = Decimal(raw)
        if m.group("exp"):
            value = value.scaleb(int(m.group("exp")))
    except InvalidOperation:
        return None
    canon, known = canonical_unit(unit)
    return Quantity(value, canon, known, raw)


_NUM_IN_PROSE = re.compile(r"(?<![\w.^_{])(?P<cur>[$€£¥])?(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![\w^]|\.\d)"
                           r"\s*(?P<unit>%|°|[A-Za-z][A-Za-z/]*(?:\^[23]|²|³)?)?")
_PROSE_NEGATION = re.compile(r"\b(?:not|n't|never|neither|nor|instead|rather|except|between|or)\b", re.IGNORECASE)
MAX_PROSE_WORDS = 12


def single_quantity_in_prose(text: str) -> Quantity | None:
    """The one number in a short sentence ("There are 12 circles in the picture."), with its unit when
    the next word is a known unit. None for two numbers, a negation or hedge ("not 12", "11 or 12"),
    LaTeX, or a long text."""
    s = _latex_units(clean(text))
    if "\\" in s or len(s.split()) > MAX_PROSE_WORDS or _PROSE_NEGATION.search(s):
        return None
    found = list(_NUM_IN_PROSE.finditer(s))
    if len(found) != 1:
        return None
    m = found[0]
    unit, known = canonical_unit(m.group("cur") or m.group("unit") or "")
    if not known:
        unit = ""  # "12 circles": the noun is not a unit
    try:
        value = Decimal(m.group("num").replace(",", ""))
    except InvalidOperation:
        return None
    return Quantity(value, unit, bool(unit), m.group("num").replace(",", ""))


def _decimals(raw: str) -> int:
    return len(raw.split(".", 1)[1]) if "." in raw else 0


def quantities_equal(gold: Quantity, pred: Quantity) -> bool | None:
    """Equal values (never by prefix: 0.54 != 0.5); units compared when both carry one.

    None: the values agree but the units are words we do not know and differ ("5 apples" vs "5 pears").
    """
    gv, pv = gold.value, pred.value
    if (converted := _same_after_conversion(gold, pred)) is not None:
        return converted  # 3 cm vs 30 mm; 5 km vs 5 m is False here
    if (gold.unit == "%") != (pred.unit == "%") and "" in (gold.unit, pred.unit):
        # 76% and 0.76 and 76 are the same answer; nothing else crosses the percent sign.
        pct, other = (gv, pv) if gold.unit == "%" else (pv, gv)
        return other == pct or other * 100 == pct
    if pv != gv:
        # A gold stated to 2+ decimals is a rounded value: a longer answer that rounds to it matches
        # (3.1416 for 3.14). A 0-1 decimal gold is taken as exact: 0.54 != 0.5, 12.46 != 12.5.
        gd, pd = _decimals(gold.text), _decimals(pred.text)
        if gd >= 2 and pd > gd and pv.quantize(Decimal(1).scaleb(-gd), rounding=ROUND_HALF_UP) == gv:
            return True if (not gold.unit or not pred.unit or gold.unit == pred.unit) else False
        return False
    if not gold.unit or not pred.unit or gold.unit == pred.unit:
        return True
    if gold.unit_known and pred.unit_known:
        return False
    return None


def _same_after_conversion(gold: Quantity, pred: Quantity) -> bool | None:
    if gold.unit and pred.unit and gold.unit != pred.unit:
        converted = convert(pred.value, pred.unit, gold.unit)
        if converted is not None:
            return abs(converted - gold.value) <= abs(gold.value) * Decimal("1e-9")
    return None


_EXPR_HINT = re.compile(r"\\[a-zA-Z]+|[\^_=√π]|\d\s*[-+*/×÷]\s*\d|\d\s*[a-z]\b|[a-z]\s*[-+*/]\s*[\da-z]|^\(.*,.*\)$|^\[.*,.*\]$")


def looks_like_math(text: str) -> bool:
    """An expression for math-verify (\\frac, powers, roots, 2x+1, tuples), not prose."""
    s = clean(text)
    if not s or len(s) > 120:
        return False
    prose = [w for w in re.sub(r"\\[a-zA-Z]+", " ", s).split() if re.fullmatch(r"[A-Za-z]{4,}", w)]
    if len(prose) > 1:
        return False
    return bool(_EXPR_HINT.search(s))
