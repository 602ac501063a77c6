"""What the console's forms change: a release transition (promote, canary, rollback) in the
release store, or a label on a review item. Each returns the sentence the page shows; a
refusal (a bad field, a step the store's state machine refuses) raises ``Refused`` with the
reason. Who made a change is the name given at login, marked as coming from the console.

A transition is written to the release store, then the gateway's registry reloads at once:
the next request is served by the new state (other replicas poll it within half a second).
"""

from __future__ import annotations

import asyncio
import math

from turnout.errors import StoreUnavailable, TurnoutError
from turnout.offline.shadow import passed_note, refusal, summarize
from turnout.releases.registry import StoreRegistry
from turnout.releases.review import LABELS, MAX_NOTE
from turnout.serving import tickets
from turnout.serving.runtime import Runtime

ACTIONS = ("promote", "canary", "rollback")
MAX_WHY = 500
MAX_ITEM_ID = 2**63 - 1


# A store that does not answer (PostgreSQL gone): said plainly, without the store's address or
# the driver's words; whether the change was made before the connection went is unknown.
_UNANSWERED = "the {} does not answer right now; look at the page again in a moment, then try again"


class Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def release(runtime: Runtime, task: str, action: str, form: dict[str, str], by: str) -> str:
    store = runtime.release_store
    if store is None:
        raise Refused("this gateway has no release store (releases.path has no release files)")
    if task not in runtime.config.tasks:
        raise Refused(f"no task {task!r}")
    if action not in ACTIONS:
        raise Refused(f"no release action {action!r}")
    why = " ".join(form.get("why", "").split())
    if not why:
        raise Refused("say why: it is kept in the audit trail")
    if len(why) > MAX_WHY:
        raise Refused(f"the reason is longer than {MAX_WHY} characters")
    name = form.get("release", "").strip()
    try:
        if action == "rollback":
            serving = await store.rollback(task, by, why, to_previous=form.get("to_previous") == "on")
            done = f"{task}: rolled back; {serving.active} is active for all traffic"
        elif action == "promote":
            serving = await store.promote(task, _named(name), by, why, force=form.get("force") == "on")
            done = f"{task}: {serving.active} is active for all traffic (was {serving.previous_active or 'none'})"
        else:
            percent = _percent(form.get("percent", ""))
            name = _named(name)
            why, gated, against = await _shadow_gates(runtime, task, name, why)
            serving = await store.start_canary(task, name, percent, by, why, gated=gated, against=against)
            done = f"{task}: {serving.canary} takes {serving.canary_percent:g}% of traffic; {serving.active} the rest"
    except StoreUnavailable:
        raise Refused(_UNANSWERED.format("release store")) from None
    except TurnoutError as exc:  # the state machine said no (wrong state, unknown release)
        raise Refused(exc.message) from None
    if isinstance(runtime.releases, StoreRegistry):
        await runtime.releases.refresh()  # served from the next request on, not half a second later
    return done


async def label(runtime: Runtime, item: str, form: dict[str, str], by: str) -> str:
    queue = runtime.reviews
    if queue is None:
        raise Refused("the review queue is off: no task has a review_rate or escalates to a human")
    choice = form.get("label", "")
    if choice not in LABELS:
        raise Refused(f"label must be one of {', '.join(LABELS)}")
    note = form.get("note", "").strip() or None
    if note is not None and len(note) > MAX_NOTE:
        raise Refused(f"the note is longer than {MAX_NOTE} characters")
    answer = form.get("answer", "").strip() or None  # an escalated item's corrected answer
    try:
        if _item_id(item):
            await tickets.check_answer(runtime, int(item), choice, answer)
        found = await queue.label(int(item), choice, note, by, answer) if _item_id(item) else None
    except StoreUnavailable:
        raise Refused(_UNANSWERED.format("review queue")) from None
    except TurnoutError as exc:  # an escalation accepted without an answer, an answer too long
        raise Refused(exc.message) from None
    if found is None:
        raise Refused(f"no review item {item!r}")
    return f"review item {found.id} ({found.task}): {choice}"


async def _shadow_gates(runtime: Runtime, task: str, name: str, why: str) -> tuple[str, bool, str | None]:
    """A release in shadow goes to canary only when its sample against the active release
    passes the task's gates, as ``turnout release canary`` checks: the reason gets the sample's
    note; and the active release it was measured against."""
    store, mirror = runtime.release_store, runtime.shadows
    assert store is not None
    found, serving = await store.get(task, name), await store.serving_row(task)
    against = serving.active if serving is not None else None
    if found is None or found.state != "shadow" or mirror is None:
        return why, False, against
    pairs = await mirror.store.pairs(task, name, baseline=against) if against is not None else []
    summary = await asyncio.to_thread(summarize, task, name, pairs)  # up to 200k pairs: off the loop
    refused = refusal(summary, runtime.config.tasks[task])
    if refused is not None:
        raise Refused(refused)
    return why + passed_note(summary), True, against


def _named(name: str) -> str:
    if not name:
        raise Refused("choose a release")
    return name


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Refused("the canary share must be a number of percent") from None
    if not math.isfinite(value) or not 0 < value <= 100:
        raise Refused("the canary share must be more than 0 and at most 100 percent")
    return value


def _item_id(text: str) -> bool:
    """ASCII digits SQLite can hold ("²" is a digit to str.isdigit, not to int)."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_ITEM_ID
