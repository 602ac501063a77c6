"""Token counts the gateway can vouch for without the upstream's word: a bound on a prompt
before the call (budget reservations, TPM), and on an answer whose usage never came (a stream
the client left, an upstream that reports none).

**Texts** are counted as their UTF-8 bytes. A byte-level BPE tokenizer (GPT-2's, every tiktoken
encoding, Llama 3, Qwen, DeepSeek, Mistral's Tekken, gpt-oss) covers at least one byte with each
token, and SentencePiece with byte fallback (Llama 2, Gemma) at least one character, so the
bytes bound the tokens of any text: tight for text that tokenizes byte by byte, about 3× for
Chinese or Japanese (3 bytes a character, 1 to 2 characters a token), about 4× for English. A
target with ``tokenizer: path/to/tokenizer.json`` (the Hugging Face ``tokenizers`` file shipped
with the model's weights; ``pip install 'turnout[tokenizers]'``) has its texts counted by that
tokenizer instead: exact for the text, so reservations are that much tighter.

**Around the texts**, whichever way they are counted:

* ``TOKENS_PER_REQUEST`` for the request: begin-of-text, the assistant's turn header, and the
  system prompt some chat templates add of their own (SmolLM2's: a request of "hi" is 31
  tokens; Llama 3.1's dates; gpt-oss's harmony header, about 55 with the rest).
  ``TOKENS_PER_MESSAGE`` for each message (role, delimiters: 4 to 6 in those templates, up to
  9 for a tool result). Every other field of a message is counted, not only its content: the
  name, tool calls and their ids, as their JSON.
* An embeddings body's ``input``: each text, plus ``TOKENS_PER_INPUT`` for the special tokens
  an encoder adds to each.
* **Tools** (``tools``, ``functions``) as their JSON plus ``TOKENS_FOR_TOOLS`` (the preamble a
  template wraps them in); ``tool_choice`` and ``response_format`` as their JSON.
* **Images**: ``IMAGE_TOKENS`` per image part, whatever its size or detail. That bounds
  OpenAI's GPT-4o family at high detail (at most 8 tiles: 1,445), Claude (about 1,600 at its
  1.15-megapixel limit), Llama 4 and Nova; models that bill an image as more tokens (GPT-4o
  mini's 33×; Qwen2-VL at its default 12.8-megapixel bound, up to 16,384) pass it.
* **Other parts** (audio, files) as their JSON, base64 data included: a loose bound.
* **Every other field** of the body the target receives, but for the sampling and output
  parameters in ``PARAMETERS``, as its JSON: vLLM makes ``documents`` and ``chat_template``
  prompt text, and a field turnout does not know is passed through as it came.
* An answer: the text it generated (content, reasoning, refusal, tool call names and arguments)
  plus ``TOKENS_PER_MESSAGE`` per choice (end of turn, channel markers), at most the output
  bound the request set (``max_tokens``, ``max_completion_tokens``, times ``n``).

Counting bytes costs microseconds. A tokenizer costs about a millisecond per 2 KB of text and
holds the GIL in its single-text call, so the texts of one prompt go to it in one batch call
(which releases the GIL), on a worker thread once they pass ``INLINE_BYTES``: the event loop
is never held for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from turnout.config import Config
from turnout.errors import ConfigError
from turnout.providers.base import Usage

TOKENS_PER_REQUEST = 64
TOKENS_PER_MESSAGE = 8
TOKENS_FOR_TOOLS = 64
TOKENS_PER_INPUT = 4  # an embedding input's special tokens ([CLS] and [SEP], BOS and EOS)
IMAGE_TOKENS = 2_000
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# What a model generates, in a message or a stream's delta.
GENERATED = ("content", "reasoning_content", "reasoning", "refusal")
BODY_JSON = ("tool_choice", "response_format")
# Fields that never become prompt text: sampling and output parameters, the stream's options.
# Every other field of the body the target receives is counted as its JSON (a string as
# itself): a server may make it prompt text (vLLM's ``documents`` and ``chat_template``, a
# ``prediction`` that is billed), and a field turnout does not know is passed through, so it
# must not pass uncounted.
PARAMETERS = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options",
        "temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty",
        "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs", "top_logprobs",
        "parallel_tool_calls", "user", "service_tier", "store", "reasoning_effort", "encoding_format",
        "dimensions", "min_tokens", "ignore_eos", "skip_special_tokens", "include_stop_str_in_output",
    }
)  # fmt: skip
_COUNTED = frozenset({"tools", "functions", *BODY_JSON, "input"})  # counted below, each its own way
INLINE_BYTES = 4096  # a tokenizer counts more text than this on a worker thread
INSTALL = "pip install 'turnout[tokenizers]'"

Count = Callable[[Sequence[str]], int]  # the tokens of some texts, together


def utf8_len(text: str) -> int:
    """The text's UTF-8 length; ``isascii`` is a flag check, so ASCII costs no encoding."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def utf8_count(texts: Sequence[str]) -> int:
    return sum(map(utf8_len, texts))


def prompt_texts(body: Mapping[str, Any]) -> tuple[int, list[str]]:
    """What a prompt bound counts: the tokens that do not depend on the tokenizer (overheads,
    images), and the texts to count (structured fields as their JSON)."""
    fixed, texts = TOKENS_PER_REQUEST, list[str]()
    messages = body.get("messages")
    if isinstance(messages, list):
        fixed += TOKENS_PER_MESSAGE * len(messages)
        for message in messages:
            if (
                type(message) is dict
                and len(message) == 2
                and "role" in message
                and type(content := message.get("content")) is str
            ):
                texts.append(content)  # most messages: a role and a text, counted inline
            elif isinstance(message, dict):
                fixed += _message(message, texts)
    if body.keys() <= PARAMETERS:  # most bodies: messages and parameters only
        return fixed, texts
    for key in ("tools", "functions"):
        value = body.get(key)
        if value:
            fixed += TOKENS_FOR_TOOLS
            texts.append(_dumps(value))
    for key in BODY_JSON:
        value = body.get(key)
        if value is not None:
            texts.append(_dumps(value))
    inputs = body.get("input")  # an embeddings body: its texts
    if isinstance(inputs, list):
        fixed += TOKENS_PER_INPUT * len(inputs)
        texts += (text if isinstance(text, str) else _dumps(text) for text in inputs)
    elif inputs is not None:
        fixed += TOKENS_PER_INPUT
        texts.append(inputs if isinstance(inputs, str) else _dumps(inputs))
    for key, value in body.items():  # whatever else the target receives
        if key not in PARAMETERS and key not in _COUNTED and value is not None:
            texts.append(value if isinstance(value, str) else _dumps(value))
    return fixed, texts


def prompt_tokens(body: Mapping[str, Any], count: Count = utf8_count) -> int:
    """A bound on the prompt tokens of an OpenAI chat body (see the module docstring)."""
    fixed, texts = prompt_texts(body)
    return fixed + count(texts)


def completion_tokens(texts: Sequence[str], choices: int = 1, count: Count = utf8_count) -> int:
    """A bound on the tokens that generated ``texts`` (every choice's)."""
    return count(texts) + TOKENS_PER_MESSAGE * max(1, choices)


def generated(message: Any, out: list[str]) -> None:
    """Append what a model generated in ``message`` (an answer's message or a stream's delta)
    to ``out``. Anything not shaped as expected counts as its JSON: never less than it is."""
    if not isinstance(message, dict):
        return
    for key in GENERATED:
        value = message.get(key)
        if value:
            out.append(value if isinstance(value, str) else _dumps(value))
    calls = message.get("tool_calls")
    if calls:
        for call in calls if isinstance(calls, list) else (calls,):
            _function(call.get("function") if isinstance(call, dict) else call, out)
    if message.get("function_call"):
        _function(message["function_call"], out)


def generated_by_answer(body: Mapping[str, Any]) -> tuple[list[str], int]:
    """The texts a whole answer (``chat.completion``) generated, and its number of choices."""
    out: list[str] = []
    choices = body.get("choices")
    if not isinstance(choices, list):
        return out, 1
    for choice in choices:
        if isinstance(choice, dict):
            generated(choice.get("message"), out)
    return out, len(choices)


def generated_by_chunk(chunk: Mapping[str, Any], out: list[str]) -> None:
    """Append what one stream chunk (``chat.completion.chunk``) generated to ``out``."""
    choices = chunk.get("choices")
    if choices and isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                generated(choice.get("delta"), out)


def choices_asked(body: Mapping[str, Any]) -> int:
    return _positive_int(body.get("n")) or 1


def output_bound(body: Mapping[str, Any]) -> int | None:
    """The most tokens the answer may hold, as the body tells the target: every choice (``n``)
    up to ``max_completion_tokens`` or ``max_tokens`` (with both, the larger: a server that
    knows only ``max_tokens`` keeps to that one). None: the body sets no bound."""
    bound = body.get("max_tokens")
    if type(bound) is int and bound > 0 and "max_completion_tokens" not in body and "n" not in body:
        return bound  # most bodies: max_tokens alone, one choice
    bound = max(_positive_int(body.get("max_completion_tokens")), _positive_int(bound))
    return bound * choices_asked(body) if bound else None


class Tokens:
    """Per target, how its texts are counted: its tokenizer where one is configured, else UTF-8
    bytes. Built once by the runtime (``from_config`` loads the tokenizer files)."""

    def __init__(self, counts: Mapping[str, Count] | None = None) -> None:
        self._counts = dict(counts or {})

    @classmethod
    def from_config(cls, config: Config) -> Tokens:
        """Load every ``targets.X.tokenizer``; a ConfigError lists each one that cannot be."""
        counts: dict[str, Count] = {}
        loaded: dict[str, Count] = {}  # one load per file, whichever targets share it
        problems: list[str] = []
        for name, target in config.targets.items():
            path = target.tokenizer
            if path is None:
                continue
            if path not in loaded:
                try:
                    loaded[path] = load_tokenizer(path)
                except ConfigError as exc:
                    problems += [f"targets.{name}.tokenizer: {problem}" for problem in exc.problems]
                    continue
            counts[name] = loaded[path]
        if problems:
            raise ConfigError(problems)
        return cls(counts)

    def count(self, target: str | None) -> Count:
        return self._counts.get(target or "", utf8_count)

    async def prompts(self, body: Mapping[str, Any], targets: Sequence[str]) -> dict[str, int]:
        """Each target's prompt bound: the body is walked once, its bytes counted once for all
        targets without a tokenizer, and each tokenizer used once."""
        fixed, texts = prompt_texts(body)
        counted: dict[Count, int] = {}
        out: dict[str, int] = {}
        for name in targets:
            count = self.count(name)
            if count not in counted:
                counted[count] = fixed + await _count(count, texts)
            out[name] = counted[count]
        return out

    async def prompt(self, body: Mapping[str, Any], target: str) -> int:
        """One target's prompt bound (``prompts`` for a single target, without its dict)."""
        fixed, texts = prompt_texts(body)
        return fixed + await _count(self.count(target), texts)

    def prompt_now(self, body: Mapping[str, Any], target: str) -> int | None:
        """``prompt`` without a coroutine where it never waits: a target counted in bytes (the
        hot path's usual case). None: the target has a tokenizer; await ``prompt``."""
        if target in self._counts:
            return None
        fixed, texts = prompt_texts(body)
        return fixed + utf8_count(texts)

    async def usage(self, body: Mapping[str, Any], texts: Sequence[str], target: str | None) -> Usage:
        """The usage of an answer whose upstream reported none: the prompt bound of ``body``
        and the completion bound of what it generated, at most the output bound ``body`` set
        (the one its reservation assumed; an upstream that passes it is the documented
        overshoot)."""
        count = self.count(target)
        fixed, prompt = prompt_texts(body)
        completion = await _count(count, texts) + TOKENS_PER_MESSAGE * choices_asked(body)
        bound = output_bound(body)
        return Usage(fixed + await _count(count, prompt), completion if bound is None else min(completion, bound))


async def _count(count: Count, texts: Sequence[str]) -> int:
    if count is utf8_count or utf8_count(texts) <= INLINE_BYTES:
        return count(texts)
    return await asyncio.to_thread(count, texts)


BYTES = Tokens()  # no tokenizers: UTF-8 bytes for every target


def load_tokenizer(path: str) -> Count:
    """A tokenizer.json file as a counting function; ConfigError (one line, no traceback) when
    the ``tokenizers`` package is missing or the file does not load."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ConfigError([f"{path} needs the tokenizers package: {INSTALL}"]) from exc
    if not Path(path).is_file():
        raise ConfigError([f"{path} is not a file (a tokenizer.json, in the Hugging Face tokenizers format)"])
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # the library raises plain Exception for a file it cannot read
        raise ConfigError([f"{path} is not a tokenizer.json the tokenizers package can load: {exc}"]) from exc
    # A file may carry truncation or padding for training: a count needs neither.
    tokenizer.no_truncation()
    tokenizer.no_padding()

    # One call for all the texts: the batch call releases the GIL (the single one does not),
    # and the fast one skips the offsets a count does not need (tokenizers 0.20 and later).
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def count(texts: Sequence[str]) -> int:
        return sum(len(encoding) for encoding in encode(list(texts), add_special_tokens=False)) if texts else 0

    return count


def _message(message: Mapping[str, Any], texts: list[str]) -> int:
    """Append the message's texts to ``texts``; its image tokens."""
    images = 0
    for key, value in message.items():
        if key == "role":
            continue  # one token of the template, in TOKENS_PER_MESSAGE
        if key == "content" and isinstance(value, list):
            for part in value:
                images += _part(part, texts)
        elif isinstance(value, str):
            texts.append(value)
        elif value is not None:
            texts.append(_dumps(value))
    return images


def _part(part: Any, texts: list[str]) -> int:
    if isinstance(part, dict):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            return 0
        if isinstance(kind, str) and kind in IMAGE_PARTS:  # a list or an object is unhashable
            return IMAGE_TOKENS
    texts.append(_dumps(part))
    return 0


def _positive_int(value: Any) -> int:
    """``value`` if it is a positive integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _function(fn: Any, out: list[str]) -> None:
    if not isinstance(fn, dict):
        if fn:
            out.append(_dumps(fn))
        return
    for key in ("name", "arguments"):
        value = fn.get(key)
        if value:
            out.append(value if isinstance(value, str) else _dumps(value))


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits, from a release's YAML: count its digits
        return str(value)
