"""Cached answers at rest in a shared backend: AES-256-GCM, the key derived from
``cache.encryption_key`` (HKDF-SHA256), a random 96-bit nonce per value, and the entry's own
backend key as associated data (a value copied under another key does not open).

    sealed = b"\x01" + nonce (12 bytes) + ciphertext and tag

The same secret also keys the request digests (``turnout.cache.key``), under another HKDF label.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"
NONCE = 12


class Unsealable(Exception):
    """The value was sealed under another key, or altered."""


def derive(secret: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"turnout-cache:" + label).derive(secret.encode())


class Sealer:
    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive(secret, b"seal"))

    def seal(self, plain: bytes, where: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return VERSION + nonce + self._aead.encrypt(nonce, plain, where)

    def open(self, sealed: bytes, where: bytes) -> bytes:
        if sealed[:1] != VERSION or len(sealed) < 1 + NONCE + 16:
            raise Unsealable("not a sealed cache value")
        try:
            return self._aead.decrypt(sealed[1 : 1 + NONCE], sealed[1 + NONCE :], where)
        except InvalidTag as exc:
            raise Unsealable("the value does not open under this key") from exc
