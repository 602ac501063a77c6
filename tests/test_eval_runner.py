"""run_eval with a fake ``call``: pairing, repeats, the concurrency bound, errors, progress."""

from __future__ import annotations

import asyncio
import io

import pytest

from turnout.offline.evals import Case, EvalResult, Expectation, Outcome, TextProgress, run_eval


def cases(n: int) -> list[Case]:
    return [
        Case(id=f"c{i}", expect=(Expectation("equals", {"value": str(i)}),), variables={"i": i}, tags=("t",))
        for i in range(n)
    ]


class FakeGateway:
    """Answers a case with its number, except where told to be wrong; tracks how many calls are
    in flight at once."""

    def __init__(self, wrong: dict[str, set[int]] | None = None, delay: float = 0.005) -> None:
        self.wrong = wrong or {}
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, release: str, case: Case) -> Outcome:
        self.calls.append((release, case.id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        assert case.variables is not None
        i = case.variables["i"]
        out = "wrong" if i in self.wrong.get(release, set()) else str(i)
        return Outcome(out, latency_ms=10.0 * (i + 1), cost_usd=0.001 if release == "v1" else 0.002)


async def test_both_releases_run_on_the_same_cases_and_are_paired() -> None:
    gw = FakeGateway(wrong={"v1": set(range(10, 20)) | {30, 31}, "v2": {30, 31, 0, 1}})
    result = await run_eval(cases(40), gw, candidate="v2", baseline="v1", concurrency=4)
    assert result.releases == ("v1", "v2") and result.repeat == 1 and result.concurrency == 4
    assert sorted(gw.calls) == sorted((r, f"c{i}") for i in range(40) for r in ("v1", "v2"))
    # interleaved: a case's baseline run is queued right before its candidate run
    assert [(r.release, r.case_id) for r in result.runs[:4]] == [("v1", "c0"), ("v2", "c0"), ("v1", "c1"), ("v2", "c1")]
    base, cand = result.summaries["v1"], result.summaries["v2"]
    assert (base.passed_runs, cand.passed_runs) == (28, 36)
    assert base.pass_rate == pytest.approx(0.7) and cand.pass_rate == pytest.approx(0.9)
    assert base.interval.low < 0.7 < base.interval.high
    c = result.comparison
    assert c is not None
    assert (c.both_pass, c.candidate_only, c.baseline_only, c.both_fail) == (26, 10, 2, 2)
    assert c.difference == pytest.approx(0.2) and c.p_value == pytest.approx(158 / 4096)
    # latency: 10, 20, …, 400 ms; cost: every run counts, divided by passed runs
    assert cand.p50_ms == pytest.approx(205.0) and cand.p95_ms == pytest.approx(380.5)
    assert cand.cost_usd == pytest.approx(0.08) and cand.cost_per_pass == pytest.approx(0.08 / 36)
    assert result.pass_share("c0", "v1") == 1.0 and result.pass_share("c0", "v2") == 0.0
    failed = result.runs_for("c0", "v2")[0]
    assert not failed.passed and "expected '0', got 'wrong'" in failed.scores[0].detail


@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_concurrency_bound_is_respected(concurrency: int) -> None:
    gw = FakeGateway(delay=0.01)
    await run_eval(cases(20), gw, candidate="v2", baseline="v1", concurrency=concurrency)
    assert gw.max_in_flight == concurrency  # reached, never exceeded


async def test_repeats_run_each_case_k_times() -> None:
    flaky: dict[tuple[str, int], int] = {}

    async def call(release: str, case: Case) -> Outcome:
        assert case.variables is not None
        key = (release, case.variables["i"])
        flaky[key] = flaky.get(key, 0) + 1
        # c0 passes 2 of 3 times on v2; everything else always passes
        ok = not (release == "v2" and case.id == "c0" and flaky[key] == 2)
        return Outcome(str(case.variables["i"]) if ok else "x", latency_ms=1.0)

    result = await run_eval(cases(4), call, candidate="v2", baseline="v1", concurrency=1, repeat=3)
    assert len(result.runs) == 24 and {r.repeat for r in result.runs} == {0, 1, 2}
    s = result.summaries["v2"]
    assert (s.runs, s.passed_runs, s.cases) == (12, 11, 4)
    assert s.pass_rate == pytest.approx((2 / 3 + 3) / 4)
    assert result.comparison is not None and result.comparison.baseline_only == 0  # 2/3 is still a majority pass
    assert s.cost_usd is None and s.cost_per_pass is None


async def test_without_baseline_there_is_no_comparison() -> None:
    result = await run_eval(cases(3), FakeGateway(), candidate="v2")
    assert result.releases == ("v2",) and result.baseline is None and result.comparison is None
    assert set(result.summaries) == {"v2"}


async def test_errors_fail_the_case_without_scoring() -> None:
    async def call(release: str, case: Case) -> Outcome:
        if case.id == "c1":
            raise ConnectionError("upstream gone")
        if case.id == "c2":
            return Outcome("", latency_ms=5.0, error="502 all targets failed")
        return Outcome("0", latency_ms=7.0)

    result = await run_eval(cases(3), call, candidate="v2", concurrency=2)
    s = result.summaries["v2"]
    assert (s.passed_runs, s.errors) == (1, 2)
    assert s.p50_ms == 7.0  # errored runs are not timed
    (raised,) = result.runs_for("c1", "v2")
    assert raised.outcome.error == "ConnectionError: upstream gone"
    assert raised.scores[0].detail == "request failed: ConnectionError: upstream gone"
    (returned,) = result.runs_for("c2", "v2")
    assert returned.scores[0].detail == "request failed: 502 all targets failed"


async def test_the_judge_is_wired_through() -> None:
    seen: list[str] = []

    async def judge(prompt: str, target: str) -> str:
        seen.append(target)
        return '{"pass": true, "reason": "fine"}' if "good answer" in prompt else '{"pass": false, "reason": "bad"}'

    async def call(release: str, case: Case) -> Outcome:
        return Outcome("good answer" if release == "v2" else "meh", latency_ms=1.0)

    judged = [Case(id="j", expect=(Expectation("judge", {"rubric": "be good"}),), variables={})]
    result = await run_eval(judged, call, candidate="v2", baseline="v1", judge=judge, judge_target="judge-m")
    assert seen == ["judge-m", "judge-m"]
    assert result.summaries["v2"].passed_runs == 1 and result.summaries["v1"].passed_runs == 0


async def test_progress_is_reported_after_every_run() -> None:
    ticks: list[tuple[int, int]] = []
    await run_eval(cases(5), FakeGateway(), candidate="v2", baseline="v1", progress=lambda d, t: ticks.append((d, t)))
    assert ticks == [(i, 10) for i in range(1, 11)]


async def test_bad_arguments() -> None:
    gw = FakeGateway()
    with pytest.raises(ValueError, match="at least 1"):
        await run_eval(cases(1), gw, candidate="v2", concurrency=0)
    with pytest.raises(ValueError, match="no cases"):
        await run_eval([], gw, candidate="v2")
    with pytest.raises(ValueError, match="same release"):
        await run_eval(cases(1), gw, candidate="v2", baseline="v2")


async def test_result_round_trips_through_a_dict() -> None:
    result = await run_eval(cases(6), FakeGateway(wrong={"v2": {1}}), candidate="v2", baseline="v1", repeat=2)
    assert EvalResult.from_dict(result.to_dict()) == result


def test_text_progress_bar() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = TextProgress(tty, width=10)
    for i in range(1, 5):
        bar(i, 4)
    text = tty.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    assert "[#####-----] 2/4  50%" in text and "[##########] 4/4 100%" in text

    log = io.StringIO()  # not a terminal: one line per tenth, no carriage returns
    bar = TextProgress(log, width=10)
    for i in range(1, 101):
        bar(i, 100)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in log.getvalue() and lines[-1].startswith("eval [##########] 100/100")
