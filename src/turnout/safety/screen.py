"""The screener: a text and its channel in, a ``Verdict`` out (a score in [0, 1] and the reason
codes behind it). Model-free and synchronous: regular expressions over the text's views
(``turnout.safety.normalize``), compiled once.

Scoring: a pattern that matches any view is evidence of its family: its weight times the
channel's factor for that family (exfiltration is weaker evidence in a user's own message, who
may well want an email sent; hidden instructions are what documents and tool output carry). A
family's evidence is its strongest pattern (a family's patterns overlap: the strong phrase holds
the weak one); families combine as independent signals, ``1 − Π(1 − s)``. A family that matched
only in a decoded view (base64, homoglyphs, letters spaced out…) adds ``obfuscation`` to the
reasons and to the score: nobody encodes an instruction to a model by accident. A quoted phrase
in a text that talks about attacks or filters is a mention and counts for less. Reasons are the
families whose evidence reaches ``REASON_MIN``, strongest first.

Layout: a pattern reads a view *joined* (line breaks, whitespace runs and ``_`` as one space), so
"ignore\\nall\\nprevious\\ninstructions" is the phrase it is to a model. ``role_injection`` is
about layout itself (a fake turn at a line's start, template tokens) and reads the view as laid
out only; a pattern with ``\\n``, ``^``, ``_``, ``://`` or ``@`` outside a negated class (tags, URLs,
addresses) reads it both ways.

Cost: patterns are looked up by the keys of the view's words (an inverted index of the stems
each pattern needs), so a clean text runs few or none of them; a long view is searched only in
windows around those stems. Short texts' verdicts are cached (a conversation resends its
history every turn). ``bench/safety.py`` measures the cost per text and per KB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from turnout.safety.normalize import PUNCTUATION, View, normalize, word_key
from turnout.safety.patterns import (
    EXFILTRATION,
    EXTRACTION,
    FAMILIES,
    HIDDEN,
    JAILBREAK,
    OVERRIDE,
    PATTERNS,
    ROLE,
    Pattern,
)

Channel = Literal["user", "documents", "tool_output"]
CHANNELS: tuple[Channel, ...] = ("user", "documents", "tool_output")
OBFUSCATION = "obfuscation"
REASONS = (*FAMILIES, OBFUSCATION)  # every reason code a verdict can carry

# Where a score at or above which a text is an injection, unless the config says otherwise.
THRESHOLDS: dict[Channel, float] = {"user": 0.5, "documents": 0.5, "tool_output": 0.5}
REASON_MIN = 0.25  # a family's evidence below this is not named as a reason
OBFUSCATION_WEIGHT = 0.3
# A view longer than WINDOW_MIN characters is searched in windows around its stems: a match
# starts at most WINDOW_BEFORE characters before the stem that woke its pattern and ends at most
# WINDOW_AFTER after it (every pattern's gaps are bounded well within these).
WINDOW_MIN = 4096
WINDOW_BEFORE, WINDOW_AFTER = 400, 800
MAX_WINDOWS = 256
MAX_CHARS = 262_144
CACHE_SIZE, CACHE_CHARS = 4096, 2048  # verdicts kept, on texts of at most this many characters
# A quoted phrase in a text that talks about attacks, filters or phrases is a mention, not an
# attack ("Attackers write 'ignore all previous instructions' into pages"): it counts this much.
MENTION = 0.35
_QUOTES = "'\"`«»"
_TALK = re.compile(
    r"\b(?:phrases?|examples?|such as|e\.g\.|detect\w*|filter\w*|classif\w*|attack\w*|injection\w*|"
    r"jailbreak\w*|security|defen[cs]\w*|research\w*|famous|unit tests?|rejects?|means?|meaning|"
    r"frase|ejemplo|ataque|phrase|exemple|attaque|beispiel|angriff|esempio|attacco|exemplo|пример|атак\w*)\b"
)  # a text is screened on this many characters from its start and as many from its end

# How much each family counts on each channel.
FACTORS: dict[Channel, dict[str, float]] = {
    "user": {OVERRIDE: 1.0, JAILBREAK: 1.0, EXTRACTION: 1.0, EXFILTRATION: 0.6, ROLE: 1.0, HIDDEN: 0.55},
    "documents": {OVERRIDE: 1.0, JAILBREAK: 0.9, EXTRACTION: 0.95, EXFILTRATION: 1.0, ROLE: 1.0, HIDDEN: 1.0},
    "tool_output": {OVERRIDE: 1.0, JAILBREAK: 0.9, EXTRACTION: 0.95, EXFILTRATION: 1.0, ROLE: 0.9, HIDDEN: 1.0},
}


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # in [0, 1]
    reasons: tuple[str, ...]  # reason codes, strongest first
    channel: Channel

    def over(self, threshold: float) -> bool:
        return self.score >= threshold


@dataclass(frozen=True, slots=True)
class _Need:
    """One group of a pattern's stems: a view has it when it holds any of them, as a word's
    key (``keys``) or, for a stem that is not a word (``<|``, ``![``, Chinese), as a substring."""

    keys: frozenset[str]
    substrings: tuple[str, ...]

    def met(self, view: View) -> bool:
        return not self.keys.isdisjoint(view.keys) or any(s in view.text for s in self.substrings)


@dataclass(frozen=True, slots=True)
class _Compiled:
    family: str
    weight: float
    regex: re.Pattern[str]
    needs: tuple[_Need, ...]
    reads: int  # JOINED, BOTH or LAID_OUT: which reading of a view it searches


class Screener:
    def __init__(self) -> None:
        self._patterns = tuple(
            _Compiled(p.family, p.weight, re.compile(p.source), tuple(_need(g) for g in p.needs), _reads(p))
            for p in PATTERNS
        )
        # The first group of each pattern, inverted: which patterns a key or a substring may wake.
        by_key: dict[str, set[int]] = {}
        by_substring: dict[str, set[int]] = {}
        always: list[int] = []
        for i, p in enumerate(self._patterns):
            if not p.needs:
                always.append(i)
                continue
            for key in p.needs[0].keys:
                by_key.setdefault(key, set()).add(i)
            for sub in p.needs[0].substrings:
                by_substring.setdefault(sub, set()).add(i)
        self._by_key = {k: frozenset(v) for k, v in by_key.items()}
        self._keys = frozenset(by_key)
        narrow: dict[str, list[tuple[str, frozenset[int]]]] = {}  # by first character
        for sub, patterns in by_substring.items():
            if sub.isascii():
                narrow.setdefault(sub[0], []).append((sub, frozenset(patterns)))
        self._narrow = tuple((first, tuple(subs)) for first, subs in narrow.items())
        self._wide = tuple((s, frozenset(v)) for s, v in by_substring.items() if not s.isascii())
        self._always = frozenset(always)
        self._cache: dict[tuple[str, Channel], Verdict] = {}

    def screen(self, text: str, channel: Channel) -> Verdict:
        """The verdict on ``text`` as ``channel``. A short text's verdict is kept (a bounded
        cache, emptied when full): a conversation sends its history again with every turn."""
        cacheable = len(text) <= CACHE_CHARS
        if cacheable:
            found = self._cache.get((text, channel))
            if found is not None:
                return found
        verdict = self._screen(text, channel)
        if cacheable:
            if len(self._cache) >= CACHE_SIZE:  # emptied, not trimmed: O(1) per text either way
                self._cache.clear()
            self._cache[(text, channel)] = verdict
        return verdict

    def _screen(self, text: str, channel: Channel) -> Verdict:
        if len(text) > 2 * MAX_CHARS:  # the middle of a huge text is left out, its ends are read
            text = text[:MAX_CHARS] + "\n" + text[-MAX_CHARS:]
        factors = FACTORS[channel]
        found: dict[str, dict[int, float]] = {}  # family → the weights of the patterns that matched
        plain: set[str] = set()  # families matched in the text itself (or its homoglyph fold)
        for view in normalize(text).views:
            talk: bool | None = None  # the view talks about attacks, filters, phrases
            for i in self._candidates(view):
                p = self._patterns[i]
                if len(p.needs) > 1 and not _met(p.needs, view):
                    continue
                body = view.text if p.reads == LAID_OUT else view.joined
                match = _search(p, view, body)
                if match is None and p.reads == BOTH and body is not view.text:
                    body = view.text
                    match = _search(p, view, body)
                if match is None:
                    continue
                weight = p.weight * factors[p.family]
                if _quoted(body, match):
                    if talk is None:
                        talk = _TALK.search(view.text) is not None
                    if talk:
                        weight *= MENTION
                found.setdefault(p.family, {})[i] = max(weight, found.get(p.family, {}).get(i, 0.0))
                if view.layer == "text":
                    plain.add(p.family)
        return _verdict(found, plain, channel)

    def _candidates(self, view: View) -> set[int]:
        """The patterns whose first group of stems the view holds."""
        found = set(self._always)
        by_key = self._by_key
        for key in view.keys & self._keys:
            found |= by_key[key]
        body = view.text
        for first, subs in self._narrow:
            if first in body:
                for sub, patterns in subs:
                    if sub in body:
                        found |= patterns
        if not body.isascii() and _WIDE.search(body):
            for sub, patterns in self._wide:
                if sub in body:
                    found |= patterns
        return found

    def screen_all(self, texts: Iterable[str], channel: Channel) -> Verdict:
        """Several texts of one channel (a request's messages): the worst verdict."""
        worst = Verdict(0.0, (), channel)
        for text in texts:
            verdict = self.screen(text, channel)
            if verdict.score > worst.score:
                worst = verdict
        return worst


def _met(needs: tuple[_Need, ...], view: View) -> bool:
    """The groups after the first (which woke the pattern)."""
    for need in needs[1:]:
        if need.keys.isdisjoint(view.keys) and not any(s in view.text for s in need.substrings):
            return False
    return True


def _quoted(body: str, match: re.Match[str]) -> bool:
    """The match opens a quotation (``'ignore all previous instructions'``) that closes soon after."""
    before = body[max(0, match.start() - 3) : match.start()].rstrip()
    if not before or before[-1] not in _QUOTES:
        return False
    return body.find(before[-1], match.end(), match.end() + 100) != -1


def _search(p: _Compiled, view: View, body: str) -> re.Match[str] | None:
    """Whether the pattern matches ``body``, the view joined or as laid out. A long one is
    searched only around where the stems of the pattern's first group occur (merged windows),
    not end to end."""
    if len(body) <= WINDOW_MIN or not p.needs:
        return p.regex.search(body)
    need = p.needs[0]
    starts: list[int] = []
    for key in (*(need.keys & view.keys), *need.substrings):
        stem = key.removeprefix("=")
        i = body.find(stem)
        while i != -1:
            starts.append(i)
            if len(starts) > MAX_WINDOWS:  # everywhere: one search end to end is cheaper
                return p.regex.search(body)
            i = body.find(stem, i + 1)
    starts.sort()
    lo = hi = -1
    for start in starts:
        a, b = max(0, start - WINDOW_BEFORE), start + WINDOW_AFTER
        if a <= hi:
            hi = b
            continue
        if hi >= 0 and (match := p.regex.search(body, lo, hi)) is not None:
            return match
        lo, hi = a, b
    return p.regex.search(body, lo, hi) if hi >= 0 else None


_NEGATED = re.compile(r"\[\^(?:\\.|[^\]\\])*\]")  # a negated class: [^.!?\n]
_LAYOUT = ("\\n", "^", "_", "://", "@")
JOINED, BOTH, LAID_OUT = 0, 1, 2


def _reads(p: Pattern) -> int:
    """Which reading a pattern searches: role injection is layout (turns at a line's start,
    template tokens), so the text as laid out; a pattern that reads what joining changes (line
    starts, ``_`` in tags, URLs) both; the rest the joined text."""
    if p.family == ROLE:
        return LAID_OUT
    positive = _NEGATED.sub("", p.source)
    return BOTH if any(mark in positive for mark in _LAYOUT) else JOINED


_WIDE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")  # kana, Han, Hangul


def _need(stems: tuple[str, ...]) -> _Need:
    keys: set[str] = set()
    substrings: list[str] = []
    for stem in stems:
        word = stem.strip().removeprefix("=")
        # The stem's words as the view splits them: "set aside" → set, "you're" → you, "www." → www.
        parts = word.translate(PUNCTUATION).split()
        longest = max(parts, key=len) if parts else ""
        if _WIDE.search(word) or not longest or (len(parts) > 1 and len(longest) < 3) or not longest.isalnum():
            substrings.append(stem)
        elif len(parts) > 1 or stem.startswith("=") or word != stem.strip() or longest != word:
            keys.add("=" + (parts[0] if " " in word and parts[0].isalnum() else longest))
        else:
            keys.add(word_key(word))
    return _Need(frozenset(keys), tuple(substrings))


def _verdict(found: dict[str, dict[int, float]], plain: set[str], channel: Channel) -> Verdict:
    if not found:
        return Verdict(0.0, (), channel)
    family_scores: dict[str, float] = {}
    for family, weights in found.items():
        # The strongest pattern of a family: its patterns overlap (a strong phrase contains
        # the weaker one), so they are one piece of evidence, not several.
        family_scores[family] = max(weights.values())
    miss = 1.0
    for s in family_scores.values():
        miss *= 1.0 - s
    reasons = [f for f, s in sorted(family_scores.items(), key=lambda kv: -kv[1]) if s >= REASON_MIN]
    if reasons and any(f not in plain for f in reasons):
        miss *= 1.0 - OBFUSCATION_WEIGHT
        reasons.append(OBFUSCATION)
    return Verdict(round(1.0 - miss, 4), tuple(reasons), channel)


SCREENER = Screener()
