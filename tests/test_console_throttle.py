"""Failed console logins (``turnout.console.throttle``): ten per client within five minutes,
in one process or counted together by workers sharing the supervisor's directory; an IPv6
client by its /64; the shared files stay small and go once their failures are old."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turnout.console.throttle import FAILURE_WINDOW_S, FAILURES_ALLOWED, SWEEP_S, Failures, client_key

NOW = 1_700_000_000.0


@pytest.fixture(params=["process", "shared"])
def failures(request: pytest.FixtureRequest, tmp_path: Path) -> Failures:
    return Failures(tmp_path / "failed-logins" if request.param == "shared" else None)


def test_ten_failures_throttle_until_the_oldest_leaves_the_window(failures: Failures) -> None:
    for n in range(FAILURES_ALLOWED):
        assert not failures.throttled("192.0.2.7", NOW + n)
        failures.failed("192.0.2.7", NOW + n)
    assert failures.throttled("192.0.2.7", NOW + FAILURES_ALLOWED)
    assert not failures.throttled("192.0.2.8", NOW + FAILURES_ALLOWED)  # another client
    assert failures.throttled("192.0.2.7", NOW + FAILURE_WINDOW_S - 0.5)
    assert not failures.throttled("192.0.2.7", NOW + FAILURE_WINDOW_S + 0.5)  # the first has aged out


def test_workers_sharing_the_directory_count_one_clients_failures_together(tmp_path: Path) -> None:
    folder = tmp_path / "failed-logins"
    one, two = Failures(folder), Failures(folder)
    for n in range(FAILURES_ALLOWED // 2):
        one.failed("192.0.2.7", NOW + n)
        two.failed("192.0.2.7", NOW + n)
    assert one.throttled("192.0.2.7", NOW + 10) and two.throttled("192.0.2.7", NOW + 10)
    assert Failures(folder).throttled("192.0.2.7", NOW + 10)  # a worker started since
    [kept] = folder.iterdir()
    assert "192.0.2.7" not in kept.name and oct(kept.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("address", "same", "other"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:3::1"),
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.8"),
        ("unknown", "unknown", "192.0.2.7"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64(failures: Failures, address: str, same: str, other: str) -> None:
    """A host handed a /64 had 2^64 addresses, ten guesses each."""
    for n in range(FAILURES_ALLOWED):
        failures.failed(address, NOW + n)
    assert failures.throttled(same, NOW + 10) and not failures.throttled(other, NOW + 10)
    assert client_key(address) == client_key(same) != client_key(other)


def test_a_clients_file_stays_small_over_days_of_slow_guessing(tmp_path: Path) -> None:
    folder = tmp_path / "failed-logins"
    failures = Failures(folder)
    t = NOW
    for _ in range(2_000):  # nine guesses a window, never throttled, for days
        t += FAILURE_WINDOW_S / 9
        assert not failures.throttled("192.0.2.7", t)
        failures.failed("192.0.2.7", t)
    [kept] = folder.iterdir()
    assert kept.stat().st_size < 4 * FAILURES_ALLOWED * 24 + 24


def test_files_of_clients_with_no_recent_failure_are_swept(tmp_path: Path) -> None:
    folder = tmp_path / "failed-logins"
    failures = Failures(folder)
    failures.failed("192.0.2.7", NOW)
    [old] = folder.iterdir()
    stale = os.stat(old).st_mtime - FAILURE_WINDOW_S - SWEEP_S - 1
    os.utime(old, (stale, stale))
    failures.failed("192.0.2.8", NOW + SWEEP_S)  # a sweep is due: the first client's file goes
    assert [p.name for p in folder.iterdir()] != [old.name] and not old.exists()
    assert len(list(folder.iterdir())) == 1


def test_a_missing_directory_is_no_failure_and_no_crash(tmp_path: Path) -> None:
    """The supervisor removes its directory as it stops: a worker still answering goes on."""
    failures = Failures(tmp_path / "gone" / "failed-logins")
    failures.failed("192.0.2.7", NOW)
    assert not failures.throttled("192.0.2.7", NOW)
