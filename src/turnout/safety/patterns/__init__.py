"""The screener's pattern families, as data (``base`` holds the pattern language).

Families, one module each, one reason code each::

    instruction_override   ignore / forget / override the instructions, rules, prompt
    persona_jailbreak      DAN, developer mode, "no restrictions", unrestricted personas
    prompt_extraction      reveal / repeat the system prompt or what came before
    exfiltration           send data (the chat, secrets, the user's data) to a URL or an address
    role_injection         fake system turns, chat-template tokens, instruction delimiters
    hidden_instructions    text that addresses an AI reading a document or a tool's output

Languages: English, Spanish, French, German, Italian, Portuguese, Russian, Chinese (simplified
and traditional), with Japanese and Korean for the commonest forms.
"""

from __future__ import annotations

from turnout.safety.patterns import exfiltration, extraction, hidden, jailbreak, override, role
from turnout.safety.patterns.base import (
    EXFILTRATION,
    EXTRACTION,
    FAMILIES,
    HIDDEN,
    JAILBREAK,
    OVERRIDE,
    ROLE,
    Pattern,
)

PATTERNS: tuple[Pattern, ...] = (
    *override.PATTERNS,
    *jailbreak.PATTERNS,
    *extraction.PATTERNS,
    *exfiltration.PATTERNS,
    *role.PATTERNS,
    *hidden.PATTERNS,
)

__all__ = ["EXFILTRATION", "EXTRACTION", "FAMILIES", "HIDDEN", "JAILBREAK", "OVERRIDE", "PATTERNS", "ROLE", "Pattern"]
