"""Precision, recall and cost of ``turnout.privacy.redact`` on the labelled set.

    python bench/redaction.py               # score tests/data/redaction_labelled.jsonl, time it
    python bench/redaction.py --write-set   # regenerate the labelled set (fixed seed)
    python bench/redaction.py --misses      # also list each false positive and false negative

Scoring is span-level, matched by overlap within a kind (see ``turnout.privacy.redact.scoring``).
Cost is µs per KB of input, best of several repeats of one pass, on (a) a ~20 KB mix of the
labelled texts (findings every few lines) and (b) ~20 KB of clean prose and logs with nothing
to find. One run; for steadier figures pin a core: ``taskset -c 0 python bench/redaction.py``.

The labelled set is generated from templates with ``random.Random(SEED)`` so that every
value is fresh but reproducible; each row carries its spans and, for review, their values.
Positives of every kind sit in support chats, logs, code, config files and e-mails; hard
negatives (order numbers, dates, versions, UUIDs, SHAs, tracking numbers, non-Luhn numbers,
invalid IBANs and SSNs, product codes, base64 images, "password reset", localhost, file names
with @) sit next to them or alone.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from turnout.privacy.redact import Redactor  # noqa: E402
from turnout.privacy.redact.scoring import score  # noqa: E402

SET_PATH = ROOT / "tests" / "data" / "redaction_labelled.jsonl"
SEED = 20261128

# ---- value generators -----------------------------------------------------------------------

FIRST = [
    "alice",
    "bob",
    "carol",
    "dmitri",
    "eve",
    "fatima",
    "gustavo",
    "hana",
    "ivan",
    "jun",
    "kofi",
    "lena",
    "maria",
    "nils",
    "olga",
    "priya",
    "quentin",
    "rosa",
    "sven",
    "tariq",
]
LAST = [
    "smith",
    "garcia",
    "müller",
    "okafor",
    "tanaka",
    "nguyen",
    "kowalski",
    "rossi",
    "dubois",
    "haddad",
    "larsen",
    "silva",
    "chen",
    "patel",
]
DOMAINS = [
    "gmail.com",
    "outlook.com",
    "example.com",
    "acme.co.uk",
    "mail.example.org",
    "northwind.io",
    "contoso.com",
    "uni-heidelberg.de",
    "yahoo.fr",
    "fastmail.fm",
]
B64 = string.ascii_letters + string.digits + "+/"
URLSAFE = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits


def _s(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = sum(
            (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d for i, d in enumerate(int(c) for c in reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST).replace("ü", "u")
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}", f"{first}+billing", first]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random) -> str:
    def d(n: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(n))

    area, exch = f"{rng.randint(2, 9)}{d(2)}", f"{rng.randint(2, 9)}{d(2)}"
    return rng.choice(
        [
            f"({area}) {exch}-{d(4)}",
            f"{area}-{exch}-{d(4)}",
            f"{area}.{exch}.{d(4)}",
            f"+1 {area} {exch} {d(4)}",
            f"+1-{area}-{exch}-{d(4)}",
            f"+1{area}{exch}{d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            f"+44 7700 {d(6)}",
            f"020 {d(4)} {d(4)}",
            f"07700 {d(6)}",
            f"+33 {rng.randint(1, 7)} {d(2)} {d(2)} {d(2)} {d(2)}",
            f"0{rng.randint(1, 7)} {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+49 30 {d(8)}",
            f"030 {d(4)} {d(4)}",
            f"+91 {rng.randint(7, 9)}{d(4)} {d(5)}",
            f"+61 4{d(2)} {d(3)} {d(3)}",
        ]
    )


def card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "amex", "disc", "mc2"])
    if kind == "amex":
        n = _luhn_complete(rng, rng.choice(["34", "37"]), 15)
        groups = [n[:4], n[4:10], n[10:]]
    else:
        prefix = {"visa": "4", "mc": f"5{rng.randint(1, 5)}", "disc": "6011", "mc2": "2221"}[kind]
        n = _luhn_complete(rng, prefix, 16)
        groups = [n[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ".join(groups), "-".join(groups), n])


def _iban_check(country: str, bban: str) -> str:
    number = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{98 - int(number) % 97:02d}"


IBAN_BBAN = {"DE": 18, "FR": 23, "ES": 20, "NL": 14, "IT": 23, "BE": 12, "CH": 17, "AT": 16, "PL": 24}


def iban(rng: random.Random, grouped: bool | None = None) -> str:
    country = rng.choice([*IBAN_BBAN, "GB", "NL"])
    if country == "GB":
        bban = rng.choice(["NWBK", "BARC", "HBUK"]) + "".join(rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        bban = rng.choice(["ABNA", "INGB", "RABO"]) + "".join(rng.choice(string.digits) for _ in range(10))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(IBAN_BBAN[country]))
    compact = country + _iban_check(country, bban) + bban
    if grouped if grouped is not None else rng.random() < 0.5:
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact


def ipv4(rng: random.Random) -> str:
    first = rng.choice([10, 172, 192, 203, 81, 52, 34, 185, 91, 8])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6(rng: random.Random) -> str:
    def g() -> str:
        return f"{rng.randint(1, 0xFFFF):x}"

    return rng.choice(
        [
            f"2001:db8:{g()}:{g()}::{g()}",
            f"2a00:1450:4001:{g()}::200e",
            f"fe80::{g()}:{g()}:{g()}:{g()}",
            ":".join(g() for _ in range(8)),
        ]
    )


def ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def aws_id(rng: random.Random) -> str:
    return rng.choice(["AKIA", "ASIA"]) + _s(rng, string.ascii_uppercase + string.digits, 16)


def aws_secret(rng: random.Random) -> str:
    while True:
        v = _s(rng, B64, 40)
        if any(c.isdigit() for c in v) and v.lower() != v and v.upper() != v:
            return v


def pem(rng: random.Random, escaped: bool = False) -> str:
    label = rng.choice(
        ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"]
    )
    lines = [_s(rng, B64, 64) for _ in range(rng.randint(3, 8))] + [_s(rng, B64, rng.randint(8, 40)) + "=="]
    nl = "\\n" if escaped else "\n"
    return f"-----BEGIN {label}-----{nl}" + nl.join(lines) + f"{nl}-----END {label}-----"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"}).encode())
    claims = {
        "sub": str(rng.randint(10**5, 10**9)),
        "iat": 1_700_000_000 + rng.randint(0, 10**7),
        "role": rng.choice(["user", "admin"]),
    }
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(rng.randbytes(32))}"


def bearer(rng: random.Random) -> str:
    return _s(rng, URLSAFE + ".", rng.randint(24, 64))


def api_key(rng: random.Random) -> str:
    makers: list[Callable[[], str]] = [
        lambda: "sk-" + _s(rng, ALNUM, 48),
        lambda: "sk-proj-" + _s(rng, URLSAFE, 120),
        lambda: "sk-ant-api03-" + _s(rng, URLSAFE, 93) + "AA",
        lambda: "ghp_" + _s(rng, ALNUM, 36),
        lambda: "github_pat_11" + _s(rng, ALNUM, 20) + "_" + _s(rng, ALNUM, 59),
        lambda: "xoxb-" + "".join(rng.choice(string.digits) for _ in range(12)) + "-" + _s(rng, ALNUM, 24),
        lambda: "sk_live_" + _s(rng, ALNUM, 24),
        lambda: "rk_live_" + _s(rng, ALNUM, 24),
        lambda: "AIza" + _s(rng, URLSAFE, 35),
        lambda: "hf_" + _s(rng, ALNUM, 34),
        lambda: "tk-" + _s(rng, URLSAFE, 43),
        lambda: "glpat-" + _s(rng, URLSAFE, 20),
    ]
    return rng.choice(makers)()


def secret_value(rng: random.Random) -> str:
    makers: list[Callable[[], str]] = [
        lambda: _s(rng, "0123456789abcdef", 32),
        lambda: _s(rng, ALNUM, 28),
        lambda: _s(rng, URLSAFE, 40),
    ]
    return rng.choice(makers)()


PASSWORDS = [
    "hunter2",
    "Tr0ub4dor&3",
    "S3cr3t!pass",
    "P@ssw0rd2024",
    "letmein99",
    "Winter2025!",
    "qwerty#7788",
    "correcthorsebatterystaple",
    "n0t-a-g00d-1dea",
    "Mango!Tango42",
]


def password(rng: random.Random) -> str:
    return rng.choice(PASSWORDS)


GEN: dict[str, Callable[[random.Random], str]] = {
    "EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban, "IPV4": ipv4, "IPV6": ipv6, "US_SSN": ssn,
    "AWS_ACCESS_KEY": aws_id, "AWS_SECRET_KEY": aws_secret, "PRIVATE_KEY": pem, "JWT": jwt, "BEARER_TOKEN": bearer,
    "API_KEY": api_key, "SECRET": secret_value, "PASSWORD": password,
}  # fmt: skip
KIND_OF = {"IPV4": "IP_ADDRESS", "IPV6": "IP_ADDRESS"}

# ---- templates: {KIND} slots are positives; everything else in the text must stay -------------

POSITIVE_TEMPLATES = [
    # support chats
    "Hi, I can't log in. My account email is {EMAIL} and I've tried resetting twice.",
    "customer: please call me back on {PHONE}, I'm free after 3pm",
    "Agent: Could you confirm the card on file? Customer: sure, it's {CARD}, expires 09/27.",
    "Please send the refund to my IBAN {IBAN} (account holder: the same as on the invoice).",
    "My SSN is {US_SSN}, do you need anything else for the tax form?",
    "I accidentally pasted my key in the last message: {API_KEY} — can you delete it?",
    "The login still fails with password: {PASSWORD}",
    "my password is {PASSWORD} but it says invalid",
    "You can reach me at {EMAIL} or {PHONE}.",
    "Contact: {EMAIL} / tel: {PHONE}",
    "Customer #48213 (ticket 2024-0917) wrote from {EMAIL}: 'charge me on {CARD} instead'",
    "I'm travelling, text me at {PHONE} if the order ships before 12/05.",
    "we got blocked, our egress IP is {IPV4}, can you whitelist it?",
    "Hello team, forwarding from {EMAIL}. Phone {PHONE}. Thanks!",
    # logs
    "2024-11-02T10:22:31Z INFO login ok user={EMAIL} ip={IPV4} latency_ms=182",
    "2024-11-02 10:22:31,044 WARNING auth failed for {EMAIL} from {IPV4} (attempt 3 of 5)",
    "[error] 31337#0: *912 connect() failed while connecting to upstream, client: {IPV4}, server: api.example.com",
    "GET /v1/chat/completions 401 — header Authorization: Bearer {BEARER_TOKEN} rejected",
    "DEBUG outgoing request headers={{'Authorization': 'Bearer {BEARER_TOKEN}', 'Content-Type': 'application/json'}}",
    "sshd[2212]: Accepted publickey for deploy from {IPV6} port 52144 ssh2",
    "client {IPV6} closed connection after 30.2s",
    "payment declined card={CARD} reason=insufficient_funds order=ORD-2024-118734",
    "session cookie: token={JWT}",
    "jwt decode failed: {JWT} (expired at 2024-03-15T10:00:00Z)",
    "kyc check passed ssn={US_SSN} dob=1987-04-12",
    # code
    'client = OpenAI(api_key="{API_KEY}")',
    "OPENAI_API_KEY={API_KEY}",
    'headers = {{"Authorization": f"Bearer {BEARER_TOKEN}"}}  # TODO move to env',
    "aws_access_key_id = {AWS_ACCESS_KEY}\naws_secret_access_key = {AWS_SECRET_KEY}",
    "export AWS_ACCESS_KEY_ID={AWS_ACCESS_KEY}\nexport AWS_SECRET_ACCESS_KEY={AWS_SECRET_KEY}\nexport AWS_REGION=eu-west-1",  # noqa: E501
    's3 = boto3.client("s3", aws_access_key_id="{AWS_ACCESS_KEY}", aws_secret_access_key="{AWS_SECRET_KEY}")',
    'DATABASE_URL = "postgres://app:{PASSWORD}@db.internal:5432/orders"',
    'conn = psycopg.connect(host="{IPV4=10.0.0.5}", user="app", password="{PASSWORD}")',
    "const stripe = require('stripe')('{API_KEY}');",
    "key = '''{PRIVATE_KEY}'''",
    'STRIPE_WEBHOOK_SECRET = "whsec_{SECRET}"',
    'client_secret: "{SECRET}"',
    # config files
    "[default]\naws_access_key_id={AWS_ACCESS_KEY}\naws_secret_access_key={AWS_SECRET_KEY}",
    "database:\n  host: db.internal\n  port: 5432\n  user: app\n  password: {PASSWORD}\n",
    "SECRET_KEY={SECRET}\nDEBUG=false\nALLOWED_HOSTS=api.example.com",
    '{{"type": "service_account", "private_key": "{PRIVATE_KEY_ESC}", "client_email": "{EMAIL}"}}',
    "github:\n  token: {API_KEY}\n  org: northwind",
    "api_token = {SECRET}",
    "auth_token: {SECRET}",
    "HF_TOKEN={API_KEY}",
    "listen: 0.0.0.0:8080\nupstream: {IPV4}:9000\nadmin_email: {EMAIL}",
    "{PRIVATE_KEY}",
    # e-mails
    "From: {EMAIL}\nTo: {EMAIL=support@northwind.io}\nSubject: Re: invoice 2024-0311\n\nHi, please update the IBAN to {IBAN}. Regards",  # noqa: E501
    "Dear support,\nmy new number is {PHONE} and my card ending was replaced; the new one is {CARD}.\nBest, Hana",
    "Please wire the deposit to {IBAN}, reference INV-20931.",
    "Mobile: {PHONE}\nWork: {PHONE}",
    "Social security number: {US_SSN}",
    "Hi, the VPN gateway is {IPV4} and the backup is {IPV6}.",
    "Kontakt: {EMAIL}, Tel. {PHONE}",
    "curl -H 'Authorization: Token {BEARER_TOKEN}' https://api.example.com/v1/models",
    "inet6 {IPV6}/64 scope global, inet {IPV4}/24 brd {IPV4=10.0.0.255}",
    "customer says: card number is {CARD} and the CVV is on the back",
]

NEGATIVE_TEXTS = [
    "Order #4829103 shipped on 2024-03-15, tracking 1Z999AA10123456784.",
    "Your order ORD-2024-118734 will arrive between 10:00 and 14:00.",
    "Invoice INV-2024-00917 is due 15/03/2024; amount $1,299.00.",
    "Please use the 'Forgot password?' link to start a password reset.",
    "The password must contain at least 12 characters, one digit and one symbol.",
    "Password: (leave blank to keep the current one)",
    "password: ********",
    "password=${DB_PASSWORD}",
    "password: <redacted>",
    "DB_PASSWORD: !vault |",
    "Your password was changed. If this wasn't you, reset it now.",
    "token: null",
    "api_key: YOUR_API_KEY",
    'api_key = os.environ["OPENAI_API_KEY"]',
    "max_tokens=4096, temperature=0.7, top_p=0.95",
    "usage: prompt_tokens: 1532, completion_tokens: 219, total_tokens: 1751",
    "secret_name: prod/db-credentials",
    "Upgraded to v2.10.4 and then to version 1.2.3.4, still broken on Python 3.11.7.",
    "Release 4.3.2.1 fixes the crash; build 10.0.19045.3803 of Windows is affected.",
    "Chrome/120.0.6099.109 Safari/537.36",
    "server listening on http://localhost:8000 and 127.0.0.1:8001, bind 0.0.0.0:9000, ::1 port 8002",
    "request_id=550e8400-e29b-41d4-a716-446655440000 trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 (HEAD -> main), parent 3f2a1c9",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "ISBN 978-0-306-40615-7, printed 2019.",
    "Product code XR-415-555-01 and part no. 020-7946-0958 are out of stock.",
    "SKU 555-0199-22 / model 4000-1234",
    "The number 4111 1111 1111 1112 fails the Luhn check.",
    "Reference 1234 5678 9012 3456 is not a card.",
    "IBAN DE89 3704 0044 0532 0130 01 has a wrong check digit.",
    "Account GB82 WEST 1234 5698 7654 is too short to be an IBAN.",
    "SSNs never start with 000, 666 or 9: 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000.",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "see logo@2x.png and icon@3x.webp for retina screens",
    "git clone git@github.com:northwind/turnout.git",
    "ping @maria and @dev-team about the @app.route decorator",
    "mail to root@localhost bounced",
    "MAC 00:1A:2B:3C:4D:5E on vlan 12, uptime 12:30:45",
    "Coordinates 51.5074, -0.1278; pi is 3.14159; 1,234,567.89 EUR",
    "Use sk-learn? No: scikit-learn. Also risk-free, task-management, desk-1234.",
    "print(a[1::2], b[::3])",
    "The meeting is on 2024-03-15 at 10:30, room 3.14, call-in code 4471.",
    "Set the Authorization header to your token (see docs).",
    "Bearer tokens expire after 3600 seconds.",
    "version: 1.0.0-rc.1\nimage: ghcr.io/northwind/turnout:1.4.2",
    "Temperatures: 36.6, 37.2, 38.1; pressure 120/80",
    "Timestamp 1700000000123 and epoch 1699999999",
    "Ticket #20240315-0042 escalated to tier 2.",
    "Phone numbers are validated with libphonenumber; call the support line from the app.",
    "The password reset email was sent to the address on file.",
    "Flight LH 4012, seat 23C, booking ref XK4T9Q, gate B44.",
    "Routing: 10 20 30 40 50 60 70 80 90",
    "Your verification code is 482913.",
    "tokenizer: cl100k_base, token_limit: 8192",
    "passwords = load_wordlist('rockyou.txt')",
    "AWS region eu-west-1, account 123456789012, role arn:aws:iam::123456789012:role/deploy",
    "USPS tracking 9400 1000 0000 0000 0000 00",
    "FedEx 7489 2034 1023",
    "Call the function at line 415-555 of main.py",
]

NEGATIVE_MIXED = [  # a positive next to a hard negative
    "Order #4829103 for {EMAIL} shipped 2024-03-15.",
    "v1.2.3.4 deployed; prod host {IPV4}",
    "Tracking 1Z999AA10123456784, customer phone {PHONE}",
    "request_id=550e8400-e29b-41d4-a716-446655440000 user={EMAIL}",
    "Card {CARD} charged; order ORD-2024-118734; invoice 15/03/2024",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 leaked {API_KEY}, rotate it",
    "Password reset requested by {EMAIL} from {IPV4}",
    "Build 10.0.19045.3803, client {IPV4}, SSN on file {US_SSN}",
]


def _fill(template: str, rng: random.Random) -> dict[str, Any]:
    """Replace each {KIND} slot with a fresh value, recording its span in the final text."""
    text, pos = "", 0
    spans: list[dict[str, Any]] = []
    template = template.replace("{{", "\x00").replace("}}", "\x01")
    while True:
        i = template.find("{", pos)
        if i < 0:
            text += template[pos:]
            break
        j = template.index("}", i)
        text += template[pos:i]
        slot = template[i + 1 : j]
        if "=" in slot:  # {KIND=literal}: a fixed value, still a positive
            kind, value = slot.split("=", 1)
            kind = KIND_OF.get(kind, kind)
        elif slot == "PRIVATE_KEY_ESC":
            value, kind = pem(rng, escaped=True), "PRIVATE_KEY"
        else:
            value, kind = GEN[slot](rng), KIND_OF.get(slot, slot)
        spans.append({"kind": kind, "start": len(text), "end": len(text) + len(value), "value": value})
        text += value
        pos = j + 1
    text = text.replace("\x00", "{").replace("\x01", "}")
    # a value repeated elsewhere in the text is replaced there too: label every occurrence
    for span in list(spans):
        start = text.find(span["value"])
        while start >= 0:
            if not any(s["start"] < start + len(span["value"]) and start < s["end"] for s in spans):
                spans.append({**span, "start": start, "end": start + len(span["value"])})
            start = text.find(span["value"], start + 1)
    spans.sort(key=lambda s: s["start"])
    return {"text": text, "spans": spans}


def build_labelled(seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for rep in range(4):
        for n, template in enumerate(POSITIVE_TEMPLATES):
            rows.append({"id": f"pos-{n:02d}-{rep}", **_fill(template, rng)})
    for rep in range(2):
        for n, template in enumerate(NEGATIVE_MIXED):
            rows.append({"id": f"mix-{n:02d}-{rep}", **_fill(template, rng)})
    for n, text in enumerate(NEGATIVE_TEXTS):
        rows.append({"id": f"neg-{n:02d}", "text": text, "spans": []})
    return rows


def load_labelled(path: Path = SET_PATH) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- cost -----------------------------------------------------------------------------------


def _us_per_kb(redactor: Redactor, text: str, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        redactor.redact(text)
        best = min(best, time.perf_counter() - t0)
    return best * 1e6 / (len(text.encode()) / 1024)


def _corpus(rows: list[dict[str, Any]], size: int = 20_000) -> tuple[str, str]:
    mixed: list[str] = []
    clean: list[str] = []
    clean_lines = [r["text"] for r in rows if not r["spans"]] + [
        "The gateway routes each request to the cheapest healthy target that satisfies the policy.",
        "INFO uvicorn.access 200 POST /v1/chat/completions 182 ms tenant=acme task=summarise",
        "def route(request, candidates, state):\n    return sorted(candidates, key=lambda c: c.cost)",
        "Thanks for the quick answer! The summary looks good, can you make it shorter and in French?",
    ]
    rng = random.Random(1)
    while sum(map(len, mixed)) < size:
        mixed.append(rng.choice(rows)["text"])
    while sum(map(len, clean)) < size:
        clean.append(rng.choice(clean_lines))
    return "\n".join(mixed), "\n".join(clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-set", action="store_true", help="regenerate the labelled set and exit")
    parser.add_argument("--misses", action="store_true", help="list false positives and negatives")
    args = parser.parse_args()
    if args.write_set:
        rows = build_labelled()
        SET_PATH.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {SET_PATH.relative_to(ROOT)}")
        return
    rows = load_labelled()
    redactor = Redactor(b"bench-key-0123456789abcdef")
    result = score(redactor, rows)
    print(
        f"labelled set: {len(rows)} texts, {sum(len(r['spans']) for r in rows)} expected spans; matching: overlap, same kind"  # noqa: E501
    )
    print(f"{'kind':<16}{'tp':>5}{'fp':>5}{'fn':>5}{'precision':>11}{'recall':>8}{'f1':>7}")
    for kind, t in sorted(result.by_kind.items()):
        print(f"{kind:<16}{t.tp:>5}{t.fp:>5}{t.fn:>5}{t.precision:>11.3f}{t.recall:>8.3f}{t.f1:>7.3f}")
    t = result.overall
    print(f"{'overall':<16}{t.tp:>5}{t.fp:>5}{t.fn:>5}{t.precision:>11.3f}{t.recall:>8.3f}{t.f1:>7.3f}")
    if args.misses:
        by_id = {r["id"]: r for r in rows}
        for row_id, outcome, kind in result.misses:
            print(f"  {outcome} {kind:<14} {row_id}: {by_id[row_id]['text'][:150]!r}")
    mixed, clean = _corpus(rows)
    print(f"cost: mixed {len(mixed) / 1024:.1f} KB {_us_per_kb(redactor, mixed):.0f} µs/KB; "
          f"clean {len(clean) / 1024:.1f} KB {_us_per_kb(redactor, clean):.0f} µs/KB")  # fmt: skip


if __name__ == "__main__":
    main()
