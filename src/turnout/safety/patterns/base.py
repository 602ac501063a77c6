"""The pattern language. A ``Pattern`` is a regular expression over a folded view (lowercase,
Latin accents off: write ``precedentes`` for ``précédentes``), a weight in (0, 1], the family it
is evidence of, and the literal stems it ``needs``: in groups, the view must hold one stem of
each group or the expression is not run at all (a stem written ``=word`` must be a whole word).

``Builder.add`` takes a pattern and by default the stems of its leading alternation as its one
group; ``Builder.phrase`` builds ``verb … object`` patterns from a language's three lists
(verbs, objects, and qualifiers such as ``previous``, ``system``, ``your``): strong with a
qualifier within reach of the verb, weaker without.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

OVERRIDE = "instruction_override"
JAILBREAK = "persona_jailbreak"
EXTRACTION = "prompt_extraction"
EXFILTRATION = "exfiltration"
ROLE = "role_injection"
HIDDEN = "hidden_instructions"
FAMILIES = (OVERRIDE, JAILBREAK, EXTRACTION, EXFILTRATION, ROLE, HIDDEN)

_SPECIAL = set("\\.^$*+?{}[]|()")
_MARKS: dict[int, None] = dict.fromkeys(range(0x0300, 0x0370))

Needs = str | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Pattern:
    family: str
    weight: float
    source: str
    # Literal stems the view must hold, in groups: one stem of every group. Empty: always run.
    needs: tuple[tuple[str, ...], ...]


def fold_source(source: str) -> str:
    """A pattern's non-ASCII letters folded as the text is (never lowercased: ``\\W`` ≠ ``\\w``)."""
    if source.isascii():
        return source
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", source).translate(_MARKS))


def stems(alternatives: str, *, words: bool = False) -> tuple[str, ...] | None:
    """The literal stem of each top-level alternative (``ignor\\w*|olvid`` → ``ignor``,
    ``olvid``); None when one has no usable stem (then the pattern always runs). ``words``: the
    alternation is bounded by ``\\b``, so an alternative without any special character is a
    whole word, ``=word`` (a multi-word alternative gives its first word)."""
    out: list[str] = []
    for part in _top_level(alternatives):
        prefix, literal = "", True
        for ch in part:
            if ch in _SPECIAL:
                literal = False
                if ch in "?*{" and prefix:
                    prefix = prefix[:-1]  # the last character is optional
                break
            prefix += ch
        first = prefix.split()[0] if prefix.split() else ""
        if words and literal and first.isalnum():
            out.append("=" + fold_source(first))
            continue
        prefix = prefix.strip()
        if len(prefix) < (2 if prefix.isascii() else 1):  # one CJK character is a fine stem
            return None
        out.append(fold_source(prefix))
    return tuple(dict.fromkeys(out))


def _top_level(alternatives: str) -> list[str]:
    depth, current, parts = 0, "", []
    for ch in alternatives:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


class Builder:
    """Collects one family module's patterns."""

    def __init__(self) -> None:
        self.patterns: list[Pattern] = []

    def add(self, family: str, weight: float, source: str, *needs: Needs) -> None:
        """One pattern. ``needs``: groups of stems (a stem, a tuple of them, or None for the
        stems of the leading alternation ``(?:a|b)…``, else of the top-level one ``a|b``)."""
        source = fold_source(source)
        groups: list[tuple[str, ...]] = []
        for need in needs or (None,):
            if need is None:
                leading = _leading_alternation(source)
                bounded = (
                    leading is not None and source.startswith("\\b") and _after_leading(source) in ("\\b", "\\s", " ")
                )
                found = stems(leading if leading is not None else source, words=bounded)
                if found is not None:
                    groups.append(found)
            else:
                groups.append(tuple(fold_source(n) for n in ((need,) if isinstance(need, str) else need)))
        self.patterns.append(Pattern(family, weight, source, tuple(groups)))

    def phrase(
        self,
        family: str,
        verbs: str,
        objects: str,
        quals: str | None,
        *,
        strong: float,
        weak: float | None,
        gap: int = 40,
        cjk: bool = False,
        nouns: tuple[str, ...] | None = None,
    ) -> None:
        """``verb … object``: ``strong`` with a qualifier within reach of the verb, else ``weak``.
        Needs: the objects' stems (or ``nouns``), then the verbs'."""
        b = "" if cjk else r"\b"
        stop = r"[^。！？\n]" if cjk else r"[^.!?\n]"
        head = f"{b}(?:{verbs}){b}"
        tail = f"{stop}{{0,{gap}}}?{b}(?:{objects}){b}"
        needs = tuple(g for g in (nouns or stems(objects, words=not cjk), stems(verbs, words=not cjk)) if g)
        if quals is not None:
            self.add(family, strong, f"{head}(?={stop}{{0,{gap + 30}}}?{b}(?:{quals}){b}){tail}", *needs)
        if weak is not None:
            self.add(family, weak, head + tail, *needs)


def _after_leading(source: str) -> str:
    """What follows the leading alternation: ``\\b``, ``\\s``, a space…"""
    body = source.removeprefix("\\b")
    depth = 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                rest = body[i + 1 :]
                return rest[:2] if rest.startswith("\\") else rest[:1]
    return ""


def _leading_alternation(source: str) -> str | None:
    body = source.removeprefix("\\b").removeprefix("(?<![a-z])")
    if not body.startswith("(?:"):
        return None
    depth = 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return body[3:i]
    return None
