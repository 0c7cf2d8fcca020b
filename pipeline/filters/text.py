"""Case folding and words in one C pass for text within Latin-1 (nearly every trace and description).

Within Latin-1, `str.lower()` keeps every index and folds case as a pattern of ASCII letters under
IGNORECASE does (beyond it, IGNORECASE also takes e.g. the Kelvin sign and the long s for k and s,
which lower() does not): a lower-case pattern without IGNORECASE over the lower-cased text finds the
same matches at the same places, 2-3x faster. Other text keeps the IGNORECASE path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_WORD = re.compile(r"\w+")
# `\w+` over lower-cased text in one pass for text within Latin-1 (nearly every trace): each byte
# maps to its lower case if a word character, else to a space; split() then gives the same words
# as the regex (as bytes, which count and compare alike), ~4x faster.
_LATIN1_WORDS = bytes(ord(c.lower()) if _WORD.fullmatch(c) else 32 for c in map(chr, range(256)))
_LATIN1_LOWER = bytes(ord(chr(i).lower()) for i in range(256))  # Latin-1's lower case stays in Latin-1


def _latin1(text: str) -> bytes | None:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def latin1_lower(text: str) -> str | None:
    """`text.lower()` for text within Latin-1 (one C pass; str.lower() goes character by character
    once a text holds any non-ASCII one, a degree sign say), else None."""
    raw = _latin1(text)
    return None if raw is None else raw.translate(_LATIN1_LOWER).decode("latin-1")


def within_latin1(text: str) -> bool:
    return _latin1(text) is not None


def lower_words(text: str) -> list[str] | list[bytes]:
    """The word runs (regex `\\w+`) of `text.lower()`: bytes for Latin-1 text, else str."""
    raw = _latin1(text)
    return _WORD.findall(text.lower()) if raw is None else raw.translate(_LATIN1_WORDS).split()


class CaselessPattern:
    """A pattern written in lower case, matched ignoring case: over the lower-cased text where that is
    within Latin-1 (the same matches, see above), else with IGNORECASE (`ignorecase`). The matches'
    spans index the text given; read their groups by span (they may come from the lower-cased copy)."""

    def __init__(self, source: str):
        self.ignorecase = re.compile(source, re.IGNORECASE)
        self.lower = re.compile(source)

    def search(self, text: str) -> re.Match[str] | None:
        low = latin1_lower(text)
        return self.ignorecase.search(text) if low is None else self.lower.search(low)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        low = latin1_lower(text)
        return self.ignorecase.finditer(text) if low is None else self.lower.finditer(low)
