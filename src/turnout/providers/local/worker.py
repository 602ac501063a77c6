"""The thread side of the local provider: a pool of worker threads, each owning one llama.cpp
model (a llama.cpp context is not thread-safe), all fed from one job queue.

A job's events go back to the event loop that submitted it through ``call_soon_threadsafe``,
one per generated chunk, so tokens reach the caller as they are made. The worker checks the
job's cancel flag between tokens; a cancelled job stops within one token and frees its worker.

Admission is counted here, under a lock, so the provider can refuse at once (``Overloaded``)
rather than let a queue grow: at most ``capacity`` jobs are waiting or running.

llama_cpp is imported only inside the worker threads' load function, so importing this module
never needs it.
"""

from __future__ import annotations

import asyncio
import enum
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal

from turnout.errors import RequestError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from llama_cpp import Llama

EventKind = Literal["chunk", "done", "error", "cancelled"]
Event = tuple[EventKind, Any]


class ModelLoadError(RuntimeError):
    """The worker's model could not be loaded; every job it takes fails with this."""


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Job:
    """One admitted request: the ``create_chat_completion`` arguments, the loop to report to,
    and the events reported so far (``chunk`` dicts, then ``done`` with a ``(prompt,
    completion)`` token count, or ``error`` with the exception, or ``cancelled``).

    Also, read-only for observers (stats, tests): ``generated``, the tokens sampled so far;
    ``cancelled_at``, the value ``generated`` had when a cancel was first asked for; and
    ``outcome``, how the job ended, set as it leaves the pool and before its end event."""

    def __init__(
        self, params: dict[str, Any], loop: asyncio.AbstractEventLoop, run: Callable[[Llama, Job], Event] | None = None
    ) -> None:
        self.params = params
        self.run = run or generate  # what the worker does with it: generate, or embed
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.admitted = time.monotonic()
        self.started: float | None = None
        self._loop = loop
        self.state = _State.QUEUED
        self.generated = 0
        self.cancelled_at: int | None = None
        self.outcome: EventKind | None = None

    @property
    def queue_ms(self) -> float | None:
        return None if self.started is None else (self.started - self.admitted) * 1000

    def cancel(self) -> None:
        """Raise the cancel flag (the worker checks it between tokens); safe from any thread."""
        if not self.cancelled.is_set():
            self.cancelled_at = self.generated
        self.cancelled.set()

    def emit(self, kind: EventKind, value: Any = None) -> bool:
        """Hand one event to the job's loop; False when nobody can listen any more."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the caller's event loop is closed
            self.cancel()
            return False
        return True


class Pool:
    """``workers`` threads started on first use, each loading its own model with ``load``."""

    def __init__(self, load: Callable[[], Llama], workers: int, capacity: int) -> None:
        self._load = load
        self._workers = workers
        self._capacity = capacity
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live: set[Job] = set()  # admitted and not yet finished
        self._threads: list[threading.Thread] = []
        self._ready: list[Future[float]] = []  # one per worker: its model's load time in seconds
        self._closed = False

    def start(self) -> list[Future[float]]:
        """Start the workers if they are not running yet; return their load futures."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if not self._threads:
                for i in range(self._workers):
                    ready: Future[float] = Future()
                    thread = threading.Thread(target=self._work, args=(ready,), name=f"llama-{i}")
                    # Daemon so a gateway that never calls aclose still exits; aclose joins them.
                    thread.daemon = True
                    self._ready.append(ready)
                    self._threads.append(thread)
                    thread.start()
            return list(self._ready)

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when ``capacity`` jobs are already waiting or running."""
        self.start()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if len(self._live) >= self._capacity:
                return False
            self._live.add(job)
        self._jobs.put(job)
        return True

    def cancel(self, job: Job) -> None:
        """Stop ``job``: a queued job gives up its place at once, a running one stops at its
        next token. Safe to call more than once and from any thread."""
        job.cancel()
        with self._lock:
            if job.state is _State.QUEUED:
                self._retire(job, "cancelled")

    def counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        with self._lock:
            running = sum(1 for job in self._live if job.state is _State.RUNNING)
            return running, len(self._live) - running

    def close(self, timeout: float) -> None:
        """Stop every job, let each worker finish its current token, free the models."""
        with self._lock:
            self._closed = True
            for job in list(self._live):
                job.cancel()
                if job.state is _State.QUEUED:
                    self._retire(job, "cancelled")
                    job.emit("cancelled")
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _retire(self, job: Job, outcome: EventKind) -> None:
        # Caller holds the lock.
        job.state = _State.DONE
        job.outcome = outcome
        self._live.discard(job)

    def _take(self, job: Job) -> bool:
        with self._lock:
            if job.state is not _State.QUEUED:
                return False  # cancelled while it waited
            job.state = _State.RUNNING
            job.started = time.monotonic()
            return True

    def _work(self, ready: Future[float]) -> None:
        llm: Llama | None = None
        load_error: BaseException | None = None
        t0 = time.perf_counter()
        try:
            llm = self._load()
            ready.set_result(time.perf_counter() - t0)
        except Exception as exc:
            load_error = ModelLoadError(str(exc))
            load_error.__cause__ = exc
            ready.set_exception(load_error)
        try:
            while (job := self._jobs.get()) is not None:
                if not self._take(job):
                    continue
                end: Event = ("error", load_error) if llm is None else job.run(llm, job)
                # Free the slot before the caller hears the end, so its next call is admitted.
                with self._lock:
                    self._retire(job, end[0])
                job.emit(*end)
        finally:
            if llm is not None:
                llm.close()


class _TokenCounter:
    """A logits processor that changes nothing and counts. llama.cpp calls it once per
    sampled token with the context so far, so its first call sees exactly the prompt. Stream
    chunks carry no usage, and this works the same for streams and whole answers."""

    def __init__(self, job: Job) -> None:
        self.prompt = 0
        self.sampled = 0
        self._job = job

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if self.sampled == 0:
            self.prompt = len(input_ids)
        self.sampled += 1
        self._job.generated = self.sampled
        return scores


def generate(llm: Llama, job: Job) -> Event:
    """Run one job to its end on this thread; return the closing event.

    Always streams: between chunks is where a cancel can take effect (a non-streaming call
    inside llama.cpp cannot be interrupted). The completion count includes the end-of-turn
    token when the model stops by itself: it was generated, and vLLM counts it too."""
    from llama_cpp import LogitsProcessorList

    counter = _TokenCounter(job)
    try:
        _parse_grammars(llm, job.params)
        # Each prompt evaluated whole, from an empty context: llama-cpp-python otherwise reuses
        # the longest prefix the last job left and evaluates only the rest, in batches of another
        # shape, whose float sums differ in the last bits. At temperature 0 one request then got
        # two answers (2 distinct in 8 tries here, depending on what ran before; 1 in 8 with
        # this). A small model's prompt costs little to evaluate again; the same request getting
        # the same answer is what evals, the cache and a user's retry count on.
        llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves it unannotated
        chunks = llm.create_chat_completion(**job.params, stream=True, logits_processor=LogitsProcessorList([counter]))
        try:
            for chunk in chunks:
                if job.cancelled.is_set() or not job.emit("chunk", chunk):
                    return ("cancelled", None)
        finally:
            chunks.close()  # type: ignore[union-attr]  # stream=True always gives an iterator
    except Exception as exc:
        return ("error", exc)
    return ("done", (counter.prompt, counter.sampled))


def _parse_grammars(llm: Llama, params: dict[str, Any]) -> None:
    """Have llama.cpp parse each grammar the job will sample with: one it cannot parse gives a
    null sampler that llama-cpp-python uses unchecked, which ends the process (a JSON schema
    such as ``{"anyOf": []}`` converts to such a grammar)."""
    import llama_cpp

    from turnout.providers.local.params import grammars  # it imports llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for param, text in grammars(params):
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        if not sampler:
            raise RequestError(
                "the embedded model cannot follow this JSON schema: llama.cpp cannot parse the grammar made from it",
                param=param,
                code="invalid_value",
            )
        llama_cpp.llama_sampler_free(sampler)


def embed(llm: Llama, job: Job) -> Event:
    """Embed ``job.params["input"]`` (a batch of texts) on this thread: ``("done", (vectors,
    tokens))``. Each text is checked first: llama.cpp fails on one of no tokens (and may take
    the process down with it) and would silently cut one longer than its batch."""
    texts: list[str] = job.params["input"]
    try:
        limit = llm.n_batch
        for i, text in enumerate(texts):
            n = len(llm.tokenize(text.encode("utf-8")))
            if n == 0:
                raise ValueError(f"input {i} holds no tokens")
            if n > limit:
                raise ValueError(f"input {i} has {n} tokens: they exceed context window of {limit}")
        if job.cancelled.is_set():
            return ("cancelled", None)
        vectors, tokens = llm.embed(texts, normalize=True, truncate=False, return_count=True)
    except Exception as exc:
        return ("error", exc)
    return ("done", (vectors, tokens))


def load_llama(path: str, n_ctx: int, threads: int, embedding: bool = False) -> Llama:
    from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

    if embedding:
        # One vector per text (mean pooling), a whole context's worth of tokens per text.
        return Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_MEAN,
            verbose=False,
        )
    # verbose=False also silences llama.cpp's own C-level logging during load.
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
