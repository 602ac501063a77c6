"""Checksums and range checks that turn a regex candidate into a finding.

Each function takes the candidate exactly as matched (separators included) and answers yes or
no; none raises. They are public so that tests and callers can check values directly.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

# Lengths per country from the SWIFT IBAN registry (release 98, 2024), the same table
# python-stdnum and Presidio's IbanRecognizer use.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# Publicised SSNs that were never issued to their holders (Woolworth's wallet card, a 1940s ad).
_SSN_PUBLICISED = frozenset({"078051120", "219099999"})


_NOT_A_DIGIT = re.compile(r"[^0-9]+")
_DOUBLED = str.maketrans("0123456789", "0246813579")  # each digit doubled, its two digits summed


def digits_of(text: str) -> str:
    return _NOT_A_DIGIT.sub("", text)


def luhn_ok(candidate: str) -> bool:
    """The Luhn (mod 10) checksum over the digits of ``candidate``; 13 to 19 digits."""
    digits = digits_of(candidate)
    if not 13 <= len(digits) <= 19:
        return False
    kept, doubled = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    return (sum(map(int, kept)) + sum(map(int, doubled))) % 10 == 0


def card_ok(candidate: str) -> bool:
    """A payment card number: Luhn-valid, 13 to 19 digits, starting with an issuer digit (2 to 6:
    Mastercard 2-series, Amex/Diners/JCB 3, Visa 4, Mastercard/Maestro 5, Discover/UnionPay 6),
    and when grouped, grouped the way cards are printed (groups of 4, or Amex's 4-6-5); a line
    break is read as a group's end."""
    digits = digits_of(candidate)
    if not digits or digits[0] not in "23456" or len(set(digits)) == 1:
        return False
    groups = candidate.replace("-", " ").replace("\r", " ").replace("\n", " ").split(" ")
    groups = [g for g in groups if g]
    if len(groups) > 1 and any(not 3 <= len(g) <= 6 for g in groups[:-1]):
        return False
    return luhn_ok(digits)


def iban_ok(candidate: str) -> bool:
    """ISO 13616: the country's registered length and the ISO 7064 mod-97 check equal to 1."""
    compact = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def ssn_ok(candidate: str) -> bool:
    """US SSN ranges the SSA never issues: area 000, 666 or 900-999, group 00, serial 0000."""
    digits = digits_of(candidate)
    if len(digits) != 9 or digits in _SSN_PUBLICISED:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def ipv4_ok(candidate: str) -> bool:
    """A dotted quad with octets 0-255, no leading zeros, not unspecified (0.x) or loopback (127.x)."""
    parts = candidate.split(".")
    if len(parts) != 4 or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") or int(p) > 255 for p in parts):
        return False
    return parts[0] not in ("0", "127")


def ipv6_ok(candidate: str) -> bool:
    """A valid IPv6 address, not unspecified or loopback, with at least five hex digits (so that
    slices like ``a[1::2]`` and short labels are not taken for addresses)."""
    if sum(ch not in ":.%" for ch in candidate.split("%", 1)[0]) < 5:
        return False
    try:
        addr = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return not (addr.is_unspecified or addr.is_loopback)


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character distribution (detect-secrets' measure)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())
