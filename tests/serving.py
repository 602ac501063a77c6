"""Start real processes for end-to-end tests: ``turnout serve`` and helpers to wait on ports."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

_SDK_CLIENTS: dict[tuple[str, str], openai.OpenAI] = {}


def sdk_client(base_url: str, api_key: str) -> openai.OpenAI:
    """The official SDK for ``base_url``, one per (url, key), closed by ``close_sdk_clients``
    (conftest does it after each module) so no pooled socket is left for the GC to find."""
    key = (base_url, api_key)
    if key not in _SDK_CLIENTS:
        _SDK_CLIENTS[key] = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    return _SDK_CLIENTS[key]


def close_sdk_clients() -> None:
    while _SDK_CLIENTS:
        _SDK_CLIENTS.popitem()[1].close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_in(first: int, last: int) -> int:
    """A port in ``first``-``last`` that nothing listens on now (for hosts that give tests a range)."""
    for port in random.sample(range(first, last + 1), last + 1 - first):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{last}")


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback test URL
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline_s}s")


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> int:
        """SIGTERM, as an orchestrator would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Process:
    """A helper server run as its own process (a fake upstream), controlled over HTTP."""

    def __init__(self, module: str, *args: str, ready_path: str = "/_requests") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(self.port), *args])
        wait_http(self.url + ready_path, 20, self.proc)

    def post(self, path: str, payload: Any) -> Any:
        req = urllib.request.Request(  # noqa: S310 - loopback test URL
            self.url + path, json.dumps(payload).encode(), {"content-type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback test URL
            return json.loads(resp.read())

    def requests(self) -> list[Any]:
        with urllib.request.urlopen(self.url + "/_requests", timeout=5) as resp:  # noqa: S310 - loopback
            result: list[Any] = json.loads(resp.read())
            return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def turnout_serve(
    cwd: Path,
    config: Path | None = None,
    ready_s: float = 60.0,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,  # e.g. resource limits for the server process
    extra: tuple[str, ...] = (),  # more `turnout serve` options, e.g. ("--workers", "2")
    port: int | None = None,  # None: one the kernel finds free
) -> Iterator[Served]:
    port = free_port() if port is None else port
    log = cwd / "turnout.log"
    args = [sys.executable, "-m", "turnout", "serve", "--port", str(port), *extra]
    if config is not None:
        args += ["--config", str(config)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=full_env, preexec_fn=preexec_fn
        )
    served = Served(proc, port, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", ready_s, proc)
        yield served
    finally:
        served.stop()


def turnout_cli(root: Path, *args: str) -> str:
    """``turnout ARGS`` in ``root`` with its ``turnout.yaml``; its output, having passed."""
    done = subprocess.run(
        [sys.executable, "-m", "turnout", *args, "--config", "turnout.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def release_cli(root: Path, *args: str) -> str:
    """``turnout release ARGS`` in ``root`` with its ``turnout.yaml``; its output, having passed."""
    return turnout_cli(root, "release", *args)
