"""Text as the screener reads it: every *view* of a text that an attacker could count on a model
to read, each lowercased and folded so that one pattern covers its disguises.

The first view is the text itself: NFKC, Latin accents dropped (``précédentes`` reads
``precedentes``), zero-width, bidi and Unicode tag characters removed, curly quotes made
straight. More views follow only where the text carries their sign:

* ``folded``: homoglyphs (Cyrillic and Greek letters that look Latin) folded to ASCII, for a
  text with a word that mixes scripts (``іgnоrе``);
* ``base64``, ``hex``: embedded runs that decode to readable UTF-8 text;
* ``url``: percent-encoding decoded; ``entities``: HTML character references; ``escapes``:
  ``\\u0069``-style escapes; ``tags``: text smuggled in Unicode tag characters;
* ``rot13``, ``reversed``: when a key word appears so encoded;
* ``spaced``: letters spaced or dotted out (``i g n o r e``, ``v.e.r.g.i.s.s``), or written one
  a line, joined again;
* ``leet``: digits standing for letters (``1gn0r3``);
* ``items``: three or more short list items in a row (``- ignore\n- all\n- previous``) read as
  one line, their markers dropped.

Each view is also read *joined*: every run of whitespace, line breaks included, and every ``_``
as one space (``ignore\\nall\\nprevious``, ``ignore_all_previous``), for the patterns that read
words, not layout; a line that opens a list item or a heading keeps its break, so the lines of a
list stay apart, and a snake_case name in code (``skip_system_prompt: true``, ``cfg.x_y``,
``f_g()``) keeps its underscores. A decoded view is folded and probed in its turn (base64 inside
percent-encoding), to a depth of two. Each view also carries its *keys*: each of its words as
``=word`` and, for a longer word, its first four characters, which the screener looks its
patterns up by.
One pass over the words gives the keys and the probes' signs (single letters, words mixing
letters and digits, long runs), so clean text pays for one translate, one split and one loop.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

MAX_DEPTH = 2
MAX_VIEWS = 12
MAX_RUNS = 16  # encoded runs decoded per text
MIN_DECODED = 8  # characters a decoded run needs to count as text

# Removed before anything else: they render as nothing, so a model reads through them.
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f\u17b4\u17b5"
_BIDI = "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
INVISIBLE = frozenset(_ZERO_WIDTH + _BIDI)
_TAG_START, _TAG_END = 0xE0000, 0xE0080  # Unicode tags: invisible, each mirrors an ASCII character
_STRAIGHT = dict(zip(map(ord, "\u2018\u2019\u201a\u201b\u2032\u201c\u201d\u201e\u2033"), '\'\'\'\'"""""', strict=True))
_MARKS: dict[int, None] = dict.fromkeys(range(0x0300, 0x0370))  # combining diacritics (Latin, Greek, Cyrillic)
_CLEAN: dict[int, str | None] = {**dict.fromkeys(map(ord, INVISIBLE)), **_STRAIGHT, **_MARKS}

# Letters that look Latin, after lowercasing (and after NFKD took their accents off).
_HOMOGLYPHS = str.maketrans(
    {
        # Cyrillic
        "а": "a",
        "в": "b",
        "е": "e",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "с": "c",
        "т": "t",
        "у": "y",
        "х": "x",
        "ѕ": "s",
        "і": "i",
        "ј": "j",
        "ԁ": "d",
        "һ": "h",
        "ԛ": "q",
        "ԝ": "w",
        "ɡ": "g",
        "ӏ": "l",
        "ү": "y",
        "ց": "g",
        "ո": "n",
        "ս": "u",
        "ѵ": "v",
        # Greek
        "α": "a",
        "β": "b",
        "ε": "e",
        "η": "n",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "γ": "y",
        "ω": "w",
        "ϲ": "c",
        "ϳ": "j",
        # Latin lookalikes NFKC keeps
        "ı": "i",
        "ȷ": "j",
        "ɑ": "a",
        "ɩ": "i",
        "ʏ": "y",
        "ᴀ": "a",
        "ʙ": "b",
        "ᴄ": "c",
        "ᴅ": "d",
        "ᴇ": "e",
        "ɢ": "g",
        "ʜ": "h",
        "ɪ": "i",
        "ᴊ": "j",
        "ᴋ": "k",
        "ʟ": "l",
        "ᴍ": "m",
        "ɴ": "n",
        "ᴏ": "o",
        "ᴘ": "p",
        "ʀ": "r",
        "ꜱ": "s",
        "ᴛ": "t",
        "ᴜ": "u",
        "ᴠ": "v",
        "ᴡ": "w",
        "ᴢ": "z",
    }
)
_MIXED = re.compile(r"[a-z][\u0250-\u1d2b\u0370-\u058f\ua700-\ua7ff]|[\u0250-\u1d2b\u0370-\u058f\ua700-\ua7ff][a-z]")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"})
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
_LEET_WORD = re.compile(r"[a-z013457]*[a-z][a-z013457]*")  # letters with digits standing in for some

# Word separators for the keys: ASCII punctuation and the common wide punctuation.
PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation + "“”‘’«»„…—–·。，、！？：；（）【】「」『』", " "))

_B64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}){10,}|(?:(?:0x)?[0-9a-fA-F]{2}[ :,]){9,}(?:0x)?[0-9a-fA-F]{2}")
_HEX_SEP = re.compile(r"0x|[ :,]")
_HEX_PAIR = frozenset(a + b for a in "0123456789abcdef" for b in "0123456789abcdef")
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")
_JSON_ESCAPE = re.compile(r'\\[nrt"/]')
_JSON_ESCAPES = {"\\n": "\n", "\\r": "\r", "\\t": "\t", '\\"': '"', "\\/": "/"}
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})")
# Letters spaced or dotted out: five or more single letters, each followed by 1-3 separators. A
# line break is one separator too: a letter a line (``i\ng\nn\no\nr\ne``) reads as the word.
_SPACED = re.compile(r"(?<![a-z])(?:[a-z](?:\r?\n|[ \t.\-_*|/+~]){1,3}){4,}[a-z](?![a-z])")
_ONE_SEP = re.compile(r"(?<=[a-z])[.\-_*|/+~](?=[a-z])")
_ONE_SPACE = re.compile(r"(?<=[a-z])[ \t\n](?=[a-z])")
_GAPS = re.compile(r"[ \t\n.\-_*|/+~]{2,}")
# What the joined reading reads as a space, and a line that keeps its break there (a list item or
# a heading: "- ", "* ", "• ", "# ", "1. ", "2) "; an e-mail's "> " quotes wrapped prose, joined).
_WIDE_BREAKS = re.compile(r"[\x85\u2028\u2029]")  # line breaks NFKC keeps (it makes other spaces ' ')
# A word of letters and digits joined by ``_`` (``ignore_all_previous``), perhaps quoted or
# bracketed, perhaps ending a sentence: read as words. A name in code is not one: called, indexed,
# assigned or keyed (``skip_system_prompt: true``), reached through a dot, a path, a ``--flag``.
_SNAKE = re.compile(r"([\"'`(\[*]*)([^\W_]+(?:_+[^\W_]+)+)([\"'`)\]*.,;!?]*)")
_CODE_NEXT = frozenset("=:([")  # a word followed by one of these is a name
# Only the spaces of the item's own line: ``\s*`` also took the line breaks after it, so that in
# a run of n line breaks each tried its own scan to the run's end (n² steps: 20 KB of ``\n``
# screened in 15 s).
_LIST_LINE = re.compile(r"\n[^\S\n]*(?=(?:[-*•#+]+|\d{1,3}[.)])(?:\s|$))")
# A list item's line, its marker apart from its words; items of at most ``SHORT_ITEM`` words, three
# or more in a row, are one sentence spread over bullets (``- ignore\n- all\n- previous``).
_ITEM = re.compile(r"[ \t]*(?:[-*•#+]+|\d{1,3}[.)])[ \t]+(\S.*)")
SHORT_ITEM = 3
# Key words as rot13 and reversed text would write them (their keys): a probe, not a decoder.
_ROT13_KEYS = frozenset({"vtab", "qvfe", "sbet", "vafg", "flfg", "cebz", "ceri", "erir", "nffv"})
_REVERSED_KEYS = frozenset({"eron", "snoi", "tpmo", "suoi", "dras", "laev"})


@dataclass(frozen=True, slots=True)
class View:
    """One reading of a text: ``layer`` says how it was obtained (``text`` for the text itself),
    ``text`` is lowercased and folded, ``keys`` are its words' keys; ``joined`` is ``text`` with
    line breaks, whitespace runs and underscores read as one space (``text`` itself, the same
    object, where there was nothing to join)."""

    layer: str
    text: str
    keys: frozenset[str]
    joined: str


@dataclass(frozen=True, slots=True)
class Normalized:
    views: tuple[View, ...]
    hidden: int  # invisible characters removed (zero-width, bidi controls, tags)

    @property
    def text(self) -> str:
        return self.views[0].text


@dataclass(slots=True)
class _Signs:
    """What one pass over a view's words says about it."""

    keys: set[str]
    single: int = 0  # distinct one-letter words: letters spaced out?
    leet: int = 0  # words mixing letters and digits the way leetspeak does
    long: bool = False  # a word of 16 characters or more: an encoded run?
    pairs: int = 0  # distinct two-character hex words: spaced-out hex?
    rot13: bool = False
    reversed: bool = False


def fold(text: str) -> tuple[str, int]:
    """NFKC, Latin accents off, invisible characters out, JSON string escapes (``\\n``, ``\\"``)
    read as what they stand for, lowercased; and how many invisible characters there were.
    ASCII text takes the fast way."""
    if "\\" in text:  # tool output is often JSON: its "\\n\\nSYSTEM:" starts a line for a model
        text = _JSON_ESCAPE.sub(_json_unescape, text)
    if text.isascii():
        return text.lower(), 0
    tags = sum(1 for c in text if _TAG_START <= ord(c) < _TAG_END)
    if tags:
        text = "".join(c for c in text if not _TAG_START <= ord(c) < _TAG_END)
    decomposed = unicodedata.normalize("NFKD", text)
    hidden = tags + sum(1 for c in decomposed if c in INVISIBLE)
    return unicodedata.normalize("NFC", decomposed.translate(_CLEAN)).lower(), hidden


def join(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) and every ``_`` read as one
    space, except the break before a line that opens a list item or a heading, and the ``_`` of
    a name in code (``_SNAKE``). The
    text itself where it has nothing to join: the common case pays for a few substring checks."""
    if not (
        "\n" in text
        or "_" in text
        or "  " in text
        or "\t" in text
        or "\r" in text
        or "\v" in text
        or "\f" in text
        or (not text.isascii() and _WIDE_BREAKS.search(text))
    ):
        return text
    items: list[str] = []
    for item in _LIST_LINE.split(text):
        words = item.split()
        if "_" in item:
            _read_underscores(words)
        if words:
            items.append(" ".join(words))
    return "\n".join(items)


def _merge_items(text: str) -> str | None:
    """``text`` with each run of three or more short list items read as one line, their markers
    dropped; None where it has no such run."""
    out: list[str] = []
    run: list[str] = []
    merged = False

    def end_run() -> None:
        nonlocal merged
        if len(run) >= 3:
            out.append(" ".join(run))
            merged = True
        else:
            out.extend(run_lines)
        run.clear()
        run_lines.clear()

    run_lines: list[str] = []
    for line in text.split("\n"):
        m = _ITEM.fullmatch(line)
        if m is not None and len(m.group(1).split()) <= SHORT_ITEM:
            run.append(m.group(1).strip())
            run_lines.append(line)
            continue
        end_run()
        out.append(line)
    end_run()
    return "\n".join(out) if merged else None


def _read_underscores(words: list[str]) -> None:
    """Each word of ``words`` joined by ``_`` read as words, in place, unless it is a name in code."""
    for k in [k for k, word in enumerate(words) if "_" in word]:
        m = _SNAKE.fullmatch(words[k])
        if m is not None and (k + 1 == len(words) or words[k + 1][:1] not in _CODE_NEXT):
            words[k] = m.group(1) + m.group(2).replace("_", " ") + m.group(3)


def word_key(stem: str) -> str:
    """The key a pattern's stem is looked up by: ``=word`` for a whole word (and any stem of
    three characters or fewer), else its first four characters."""
    if stem.startswith("=") or len(stem) <= 3:
        return "=" + stem.removeprefix("=")
    return stem[:4]


def normalize(text: str) -> Normalized:
    folded, hidden = fold(text)
    views = _Views()
    views.expand(text, folded, "text", 1)
    return Normalized(tuple(views.views), hidden)


def _signs(folded: str) -> _Signs:
    """The view's distinct words, their keys and the probes' signs, mostly as set operations
    (the request path pays for this on every screened text)."""
    words = set(folded.translate(PUNCTUATION).split())
    keys = {"=" + w for w in words}
    keys |= {w[:4] for w in words if len(w) > 3}
    signs = _Signs(keys)
    if words:
        signs.long = max(map(len, words)) >= 16
        signs.single = len(words & _LETTERS)
        signs.pairs = len(words & _HEX_PAIR)
        mixed = [w for w in words if not w.isalpha() and not w.isdigit()]  # letters and digits
        if len(mixed) >= 2:
            signs.leet = sum(1 for w in mixed if _LEET_WORD.fullmatch(w))
    signs.rot13 = not keys.isdisjoint(_ROT13_KEYS)
    signs.reversed = not keys.isdisjoint(_REVERSED_KEYS)
    return signs


class _Views:
    def __init__(self) -> None:
        self.views: list[View] = []

    def expand(self, raw: str, folded: str, layer: str, depth: int) -> None:
        """Add the view ``folded`` (of ``raw``, as sent) and the views it gives rise to."""
        signs = _signs(folded)
        self.views.append(View(layer, folded, frozenset(signs.keys), join(folded)))
        if not folded.isascii() and _MIXED.search(folded):
            self.add("folded", folded.translate(_HOMOGLYPHS))
        if not raw.isascii():
            tagged = "".join(chr(ord(c) - _TAG_START) for c in raw if _TAG_START + 0x20 <= ord(c) < _TAG_END - 1)
            if tagged:
                self.decoded("tags", tagged, depth)
        if signs.long:
            self.runs("base64", _B64, _b64, raw, depth)
        if signs.long or signs.pairs >= 8:
            self.runs("hex", _HEX, _hex, raw, depth)
        if "%" in raw and len(_PERCENT.findall(raw, 0, 4096)) >= 3:
            self.decoded("url", unquote(raw), depth)
        if "&" in raw and ";" in raw:
            unescaped = html.unescape(raw)
            if unescaped != raw:
                self.decoded("entities", unescaped, depth)
        if "\\u" in raw or "\\x" in raw:
            self.decoded("escapes", _ESCAPE.sub(_unescape, raw), depth)
        if signs.rot13:
            self.add("rot13", codecs.encode(folded, "rot13"))
        if signs.reversed:
            self.add("reversed", folded[::-1])
        if signs.single >= 5:
            spaced = _SPACED.sub(_join_letters, folded)
            if spaced != folded:
                self.add("spaced", spaced)
        if signs.leet >= 2:
            self.add("leet", folded.translate(_LEET))
        if "\n" in folded and _LIST_LINE.search(folded) and (items := _merge_items(folded)) is not None:
            self.add("items", items)

    def add(self, layer: str, folded: str) -> None:
        """A view that is another reading of one already folded (not probed again)."""
        if len(self.views) < MAX_VIEWS:
            self.views.append(View(layer, folded, frozenset(_signs(folded).keys), join(folded)))

    def decoded(self, layer: str, raw: str, depth: int) -> None:
        """A decoded text: folded, and probed in its turn."""
        if len(self.views) >= MAX_VIEWS or not raw:
            return
        folded, _ = fold(raw)
        if any(v.text == folded for v in self.views):
            return
        if depth < MAX_DEPTH:
            self.expand(raw, folded, layer, depth + 1)
        else:
            self.add(layer, folded)

    def runs(
        self, layer: str, finder: re.Pattern[str], decode: Callable[[str], str | None], raw: str, depth: int
    ) -> None:
        """Embedded runs that decode to readable text, as one view."""
        texts = []
        for m in finder.finditer(raw):
            text = decode(m.group())
            if text is not None:
                texts.append(text)
                if len(texts) >= MAX_RUNS:
                    break
        if texts:
            self.decoded(layer, "\n".join(texts), depth)


def _b64(run: str) -> str | None:
    """A run that decodes to readable text, at any of the four alignments: a run glued to the
    characters before it (``%20SWdub…``, ``q=aWdu…``) starts off its own boundary."""
    run = run.rstrip("=")
    if run.isalpha() and (run.islower() or run.isupper()):
        return None  # a long word, not base64 (which mixes cases and digits)
    urlsafe = "-" in run or "_" in run
    for skip in range(4):
        part = run[skip:]
        try:
            data = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            continue
        text = _readable(data)
        if text is not None:
            return text
    return None


def _hex(run: str) -> str | None:
    try:
        data = bytes.fromhex(_HEX_SEP.sub("", run))
    except ValueError:
        return None
    return _readable(data)


def _readable(data: bytes) -> str | None:
    """Decoded bytes that are UTF-8 text a model would read: printable, mostly letters."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < MIN_DECODED:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    letters = sum(1 for c in text if c.isalpha())
    if printable < 0.95 * len(text) or letters < 0.5 * len(text.replace(" ", "")):
        return None
    return text


def _json_unescape(m: re.Match[str]) -> str:
    return _JSON_ESCAPES[m.group()]


def _unescape(m: re.Match[str]) -> str:
    return chr(int(m.group(1) or m.group(2), 16))


def _join_letters(m: re.Match[str]) -> str:
    """``i g n o r e   a l l`` → ``ignore all``; ``v.e.r.g.i.s.s a.l.l.e`` → ``vergiss alle``."""
    run = m.group().replace("\r\n", "\n")
    if _ONE_SEP.search(run):  # dotted or dashed: a single space is a word gap
        return _GAPS.sub(" ", _ONE_SEP.sub("", run))
    return _GAPS.sub(" ", _ONE_SPACE.sub("", run))
