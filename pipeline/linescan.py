"""Where in a text a regular expression can match, for scanning a text a piece at a time.

The modality rewrite runs ~60 patterns over every kept trace, while few lines or sentences of a trace
hold a word those patterns need. `shape()` reads a compiled pattern's parse tree and tells:

- `takes`: which of the break characters `WATCH` (line break, . ! ? ;) a match can hold, and
  `looks_past` / `sees`: which ones a lookaround can look past / look at. Cut a text into pieces at
  breaks that no match takes and no lookaround looks past (`Shape.local`): then the matches a
  whole-text scan finds in a piece are those of `pattern.finditer(text, start, window_end(...))` over
  the piece, whatever the rest of the text holds. (`pos` keeps what lies before the piece visible to
  `\\b` and lookbehinds; `window_end` keeps the break visible to lookaheads and `$` as it is.)
- `covered`: every match holds a match of a given `trigger` pattern, found on representative strings
  (the pattern's literal alternatives, lower-cased, a run of spaces/tabs written as one space). A
  piece without a trigger match then holds no match of the pattern.
- `anchors`: the anchors used (`AT_BOUNDARY` for `\\b`, `AT_END` for `$`, ...).

The analysis is conservative: it may call a pattern not local or not covered when it is, never the
other way round; a pattern it cannot read is scanned over the whole text, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from re import _constants as _C  # the parser of the re module (Python 3.11+)
from re import _parser as _P

WATCH = "\n.!?;"  # the break characters the analysis follows (none is a word character)
_ALL = frozenset(WATCH)
_NONE: frozenset[str] = frozenset()
_CAP = 2048  # most representative strings kept for one subpattern
_SPACE_TAB = {" ", "\t"}
_CATEGORY_TAKES = {
    _C.CATEGORY_SPACE: frozenset("\n"), _C.CATEGORY_NOT_SPACE: _ALL - {"\n"},
    _C.CATEGORY_WORD: _NONE, _C.CATEGORY_NOT_WORD: _ALL, _C.CATEGORY_DIGIT: _NONE, _C.CATEGORY_NOT_DIGIT: _ALL,
    _C.CATEGORY_LINEBREAK: frozenset("\n"), _C.CATEGORY_NOT_LINEBREAK: _ALL - {"\n"},
}
_REPEATS = {_C.MAX_REPEAT, _C.MIN_REPEAT, *((_C.POSSESSIVE_REPEAT,) if hasattr(_C, "POSSESSIVE_REPEAT") else ())}
_SINGLE = {_C.LITERAL, _C.NOT_LITERAL, _C.IN, _C.ANY}
_BOUNDARIES = {"AT_BOUNDARY", "AT_NON_BOUNDARY"}
# Non-ASCII characters that IGNORECASE matching takes for an ASCII letter (İ ı ſ K; checked in the tests).
FOLDS_TO_ASCII = "\u0130\u0131\u017f\u212a"


@dataclass
class Shape:
    covered: bool
    takes: frozenset[str] = _NONE
    looks_past: frozenset[str] = _NONE
    sees: frozenset[str] = _NONE
    anchors: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def local(self, breaks: str) -> bool:
        """Matches stay within the pieces of a text cut at `breaks`; lookarounds see at most the break next to them."""
        return not self.problems and not set(breaks) & (self.takes | self.looks_past)

    def context_free(self, breaks: str) -> bool:
        """Local, and a piece holds the same matches wherever it is: the break next to it and the ends of
        the text are alike to the pattern (only `\\b`/`\\B` anchors, no lookaround looks at a break)."""
        return self.local(breaks) and not set(breaks) & self.sees and self.anchors <= _BOUNDARIES


@dataclass
class _Node:
    exact: frozenset[str] | None  # every string the node can match, when few (see the module docstring)
    covered: bool
    takes: frozenset[str]  # watched break characters it can consume


def _in_class(items: list) -> tuple[frozenset[str] | None, frozenset[str]]:
    """(the characters of a small positive class, None otherwise), the watched characters it admits."""
    negate = any(op is _C.NEGATE for op, _ in items)
    chars: set[str] = set()
    large = negate
    takes: frozenset[str] = _NONE
    for op, av in items:
        if op is _C.LITERAL:
            chars.add(chr(av))
            takes |= {chr(av)} & _ALL
        elif op is _C.RANGE:
            lo, hi = av
            takes |= {c for c in WATCH if lo <= ord(c) <= hi}
            if hi - lo > 32:
                large = True
            else:
                chars.update(map(chr, range(lo, hi + 1)))
        elif op is _C.CATEGORY:
            large = True
            takes |= _CATEGORY_TAKES.get(av, _ALL)
        elif op is not _C.NEGATE:
            large, takes = True, _ALL  # unknown: assume the worst
    if negate:
        takes = _ALL - takes
    if large:
        return None, takes
    return frozenset(" " if c in _SPACE_TAB else c.lower() for c in chars), takes


def _product(parts: list[frozenset[str]]) -> frozenset[str] | None:
    out = frozenset({""})
    for part in parts:
        if len(out) * len(part) > _CAP:
            return None
        out = frozenset(a + b for a in out for b in part)
    return out


class _Analyser:
    def __init__(self, trigger: re.Pattern[str] | None):
        self.trigger = trigger
        self.anchors: set[str] = set()
        self.looks_past: frozenset[str] = _NONE
        self.sees: frozenset[str] = _NONE
        self.problems: list[str] = []
        self.group_takes: dict[int, frozenset[str]] = {}

    def all_covered(self, strings: frozenset[str] | None) -> bool:
        return (self.trigger is not None and strings is not None and "" not in strings
                and all(self.trigger.search(s) for s in strings))

    def seq(self, items, flags: int) -> _Node:
        nodes = [self.item(op, av, flags) for op, av in items]
        takes = frozenset().union(*(n.takes for n in nodes))
        covered = any(n.covered for n in nodes)
        known = [n.exact for n in nodes if n.exact is not None]
        exact = _product(known) if len(known) == len(nodes) else None
        if not covered and self.trigger is not None:
            covered = self._some_run_covered(nodes)
        return _Node(exact, covered or self.all_covered(exact), takes)

    def _some_run_covered(self, nodes: list[_Node]) -> bool:
        # Every match holds the text of each run of consecutive nodes with known strings: if all strings
        # of one run hold a trigger match, so does every match. Longer runs only help (a trigger match
        # in a substring is one in the string), so only the longest run from each start is checked.
        i = 0
        while i < len(nodes):
            if nodes[i].exact is None:
                i += 1
                continue
            acc: frozenset[str] = frozenset({""})
            j = i
            while j < len(nodes) and nodes[j].exact is not None:
                nxt = _product([acc, nodes[j].exact])  # type: ignore[list-item]
                if nxt is None:
                    break
                acc, j = nxt, j + 1
            if j > i and self.all_covered(acc):
                return True
            i = i + 1 if j < len(nodes) and nodes[j].exact is not None else j + 1
        return False

    def item(self, op, av, flags: int) -> _Node:
        if op is _C.LITERAL:
            c = chr(av)
            return _Node(frozenset({" " if c in _SPACE_TAB else c.lower()}), False, frozenset({c}) & _ALL)
        if op is _C.NOT_LITERAL:
            return _Node(None, False, _ALL - {chr(av)})
        if op is _C.ANY:
            return _Node(None, False, _ALL if flags & re.DOTALL else _ALL - {"\n"})
        if op is _C.IN:
            exact, takes = _in_class(av)
            return _Node(exact, False, takes)
        if op is _C.BRANCH:
            nodes = [self.seq(alt, flags) for alt in av[1]]
            exact = None
            if all(n.exact is not None for n in nodes):
                union = frozenset().union(*(n.exact for n in nodes))  # type: ignore[misc]
                exact = union if len(union) <= _CAP else None
            covered = all(n.covered for n in nodes) or self.all_covered(exact)
            return _Node(exact, covered, frozenset().union(*(n.takes for n in nodes)))
        if op is _C.SUBPATTERN:
            group, add, remove, sub = av
            node = self.seq(sub, (flags | add) & ~remove)
            if group is not None:
                self.group_takes[group] = node.takes
            return node
        if op is getattr(_C, "ATOMIC_GROUP", None):
            return self.seq(av, flags)
        if op in _REPEATS:
            lo, hi, sub = av
            node = self.seq(sub, flags)
            exact = None
            if node.exact is not None:
                if node.exact == frozenset({" "}) and hi is _C.MAXREPEAT:
                    exact = frozenset({" "}) if lo >= 1 else frozenset({"", " "})  # a run of spaces/tabs
                elif hi is not _C.MAXREPEAT and hi <= 3:
                    exact = frozenset()
                    for k in range(lo, hi + 1):
                        more = _product([node.exact] * k)
                        if more is None or len(exact | more) > _CAP:
                            exact = None
                            break
                        exact |= more
            covered = (lo >= 1 and node.covered) or self.all_covered(exact)
            return _Node(exact, covered, node.takes)
        if op is _C.AT:
            self.anchors.add(str(av))
            return _Node(frozenset({""}), False, _NONE)
        if op in (_C.ASSERT, _C.ASSERT_NOT):
            direction, sub = av
            saved, self.trigger = self.trigger, None  # what a lookaround sees is not part of the match
            self._lookaround(list(sub), direction > 0, flags)
            self.trigger = saved
            return _Node(frozenset({""}), False, _NONE)
        if op is _C.GROUPREF:
            return _Node(None, False, self.group_takes.get(av, _ALL))
        if op is _C.GROUPREF_EXISTS:
            group, yes, no = av
            nodes = [self.seq(yes, flags), self.seq(no or [], flags)]
            return _Node(None, all(n.covered for n in nodes), nodes[0].takes | nodes[1].takes)
        self.problems.append(f"unsupported regex element {op}")
        return _Node(None, False, _ALL)

    def _lookaround(self, items: list, ahead: bool, flags: int) -> None:
        """A lookaround may look at the break next to the match, not past it: an element that can take
        a break character must be a single character, the last one looked at."""
        order = items if ahead else items[::-1]
        for k, (op, av) in enumerate(order):
            takes = self.item(op, av, flags).takes
            if not takes:
                continue
            self.sees |= takes
            last = k == len(order) - 1
            if last and op in _SINGLE:
                continue
            if last and op is _C.BRANCH:
                for alt in av[1]:
                    self._lookaround(list(alt), ahead, flags)
            elif last and op is _C.SUBPATTERN:
                self._lookaround(list(av[3]), ahead, flags)
            else:
                self.looks_past |= takes


def shape(pattern: re.Pattern[str], trigger: re.Pattern[str] | None = None) -> Shape:
    analyser = _Analyser(trigger)
    node = analyser.seq(_P.parse(pattern.pattern, pattern.flags), pattern.flags)
    return Shape(covered=node.covered, takes=node.takes, looks_past=analyser.looks_past, sees=analyser.sees,
                 anchors=analyser.anchors, problems=analyser.problems)


def _admits_blank(items: list) -> bool:
    """Whether a class admits a space, a tab or a line break."""
    if any(op is _C.NEGATE for op, _ in items):
        return True
    for op, av in items:
        if op is _C.LITERAL and chr(av) in " \t\n":
            return True
        if op is _C.RANGE and any(av[0] <= c <= av[1] for c in (9, 10, 32)):
            return True
        if op is _C.CATEGORY and av not in (_C.CATEGORY_WORD, _C.CATEGORY_DIGIT, _C.CATEGORY_NOT_SPACE):
            return True
    return False


def _is_space_class(op, av) -> bool:
    return op is _C.IN and {(o, a) for o, a in av} <= {(_C.LITERAL, 32), (_C.LITERAL, 9)}


def check_trigger(trigger: re.Pattern[str]) -> list[str]:
    """What makes a pattern unfit to be a trigger. It must be plain text: literals, runs of spaces/tabs
    (`[ \\t]+` or `[ \\t]*`, what a space in a rules-file pattern compiles to), classes that admit no
    space, tab or line break (\\w), groups, alternatives and repeats; no anchors, lookarounds nor
    back-references. Then a trigger match in a representative string (see `shape`) is one in the text."""
    problems: list[str] = []

    def walk(items) -> None:
        for op, av in items:
            if op is _C.LITERAL:
                if chr(av) in " \t\n":
                    problems.append("a space, tab or line break outside a run of spaces/tabs")
            elif op is _C.IN:
                if _admits_blank(av):
                    problems.append("a class that admits a space, tab or line break")
            elif op is _C.BRANCH:
                for alt in av[1]:
                    walk(alt)
            elif op is _C.SUBPATTERN:
                walk(av[3])
            elif op in _REPEATS:
                lo, hi, sub = av
                sub = list(sub)
                if len(sub) == 1 and _is_space_class(*sub[0]):
                    if hi is not _C.MAXREPEAT:
                        problems.append("a bounded run of spaces/tabs")
                else:
                    walk(sub)
            else:
                problems.append(f"{op} (only text, classes, groups, alternatives and repeats)")

    walk(_P.parse(trigger.pattern, trigger.flags))
    return problems


def template_literals(replace: str, pattern: re.Pattern[str]) -> list[str]:
    """The literal parts of a replacement template (what `Match.expand` adds besides group text)."""
    parsed = _P.parse_template(replace, pattern)
    if isinstance(parsed, tuple):  # Python 3.11: (groups, literals)
        return [s for s in parsed[1] if s]
    return [s for s in parsed if isinstance(s, str)]  # Python 3.12+: literals and group numbers


def window_end(text_len: int, piece_end: int) -> int:
    """`endpos` for scanning one piece of a text (a piece ends at its break or at the end of the text).

    Two characters past the piece's end: a lookahead sees the break as in the whole text, and `$` is
    true at the piece's end exactly when it is in the whole text (at the end, or before a final line
    break). A match found there that starts past the piece's end is not the piece's."""
    return min(piece_end + 2, text_len)


@lru_cache(maxsize=64)
def breaks_pattern(breaks: str) -> re.Pattern[str]:
    return re.compile("[" + re.escape(breaks) + "]")


def pieces(text: str, breaks: str) -> list[tuple[int, int]]:
    """(start, end) of the pieces of a text cut at each break character; a piece ends at its break (or
    at the end of the text), which belongs to no piece."""
    out, pos = [], 0
    parts = text.split("\n") if breaks == "\n" else breaks_pattern(breaks).split(text)
    for part in parts:
        end = pos + len(part)
        out.append((pos, end))
        pos = end + 1
    return out


def split(text: str, breaks: str) -> list[str]:
    """The pieces' texts (as `pieces` cuts them)."""
    return text.split("\n") if breaks == "\n" else breaks_pattern(breaks).split(text)
