"""Data classified before the model tier, in-process: a request declared ``public`` or
``internal`` that carries PII or secrets is raised to ``classify.raise_to`` before policy, so it
never reaches a target its class may not use; the ledger keeps the declared and the effective
class; per task, per tenant, off; the chat door (content, parts, quoted tool calls) and the task
API (rendered variables)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.asgi import Response, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.config import validate
from turnout.errors import UpstreamStatusError
from turnout.ledger.record import LedgerRow
from turnout.privacy.redact import KINDS
from turnout.releases.base import Prompt, Release, Serving
from turnout.safety.classify import BATCH_CHARS, PLAN, Classifier, batched, resolve, texts
from turnout.serving.app import App

KEYS = {"acme": "sk-acme-classify-01", "small": "sk-small-classify-01", "globex": "sk-globex-classify-01"}
EMAIL = "Please update the address for jane.doe@example.com on my account."
API_KEY = "Our deploy fails with key sk-proj-T3BlbkFJ4kq9xW2mZ8vN1rQ7sL5pY0aB6cD, why?"
CLEAN = "How do I reset my router to its factory settings?"


def config() -> dict[str, Any]:
    classify = {"classify": {"detect": ["pii", "secrets"], "raise_to": "confidential"}}
    return {
        "targets": {
            "cloud": {"provider": "openai", "base_url": "http://cloud.invalid/v1", "model": "m"},
            "onprem": {"provider": "openai", "base_url": "http://onprem.invalid/v1", "model": "m"},
        },
        "policy": {
            "public": {"targets": ["cloud"]},
            "internal": {"targets": ["cloud", "onprem"]},
            "confidential": {"targets": ["onprem"]},
        },
        "tenants": {
            "acme": {"keys": [KEYS["acme"]], "data_classes": ["public", "internal", "confidential"]},
            "small": {"keys": [KEYS["small"]], "data_classes": ["public", "internal"]},
            "globex": {
                "keys": [KEYS["globex"]],
                "data_classes": ["public", "internal", "confidential"],
                "task_classify": {"support": {"detect": []}},
            },
        },
        "tasks": {
            "support": {"route": ["cloud", "onprem"], **classify},
            "secrets_only": {"route": ["cloud", "onprem"], "classify": {"detect": ["secrets"]}},
            "plain": {"route": ["cloud", "onprem"]},
            "extract": {"route": ["cloud", "onprem"], **classify},
        },
    }


async def start(
    make_app: AppFactory, onprem: ScriptedProvider | None = None
) -> tuple[App, dict[str, ScriptedProvider]]:
    fakes = {"cloud": ScriptedProvider("cloud"), "onprem": onprem or ScriptedProvider("onprem")}
    app = await make_app(config(), dict(fakes))
    return app, fakes


async def chat(
    app: App, content: Any, data_class: str = "public", task: str = "support", tenant: str = "acme", **extra: Any
) -> Response:
    body = {"model": task, "messages": [{"role": "user", "content": content}], **extra}
    headers = {"authorization": f"Bearer {KEYS[tenant]}", "x-turnout-data-class": data_class}
    return await request(app, "POST", "/v1/chat/completions", body, headers)


async def rows(app: App, n: int = 1) -> list[LedgerRow]:
    assert app.runtime.store is not None
    for _ in range(400):
        await asyncio.sleep(0.005)
        found = await app.runtime.store.recent(100)
        if len(found) >= n:
            return found
    raise AssertionError(f"expected {n} ledger rows")


async def test_a_clean_public_request_keeps_its_class(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    resp = await chat(app, CLEAN)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "cloud"
    [row] = await rows(app)
    assert (row.declared_class, row.data_class) == ("public", "public")


@pytest.mark.parametrize(("text", "declared"), [(EMAIL, "public"), (API_KEY, "internal"), (EMAIL, "internal")])
async def test_pii_or_a_secret_raises_the_class_before_policy(make_app: AppFactory, text: str, declared: str) -> None:
    app, fakes = await start(make_app)
    resp = await chat(app, text, declared)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "onprem"
    assert fakes["cloud"].calls == []
    [row] = await rows(app)
    assert (row.declared_class, row.data_class) == (declared, "confidential")
    metrics = (await request(app, "GET", "/metrics")).body.decode()
    line = f'turnout_data_class_raised_total{{declared="{declared}",effective="confidential",task="support"}} 1.0'
    assert line in metrics


async def test_a_raised_request_never_falls_back_to_a_target_its_class_may_not_use(make_app: AppFactory) -> None:
    down = ScriptedProvider("onprem", Step(error=UpstreamStatusError(503, "down")))
    app, fakes = await start(make_app, down)
    resp = await chat(app, EMAIL)
    assert resp.status in (502, 503)
    assert fakes["cloud"].calls == [] and len(down.calls) >= 1
    [row] = await rows(app)
    assert (row.declared_class, row.data_class, row.target) == ("public", "confidential", None)


async def test_a_tenant_that_may_not_send_the_raised_class_is_told_why(make_app: AppFactory) -> None:
    app, fakes = await start(make_app)
    resp = await chat(app, EMAIL, tenant="small")
    assert resp.status == 403
    err = resp.json()["error"]
    assert err["code"] == "policy_denied"
    assert "raised from public to confidential" in err["message"] and "pii" in err["message"]
    assert "jane.doe" not in resp.body.decode()  # never the finding
    assert fakes["cloud"].calls == fakes["onprem"].calls == []
    [row] = await rows(app)
    assert (row.status, row.declared_class, row.data_class) == (403, "public", "confidential")


async def test_a_class_at_or_above_raise_to_is_not_read(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    assert (await chat(app, EMAIL, "confidential")).status == 200
    [row] = await rows(app)
    assert (row.declared_class, row.data_class) == ("confidential", "confidential")


async def test_detect_names_what_counts(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    resp = await chat(app, EMAIL, task="secrets_only")
    assert resp.headers["x-turnout-target"] == "cloud"  # PII is not looked for here
    resp = await chat(app, API_KEY, task="secrets_only")
    assert resp.headers["x-turnout-target"] == "onprem"


async def test_without_classify_or_with_it_off_nothing_is_raised(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    assert (await chat(app, EMAIL, task="plain")).headers["x-turnout-target"] == "cloud"
    assert (await chat(app, EMAIL, tenant="globex")).headers["x-turnout-target"] == "cloud"  # its override: off
    for row in await rows(app, 2):
        assert row.data_class == row.declared_class == "public"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": EMAIL}]}],
        [{"role": "system", "content": f"Customer on file: {EMAIL}"}, {"role": "user", "content": CLEAN}],
        [
            {"role": "user", "content": CLEAN},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"card": "4111 1111 1111 1111"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ],
        [{"role": "user", "content": CLEAN}, {"role": "tool", "tool_call_id": "c", "content": "ssn 123-45-6789"}],
    ],
)
async def test_every_text_the_target_would_read_counts(make_app: AppFactory, messages: list[Any]) -> None:
    app, _ = await start(make_app)
    body = {"model": "support", "messages": messages, "metadata": {"data_class": "public"}}
    resp = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEYS['acme']}"})
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "onprem"


SSN = "SSN 123-45-6789"
CARD = "card 4111 1111 1111 1111"
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def _schema(description: str) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object", "description": description}},
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"documents": [{"title": "Notes", "text": SSN}]},  # vLLM renders documents into the prompt
        {"metadata": {"note": EMAIL}},  # forwarded: only turnout's own keys are taken out
        {"user": "jane.doe@example.com"},
        {"messages": [{"role": "user", "name": "x", "content": CLEAN}, {"role": "user", "name": SSN, "content": "hi"}]},
        {
            "messages": [
                {"role": "user", "content": CLEAN},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": CARD}]},
            ]
        },
        {"tools": [{"type": "function", "function": {"name": "lookup", "description": f"Look up {EMAIL}"}}]},
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "parameters": {"type": "object", "properties": {"ssn": {"type": "string", "description": SSN}}},
                    },
                }
            ]
        },
        {"response_format": _schema(f"Reply for {EMAIL}")},
        {"prediction": {"type": "content", "content": CARD}},
        {"prediction": {"type": "content", "content": [{"type": "text", "text": CARD}]}},
        {"chat_template_kwargs": {"customer": SSN}},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": CLEAN},
                        {
                            "type": "file",
                            "file": {
                                "filename": "a.txt",
                                "file_data": "data:text/plain;base64," + base64.b64encode(SSN.encode()).decode(),
                            },
                        },
                    ],
                }
            ]
        },
    ],
)
async def test_every_string_the_target_receives_counts(make_app: AppFactory, extra: dict[str, Any]) -> None:
    app, fakes = await start(make_app)
    body = {"model": "support", "messages": [{"role": "user", "content": CLEAN}], **extra}
    headers = {"authorization": f"Bearer {KEYS['acme']}", "x-turnout-data-class": "public"}
    resp = await request(app, "POST", "/v1/chat/completions", body, headers)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "onprem", extra
    assert fakes["cloud"].calls == []
    # A tenant that may not send confidential data is refused, not served by the cloud target.
    headers["authorization"] = f"Bearer {KEYS['small']}"
    assert (await request(app, "POST", "/v1/chat/completions", body, headers)).status == 403


async def test_what_turnout_takes_out_or_cannot_read_as_text_does_not_count(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    body = {
        "model": "support",
        "messages": [{"role": "user", "content": CLEAN}],
        "metadata": {"data_class": "public", "user": "jane.doe@example.com", "episode_id": "ep-1"},  # turnout's
        "tools": [TOOL],
    }
    resp = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEYS['acme']}"})
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "cloud"


def test_texts_walk_the_body_but_not_its_structure_or_binary_media() -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + SSN.encode()).decode()
    text_file = "data:text/plain;base64," + base64.b64encode(SSN.encode()).decode()
    body = {
        "model": "jane@example.com",  # structural fields are names, not text a model reads
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]},
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "QUJD", "format": "wav"}}]},
            {"role": "user", "content": [{"type": "file", "file": {"file_data": text_file}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ],
        "n": 1,
        "stream": False,
        "logprobs": True,
    }
    assert list(texts(body)) == [SSN, "ok"]


async def test_the_task_api_is_classified_on_what_its_release_renders(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    release = Release(
        task="extract",
        name="v1",
        route=("cloud", "onprem"),
        model_version="w1",
        tokenizer="tok",
        prompt=Prompt("Summarize.", "Ticket: {{ text }}", {"text": "str"}),
        params={"max_tokens": 20},
        output_schema=None,
    )

    class Registry:
        def serving(self, task: str) -> Serving | None:
            return Serving(release) if task == "extract" else None

        def get(self, task: str, name: str) -> Release | None:
            return release

    app.runtime.releases = Registry()
    headers = {"authorization": f"Bearer {KEYS['acme']}"}
    meta = {"metadata": {"data_class": "public"}}
    clean = await request(app, "POST", "/v1/tasks/extract", {"variables": {"text": CLEAN}, **meta}, headers)
    assert clean.status == 200 and clean.headers["x-turnout-target"] == "cloud"
    raised = await request(app, "POST", "/v1/tasks/extract", {"variables": {"text": EMAIL}, **meta}, headers)
    assert raised.status == 200 and raised.headers["x-turnout-target"] == "onprem"


# --- the classifier alone ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("mail me at bob@example.org", "pii"),
        ("call +44 20 7946 0958 tomorrow", "pii"),
        ("card 4111-1111-1111-1111", "pii"),
        ("password: hunter2hunter2", "secrets"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "secrets"),
        ("AKIAIOSFODNN7EXAMPLE is our key id", "secrets"),
        ("How do I bake bread?", None),
        ("order 1234 shipped on 2024-05-01", None),
        ("", None),
    ],
)
def test_the_classifier_finds_what_the_redactor_finds(text: str, found: str | None) -> None:
    classifier = resolve(validate(config()), None, "support")
    assert classifier is not None
    assert classifier.find([text]) == found


def test_raise_to_is_never_a_lowering() -> None:
    classifier = Classifier({"EMAIL": "pii"}, "internal")
    body = {"messages": [{"role": "user", "content": EMAIL}]}
    assert classifier.classify("confidential", body) is None
    assert classifier.classify("internal", body) is None
    raised = classifier.classify("public", body)
    assert raised is not None and (raised.declared, raised.effective, raised.found) == ("public", "internal", "pii")


def test_texts_survive_hostile_shapes() -> None:
    body: dict[str, Any] = {
        "messages": [
            "not a message",
            {"role": "user", "content": [1, {"type": "image_url"}, {"type": "text", "text": 5}]},
            {"role": "assistant", "tool_calls": "nope", "function_call": {"arguments": "a@b.io x"}},
            {"role": "assistant", "tool_calls": [None, {"function": "x"}, {"function": {"arguments": 3}}]},
        ]
    }
    # Every string, wherever it is (the door refuses most of these shapes; the walk never fails).
    assert list(texts(body)) == ["not a message", "nope", "a@b.io x", "x"]
    assert list(texts({"messages": None})) == []


def test_short_strings_are_read_together_and_still_found() -> None:
    long = "x" * BATCH_CHARS
    assert list(batched(["a", "b", long, "c"])) == [long, "a\nb\nc"]
    assert len(list(batched(["word"] * 1000))) == 5  # ~1 KB at a time
    props = {f"f{i}": {"type": "string", "description": f"Field number {i}"} for i in range(300)}
    props["f150"]["description"] = "Where to write: ops@example.com"
    body = {"messages": [{"role": "user", "content": CLEAN}], "tools": [{"type": "function", "function": {
        "name": "save", "parameters": {"type": "object", "properties": props}}}]}  # fmt: skip
    raised = Classifier({"EMAIL": "pii"}, "confidential").classify("public", body)
    assert raised is not None and raised.found == "pii"


def test_resolution_is_the_most_specific_block_whole() -> None:
    cfg = validate(config())
    assert resolve(cfg, "globex", "support") is None  # detect: [] turns it off
    own = resolve(cfg, "acme", "secrets_only")
    assert own is not None and set(own.kinds.values()) == {"secrets"} and own.raise_to == "confidential"
    assert resolve(cfg, None, "plain") is None


# --- the skipped detectors are the ones that could not have found anything ------------------------

LABELLED = Path(__file__).parent / "data" / "redaction_labelled.jsonl"
NO_DIGITS = str.maketrans("", "", "0123456789")


def labelled_texts() -> list[str]:
    rows = [orjson.loads(line) for line in LABELLED.read_bytes().splitlines() if line.strip()]
    return [row["text"] for row in rows]


def test_skipping_never_changes_what_is_found() -> None:
    classifier = Classifier({kind: "x" for kind in KINDS}, "restricted")
    ungated = tuple((detector, None) for detector, _ in PLAN)
    texts = labelled_texts()
    texts += [t.translate(NO_DIGITS) for t in texts] + [t.replace(":", " ") for t in texts]
    assert len(texts) > 900
    for text in texts:
        assert classifier.find([text]) == classifier.find([text], ungated), text
    assert {need for _, need in PLAN} == {None, "digits", "colons"}  # every gate names a real detector


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="0123456789"), max_size=200))
def test_detectors_that_need_digits_find_nothing_without(text: str) -> None:
    lower = text.lower()
    for detector, need in PLAN:
        if need == "digits" or (need == "colons" and text.count(":") < 2):
            assert list(detector(text, lower)) == []


DISGUISED = {
    "no-break spaces": "card 4111\u00a01111\u00a01111\u00a01111",
    "narrow no-break spaces": "card 4111\u202f1111\u202f1111\u202f1111",
    "fullwidth card": "card " + " ".join(["\uff14\uff11\uff11\uff11"] + ["\uff11" * 4] * 3),
    "fullwidth email": "mail \uff4a\uff41\uff4e\uff45\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org",
    "zero-width in an email": "mail jane\u200b.secret@exa\u200bmple.org",
    "zero-width in a key": "key AKIA\u200bIOSFODNN7EXAMPLE",
    "a JSON escape": '{"c": "jane.secret\\u0040example.org"}',
}


@pytest.mark.parametrize("text", DISGUISED.values(), ids=DISGUISED)
async def test_pii_written_with_unicode_variants_still_raises_the_class(make_app: AppFactory, text: str) -> None:
    """Seen: a card with no-break spaces (pasted from a PDF), a fullwidth email, a key with a
    zero-width space went to the public-only target: only the screener read text plainly."""
    classifier = resolve(validate(config()), None, "support")
    assert classifier is not None and classifier.find([text]) in ("pii", "secrets")
    app, fakes = await start(make_app)
    resp = await chat(app, text, "public")
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "onprem"
    assert fakes["cloud"].calls == []


@pytest.mark.parametrize(
    "text",
    [
        f"Data: {CARD}",
        f"data: jane, {EMAIL}",
        f"DATA:{SSN}",
        f"data:image/png,{EMAIL}",  # no base64: the text is what the target reads
    ],
)
async def test_a_message_that_starts_like_a_data_url_is_still_read(make_app: AppFactory, text: str) -> None:
    """Seen: any string starting ``data:`` that was not a text data URL was skipped whole, as
    media, so "Data: my card 4111 ..." went to the public-only target."""
    assert list(texts({"messages": [{"role": "user", "content": text}]})) == [text]
    app, fakes = await start(make_app)
    resp = await chat(app, text, "public")
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "onprem"
    assert fakes["cloud"].calls == []


def test_a_base64_data_url_of_media_is_still_not_read() -> None:
    image = "data:image/png;name=a.png;base64," + base64.b64encode(SSN.encode()).decode()
    assert list(texts({"messages": [{"role": "user", "content": [{"image_url": {"url": image}}]}]})) == []
