"""What the redactor looks for: compiled patterns per kind, with validators where a checksum or
range rule exists.

Sources: AWS key ids, Slack, Stripe, JWT, private keys, basic auth in URLs and the entropy
thresholds follow detect-secrets 1.5.0's plugins; the newer OpenAI, Anthropic, GitHub
fine-grained, Hugging Face, Google and GitLab formats follow the providers' documented
prefixes (as gitleaks' rules do); card, IBAN, SSN and IP rules follow Presidio 2.2's pattern
recognizers (Luhn, mod-97, invalid-range rejection, ``ipaddress``); phone formats are our own.

Speed: a full regex pass over text costs about 10 µs/KB in CPython, so most detectors do not
scan at all. Secrets are found from anchors (``str.find`` of a fixed prefix such as ``AKIA``,
``eyJ`` or ``password``, then one ``match`` there); numbers (cards, SSNs, phones, IPv4) are
looked for only inside the runs of digits and separators that one scan finds. Each detector
takes the text and its lower-cased copy and yields ``(start, end, kind)`` spans of the *value*
only: for ``password=hunter2`` the span covers ``hunter2`` and the key stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from turnout.privacy.redact.validators import IBAN_LENGTHS, card_ok, iban_ok, ipv4_ok, ipv6_ok, shannon_entropy, ssn_ok

Span = tuple[int, int, str]
Detector = Callable[[str, str], Iterator[Span]]

# Kinds, most specific first; the engine keeps the earlier kind when two spans overlap.
KINDS = (
    "PRIVATE_KEY",
    "JWT",
    "API_KEY",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "BEARER_TOKEN",
    "PASSWORD",
    "SECRET",
    "CARD",
    "IBAN",
    "US_SSN",
    "EMAIL",
    "IP_ADDRESS",
    "PHONE",
)
PRIORITY = {kind: i for i, kind in enumerate(KINDS)}


def lowered(text: str) -> str:
    """``text`` in lower case, the same length: the detectors find words in it and read the
    value at the same offset in ``text``. ``str.lower`` writes ``İ`` (Turkish) as two
    characters, and every anchor after one pointed one character short: ``İstanbul
    token=…`` kept its token."""
    lower = text.lower()
    if len(lower) == len(text):
        return lower
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


def _anchors(haystack: str, needles: Iterable[str]) -> Iterator[tuple[int, str]]:
    for needle in needles:
        pos = haystack.find(needle)
        while pos >= 0:
            yield pos, needle
            pos = haystack.find(needle, pos + 1)


def _word_start(text: str, pos: int) -> bool:
    return pos == 0 or not text[pos - 1].isalnum()


# --- secrets --------------------------------------------------------------------------------

# A whole block, from its BEGIN line up to the first END line after it, or (truncated) the header
# and the base64 lines after it. The END line is looked for once per stretch of text, not once per
# BEGIN line: a lazy ``BEGIN[\s\S]*?END`` pattern scanned to the text's end from each of many
# header lines without an END (n² steps: 300 KB of them took 30 s).
_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PEM_TRUNCATED = re.compile(
    r"(?:(?:\s|\\[rn])+(?:[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9+/]{1,15}={1,2}|[\w-]+:[^\n\\]*))*"
)

_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}={0,2}\.eyJ[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]*={0,2}")

_API_KEY = re.compile(
    r"(?<![\w-])(?:"
    r"sk-[A-Za-z0-9_-]{20,}"  # OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-), Anthropic (sk-ant-api03-…)
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}"  # GitHub classic tokens
    r"|github_pat_[A-Za-z0-9_]{22,}"  # GitHub fine-grained tokens
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe secret and restricted keys
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|npm_[A-Za-z0-9]{36}"  # npm
    r"|pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"  # PyPI upload tokens
    r"|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"  # SendGrid
    r"|tk-[A-Za-z0-9_-]{40,}"  # turnout's own issued keys: tk- + token_urlsafe(32)
    r"|ABSK[A-Za-z0-9+/]{40,}={0,2}"  # Amazon Bedrock API keys, long-term (AWS_BEARER_TOKEN_BEDROCK)
    r"|bedrock-api-key-[A-Za-z0-9+/]{40,}={0,2}"  # Amazon Bedrock API keys, short-term
    r"|https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"
    r")(?![\w-])"
)
_API_KEY_PREFIXES = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "AIza", "hf_", "npm_", "pypi-", "SG.", "tk-", "ABSK", "bedrock-api-key-", "https://hooks.slack.com/")  # fmt: skip  # noqa: E501

_AWS_ACCESS_KEY = re.compile(r"(?<![A-Za-z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_AWS_KEY_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "A3T")
_AWS_SECRET_AFTER = re.compile(  # matched where "secret" starts: secret_access_key=, SecretAccessKey:, …
    r"(?i:secret)_?(?i:access)?_?(?i:key)(?:_?id)?[\"']?\s*(?:=|:|=>)\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_BASE64_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")

_TOKEN_VALUE = r"([A-Za-z0-9._~+/-]{16,}=*)"  # noqa: S105 - a pattern, not a secret
_BEARER_AFTER = re.compile(r"\s+" + _TOKEN_VALUE)
_AUTH_AFTER = re.compile(r"[\"']?\s*[:=]\s*[\"']?(?i:(?:basic|token|bot|digest)\s+)?([A-Za-z0-9._~+/-]{12,}=*)")
# user:password@ in a URL; the user may be empty (Redis's own form, redis://:password@host).
_URL_CREDENTIALS = re.compile(r"://[^\s:/@\"'<>]*:([^\s/@\"'<>{}\[\]]+)@[\w.-]")

# Names of keys whose values are secrets; matched at each occurrence of one of these words.
_KEY_WORDS = ("pass", "pwd", "secret", "token", "key", "credential")
# A value is judged by its first 64 characters (each key inside a long run reads its own, and
# hostile text can hold one every four characters); one found to be a secret then runs to its
# real end (``_ValueEnds``): an AWS session token is 400-1200 characters, and its tail was left
# in the text.
VALUE_MAX = 64
_VALUE_CHARS = r"[^\s\"'`,;<>()\[\]{}]"
_VALUE = rf"({_VALUE_CHARS}{{4,{VALUE_MAX}}}+)"
_VALUE_REST = re.compile(_VALUE_CHARS + "*")
_KEY_VALUE_AFTER = re.compile(r"[A-Za-z0-9_.-]{0,24}?[\"']?\s*(?::=|=>|=|:)\s*[\"']?" + _VALUE + r"(?!\()")
_PHRASE_WORDS = ("password", "passwd", "passcode", "passphrase", "pwd", "pw")
_PHRASE_AFTER = re.compile(r"(?i)\s+(?:(?:is|was)\b|=|:)\s*:?\s*[\"']?" + _VALUE)
# ``passwd hunter22x``, ``password Tr0ub4dor&3``: the value right after the word, on the same line.
# Prose says ``the password policy``, ``password reset``, ``password 12-16 characters``: such a
# value must look more like a password than one after ``password:`` (``_bare_password_like``).
_BARE_WORDS = frozenset(("password", "passwd", "passcode", "passphrase", "pwd"))
_STRONG = r"[\d!@#$%^&*+=?~|\\]"  # a digit or a symbol prose does not use; a word has neither
_BARE_AFTER = re.compile(rf"[ \t]+[\"']?(?={_VALUE_CHARS}{{0,{VALUE_MAX}}}?{_STRONG})" + _VALUE)
_STRONG_SYMBOL = re.compile(_STRONG)
_NOT_A_VALUE = frozenset(
    [
        "none",
        "null",
        "nil",
        "true",
        "false",
        "undefined",
        "required",
        "optional",
        "changed",
        "reset",
        "redacted",
        "hidden",
        "secret",
        "password",
        "string",
        "str",
        "int",
        "bool",
        "text",
        "value",
        "example",
        "sample",
        "placeholder",
        "your_password",
        "yourpassword",
        "changeme",
        "incorrect",
        "invalid",
        "wrong",
        "expired",
        "missing",
        "empty",
        "unknown",
        "correct",
        "protected",
        "enabled",
        "disabled",
        "see",
        "below",
        "above",
        "here",
        "there",
        "again",
        "please",
        "forgotten",
        "needed",
        "same",
        "different",
        "updated",
        "strong",
        "weak",
    ]
)
_REFERENCE = re.compile(r"^(?:\$|%|!|os\.|process\.env|env\.|getenv|secrets\.|vault:|arn:|ref\+|\{\{|<|\*{3})|://")


# The value checks run once per anchor on up to ``VALUE_MAX`` characters, and hostile text can hold
# an anchor every four characters (``key:key:…``): each check is one call into C, never a Python
# loop over the value's characters (which took 8 s over 1 MB of it, on the event loop).
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")


def _strip_value(value: str) -> str:
    return value.rstrip(".!?:")


def _password_like(value: str) -> bool:
    """A value after a password key: not a word, a reference or a mask, and shaped like a secret."""
    if len(value) < 4 or value.lower() in _NOT_A_VALUE or _REFERENCE.search(value) or len(set(value)) < 3:
        return False
    has_digit = _DIGIT.search(value) is not None
    has_symbol = not value.isalnum()
    mixed = value.lower() != value and value.upper() != value
    return has_digit or has_symbol or mixed or len(value) >= 12


def _bare_password_like(value: str) -> bool:
    """A value right after a password word with nothing between: letters with a digit or a symbol
    that prose does not use (``hunter22x``, ``S3cret``, ``p@ss!word``), or six digits or more;
    not a path (``pwd /home/u1``), a range or a version (``12-16``, ``v2``)."""
    if value[:1] in "/~." or _STRONG_SYMBOL.search(value) is None:
        return False
    if _LETTER.search(value) is None and not (value.isdigit() and len(value) >= 6):
        return False
    return _password_like(value)


def _secret_like(value: str) -> bool:
    """A value after a token/secret/key name: long, mixed letters and digits, high entropy (detect-secrets'
    hex limit, 3.0 bits/char; values of letters only need 4.0 and 24 characters)."""
    if len(value) < 16 or _REFERENCE.search(value) or value.lower() in _NOT_A_VALUE:
        return False
    has_digit = _DIGIT.search(value) is not None
    has_alpha = _LETTER.search(value) is not None
    entropy = shannon_entropy(value)
    if has_digit and has_alpha:
        return entropy >= 3.0
    return has_alpha and entropy >= 4.0 and len(value) >= 24


def private_keys(text: str, lower: str) -> Iterator[Span]:
    if "PRIVATE KEY" not in text:
        return
    exhausted = False  # no END line after some BEGIN line: none after a later one either
    pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end = None if exhausted else _PEM_END.search(text, begin.end())
        if end is not None:
            stop = end.end()
        else:
            exhausted = True
            truncated = _PEM_TRUNCATED.match(text, begin.end())  # it matches "" at least
            stop = begin.end() if truncated is None else truncated.end()
        yield begin.start(), stop, "PRIVATE_KEY"
        pos = stop


def jwts(text: str, lower: str) -> Iterator[Span]:
    for pos, _ in _anchors(text, ("eyJ",)):
        if m := _JWT.match(text, pos):
            yield m.start(), m.end(), "JWT"


def api_keys(text: str, lower: str) -> Iterator[Span]:
    for pos, _ in _anchors(text, _API_KEY_PREFIXES):
        m = _API_KEY.match(text, pos)
        if m is None:
            continue
        body = m.group()
        # OpenAI/Anthropic keys always mix cases and digits; hyphenated words do not.
        if body.startswith("sk-") and not (any(c.isdigit() for c in body) and any(c.isupper() for c in body)):
            continue
        yield m.start(), m.end(), "API_KEY"


def aws_keys(text: str, lower: str) -> Iterator[Span]:
    found_id = False
    for pos, _ in _anchors(text, _AWS_KEY_PREFIXES):
        if m := _AWS_ACCESS_KEY.match(text, pos):
            found_id = True
            yield m.start(), m.end(), "AWS_ACCESS_KEY"
    for pos, _ in _anchors(lower, ("secret",)):
        if m := _AWS_SECRET_AFTER.match(text, pos):
            yield m.start(1), m.end(1), "AWS_SECRET_KEY"
    if found_id:
        # Next to a key id, a bare 40-character base64 string with both cases and a digit is its secret
        # (git SHAs are lower-case hex and never qualify).
        for m in _BASE64_40.finditer(text):
            v = m.group()
            if v.lower() != v and v.upper() != v and any(c.isdigit() for c in v) and shannon_entropy(v) >= 4.0:
                yield m.start(), m.end(), "AWS_SECRET_KEY"


def bearer_tokens(text: str, lower: str) -> Iterator[Span]:
    for pos, word in _anchors(lower, ("bearer", "authorization")):
        if not _word_start(text, pos):
            continue
        pattern = _BEARER_AFTER if word == "bearer" else _AUTH_AFTER
        m = pattern.match(text, pos + len(word))
        if m and m.group(1).lower() != "bearer":
            yield m.start(1), m.end(1), "BEARER_TOKEN"


class _ValueEnds:
    """Where a value cut at ``VALUE_MAX`` characters ends: the run of value characters from its
    start, read once per run however many anchors lie in it (the search stays linear)."""

    __slots__ = ("end", "start", "stop", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.start = self.end = self.stop = -1

    def __call__(self, m: re.Match[str], value: str) -> int:
        start = m.start(1)
        if len(m.group(1)) < VALUE_MAX:
            return start + len(value)
        if not self.start <= start < self.end:
            self.start, self.end = start, _VALUE_REST.match(self.text, start).end()  # type: ignore[union-attr]
            self.stop = start + len(_strip_value(self.text[start : self.end]))  # once per run, not per anchor
        return max(self.stop, start + len(value))


def key_values(text: str, lower: str) -> Iterator[Span]:
    ends = _ValueEnds(text)
    found_to = 0  # a key inside a value already found is part of it: not read again
    for pos, word in sorted(_anchors(lower, _KEY_WORDS)):  # in the text's order, not word by word
        if pos < found_to or (m := _KEY_VALUE_AFTER.match(text, pos + len(word))) is None:
            continue
        value = _strip_value(m.group(1))
        start = m.start(1)
        kind = "PASSWORD" if word in ("pass", "pwd") else "SECRET"
        if _password_like(value) if kind == "PASSWORD" else _secret_like(value):
            found_to = ends(m, value)
            yield start, found_to, kind
    for pos, _ in _anchors(text, ("://",)):
        m = _URL_CREDENTIALS.match(text, pos)
        if m and not _REFERENCE.search(m.group(1)):
            yield m.start(1), m.end(1), "PASSWORD"


def password_phrases(text: str, lower: str) -> Iterator[Span]:
    ends = _ValueEnds(text)
    for pos, word in _anchors(lower, _PHRASE_WORDS):
        if not _word_start(text, pos):
            continue
        after = pos + len(word)
        if m := _PHRASE_AFTER.match(text, after):
            looks_like = _password_like
        elif word in _BARE_WORDS and (m := _BARE_AFTER.match(text, after)):
            looks_like = _bare_password_like
        else:
            continue
        value = _strip_value(m.group(1))
        if looks_like(value):
            yield m.start(1), ends(m, value), "PASSWORD"


# --- PII ------------------------------------------------------------------------------------

# Addresses are internationalised (RFC 6531, IDNA): ``josé@example.com``, ``jane@bücher.de`` and
# ``jane@example.рф`` are addresses too, so letters and digits of any script count.
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_DOMAIN = re.compile(r"(?:[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?\.)+([^\W\d_]{2,24})(?![\w-])")
_AT_SIGN = re.compile(r"@|%40|&#0*64;|&#[xX]0*40;|&commat;")
# File names such as logo@2x.png look like addresses; these endings are not top-level domains.
_NOT_TLDS = frozenset(["png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tiff", "pdf", "txt", "csv", "json", "yaml", "yml", "toml", "js", "ts", "py", "rb", "go", "rs", "lock", "log", "md", "html", "css", "map", "zip", "gz", "tar"])  # fmt: skip  # noqa: E501

# Runs of digits and the separators numbers are written with; cards, SSNs, phones and IPv4
# addresses are looked for only inside runs long enough to hold one.
# A run goes on across line breaks: a card is copied split over two lines (``4111 1111\n1111 1111``).
_NUMERIC_RUN = re.compile(r"[+(]?\d[\d ().+\r\n-]*")
_CARD = re.compile(r"(?<![\d.,-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d|[ -]\d)")
# A card split over two lines: its groups (3 to 6 digits) on either side of one line break, with
# the spaces, the dash or the carriage return around it (a JSON document's escaped ``\r\n`` reads
# `` \r \n``); one side holds two groups or more, since 13 digits do not fit in two (so a column
# of numbers is passed over in C). 16 digits written unbroken and cut by a line break are not
# read: a column of ids is more common.
_GROUPS = r"(?:\d{3,6}[ -]){%d,4}"
_LINE_BREAK = r"-?[ \r]{0,4}\n[ ]{0,4}"
_CARD_SPLIT = re.compile(
    r"(?<![\d.,-])(?<!\d[ -])(?:"
    + (_GROUPS % 1 + r"\d{3,6}" + _LINE_BREAK + _GROUPS % 0 + r"\d{1,6}")
    + "|"
    + (r"\d{3,6}" + _LINE_BREAK + _GROUPS % 1 + r"\d{1,6}")
    + r")(?![\d-]|[.,]\d|[ -]\d)"
)
# Four groups of four with dots between (``4111.1111.1111.1111``): a dot is a decimal point or a
# version's elsewhere, so only this grouping, Luhn-checked, is read as a card.
_CARD_DOTTED = re.compile(r"(?<![\d.,-])\d{4}(?:\.\d{4}){3}(?![\d-]|[.,]\d)")
_SSN = re.compile(r"(?<![\w.-])\d{3}-\d{2}-\d{4}(?![\w-]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.-])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w-]|[.]\d)")
_PHONE_NANP = re.compile(
    r"(?<![\w.+/-])(?<!\d[ -])(?:1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}(?![\w-]|[.]\d)"
)
_PHONE_NATIONAL = re.compile(r"(?<![\w.+/-])(?<!\d[ -])0[1-9]\d{0,3}(?:[ -]\d{2,6}){1,4}(?![\w-]|[.]\d)")
_NOT_PHONE_CONTEXT = re.compile(r"(?i)(?:order|invoice|ref|reference|tracking|ticket|case|sku|serial|part|model|item|account|acct|id|no\.|#)\W{0,4}$")  # fmt: skip  # noqa: E501
_VERSION_CONTEXT = re.compile(
    r"(?i)\b(?:v|version|ver\.?|release|build|firmware|sdk|python|node|upgrade to|update to)\s*[:=]?\s*$"
)

_PHONE_WORDS = ("phone", "tel", "mobile", "cell", "call", "sms", "text me", "whatsapp", "fax")
_PHONE_AFTER = re.compile(r"(?i)[a-z]{0,9}\W{0,3}(?:(?:me |us )?(?:at|on)\W{0,2})?(?:number\W{0,3})?(?:is\W{0,3})?(\+?\(?\d[\d ().-]{5,18}\d)(?![\w-])")  # fmt: skip  # noqa: E501
_SSN_WORDS = ("ssn", "social security", "ss#")
_SSN_AFTER = re.compile(r"\D{0,16}?(\d{3}[ -]?\d{2}[ -]?\d{4})(?!\d)")

# Any case (``gb82west…`` is written as often as ``GB82WEST…``) and any grouping (in fours, in
# threes, a space anywhere): the country's length and the mod-97 check decide. The match starts
# at the check digits, the country before them looked behind for: a scan that stops at each
# digit, not at each letter, is faster than the upper-case-only pattern was on ordinary text.
_IBAN = re.compile(r"\d(?<=(?<![A-Za-z0-9])[A-Za-z]{2}\d)\d(?: ?[A-Za-z0-9]){8,30}")
_IPV6_GATE = re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[\w.]+)?(?![\w:.]*[\w:])"
)


def _preceded_by(pattern: re.Pattern[str], text: str, pos: int) -> bool:
    return pattern.search(text, max(0, pos - 16), pos) is not None


def _in_local_part(ch: str) -> bool:
    return ch in _EMAIL_LOCAL or (ch > "\x7f" and ch.isalnum())


def _at_signs(text: str) -> Iterator[tuple[int, int]]:
    """Where each ``@`` starts and ends: written plainly, URL-encoded (``%40``, a ``mailto:`` link's
    query, a form body) or as an HTML character reference (``&#64;``, ``&#x40;``, ``&commat;``)."""
    # One character is looked for first (memchr): a longer needle costs ~1 µs per 2 KB each.
    if ("%" in text and "%40" in text) or ("&" in text and ("&#" in text or "&commat;" in text)):
        for m in _AT_SIGN.finditer(text):
            yield m.start(), m.end()
        return
    pos = text.find("@")
    while pos >= 0:
        yield pos, pos + 1
        pos = text.find("@", pos + 1)


def emails(text: str, lower: str) -> Iterator[Span]:
    done = 0
    for pos, after in _at_signs(text):
        if pos <= done:
            continue
        start = pos
        while start > 0 and pos - start < 64 and _in_local_part(text[start - 1]):
            start -= 1
        while start < pos and text[start] in ".%+-_":  # a local part starts with a letter or digit
            start += 1
        m = _EMAIL_DOMAIN.match(text, after)
        if start < pos and m and m.group(1).lower() not in _NOT_TLDS and text[start:pos] != "git":
            yield start, m.end(), "EMAIL"
            done = m.end()


def numbers(text: str, lower: str) -> Iterator[Span]:
    """Cards, dashed SSNs, phone numbers and IPv4 addresses, from the numeric runs of the text."""
    for run in _NUMERIC_RUN.finditer(text):
        start, end = run.span()
        size = end - start
        if size < 7:
            continue
        stop = end + 2  # lookaheads see the two characters after the run
        group = run.group()
        if size >= 13:
            for m in _CARD.finditer(text, start, stop):
                if card_ok(m.group()):
                    yield m.start(), m.end(), "CARD"
            if "\n" in group:
                yield from _split_cards(text, start, stop)
            if group.count(".") >= 3:
                for m in _CARD_DOTTED.finditer(text, start, stop):
                    if card_ok(m.group().replace(".", "")):
                        yield m.start(), m.end(), "CARD"
        if group.count(".") >= 3:
            for m in _IPV4.finditer(text, start, stop):
                if ipv4_ok(m.group()) and not _preceded_by(_VERSION_CONTEXT, text, m.start()):
                    yield m.start(), m.end(), "IP_ADDRESS"
        if size >= 11 and "-" in group:
            for m in _SSN.finditer(text, start, stop):
                if ssn_ok(m.group()) and not _preceded_by(_NOT_PHONE_CONTEXT, text, m.start()):
                    yield m.start(), m.end(), "US_SSN"
        if "+" in group:
            for m in _PHONE_INTL.finditer(text, start, stop):
                if _digit_count(m.group()) in range(8, 16):
                    yield m.start(), m.end(), "PHONE"
        if size >= 10:
            for pattern, fewest in ((_PHONE_NANP, 10), (_PHONE_NATIONAL, 9)):
                for m in pattern.finditer(text, start, stop):
                    if fewest <= _digit_count(m.group()) <= 12 and not _preceded_by(
                        _NOT_PHONE_CONTEXT, text, m.start()
                    ):
                        yield m.start(), m.end(), "PHONE"


def _split_cards(text: str, start: int, stop: int) -> Iterator[Span]:
    """Cards split over two lines in ``text[start:stop]``. A candidate that is none is read again
    from its next character: ``2024\n4111 1111\n1111 1111`` first reads ``2024\n4111 1111``."""
    m = _CARD_SPLIT.search(text, start, stop)
    while m is not None:
        if card_ok(m.group()):
            yield m.start(), m.end(), "CARD"
            m = _CARD_SPLIT.search(text, m.end(), stop)
        else:
            m = _CARD_SPLIT.search(text, m.start() + 1, stop)


def _digit_count(s: str) -> int:
    return sum(c.isdigit() for c in s)


def context_numbers(text: str, lower: str) -> Iterator[Span]:
    """Numbers that only their context identifies: ``phone: 5550132``, ``SSN 123456789``."""
    for pos, word in _anchors(lower, _PHONE_WORDS):
        m = _PHONE_AFTER.match(text, pos + len(word)) if _word_start(text, pos) else None
        if m and 7 <= _digit_count(m.group(1)) <= 15:
            yield m.start(1), m.end(1), "PHONE"
    for pos, word in _anchors(lower, _SSN_WORDS):
        if _word_start(text, pos) and (m := _SSN_AFTER.match(text, pos + len(word))) and ssn_ok(m.group(1)):
            yield m.start(1), m.end(1), "US_SSN"


def ibans(text: str, lower: str) -> Iterator[Span]:
    m = _IBAN.search(text)
    while m is not None:
        start = m.start() - 2
        candidate = text[start : m.end()]
        expected = IBAN_LENGTHS.get(candidate[:2].upper())
        # Trim a greedy match back to the country's length (the next words may look like groups).
        end, kept = start, 0
        for ch in candidate if expected else ():
            if kept == expected:
                break
            end += 1
            kept += ch != " "
        if kept == expected and not text[end : end + 1].isalnum() and iban_ok(text[start:end]):
            yield start, end, "IBAN"
            m = _IBAN.search(text, end)
        else:  # what it read on may hold an IBAN: "ref AB12 to GB82 WEST…"
            m = _IBAN.search(text, m.start() + 1)


def ipv6_addresses(text: str, lower: str) -> Iterator[Span]:
    if "::" in text or _IPV6_GATE.search(text):
        for m in _IPV6.finditer(text):
            if ipv6_ok(m.group()):
                yield m.start(), m.end(), "IP_ADDRESS"


DETECTORS: tuple[Detector, ...] = (
    private_keys,
    jwts,
    api_keys,
    aws_keys,
    bearer_tokens,
    key_values,
    password_phrases,
    emails,
    numbers,
    context_numbers,
    ibans,
    ipv6_addresses,
)
