"""The full cost of each plan option: fixed monthly costs, people (review, escalation), success
rates per option, break-even on the total and the chart; known answers worked out by hand on
the synthetic week of ``test_plan.py``, and the CLI's flags."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_plan import SELF_HOSTED, week
from tests.test_plan_cli import rows, seed
from turnout.cli.main import main
from turnout.offline.plan import SpecError, parse_bedrock, parse_managed, parse_self_hosted, plan
from turnout.offline.plan.full import (
    DEFAULT_FIXED,
    FixedCosts,
    FullCost,
    People,
    chart_range,
    full_cost,
    parse_fixed,
    parse_success,
)
from turnout.offline.plan.full_render import full_chart, full_json, full_lines
from turnout.offline.plan.model import Kind, Plan

FIXED: dict[Kind, FixedCosts] = {
    "managed": FixedCosts(on_call=0, observability=100, security_review=250),  # $350
    "bedrock": FixedCosts(on_call=0, observability=100, security_review=250),  # $350
    "self-hosted": FixedCosts(on_call=2000, observability=300, security_review=500),  # $2,800
}
PEOPLE = People(review_usd=2.0, escalation_usd=5.0, review_rate=0.1)


def planned(given: dict[Kind, float]) -> tuple[Plan, FullCost]:
    spec = parse_self_hosted(SELF_HOSTED)
    result = plan(
        week(),
        spec,
        parse_managed("input=5,output=25,target=gpt"),
        parse_bedrock("qwen.qwen3-32b-v1:0"),
        given_success=given,
    )
    return result, full_cost(result, week(), spec, FIXED, PEOPLE)


def test_full_cost_known_answer_with_a_success_rate_per_option() -> None:
    # 39,600 requests a month (test_plan.py). gpt observed 0.9; Bedrock 0.85 and self-hosted 0.8 given.
    # People per request = 0.1 review rate · $2 + (1 − success) · $5 escalation.
    result, full = planned({"bedrock": 0.85, "self-hosted": 0.8})
    gpt = full.option("gpt")
    # Model $1,108.80; people 39,600 · (0.2 + 0.1 · 5 = 0.7) = $27,720; fixed $350.
    assert gpt.success == pytest.approx(0.9)
    assert gpt.people_usd == pytest.approx(27_720)
    assert gpt.total_usd == pytest.approx(1108.8 + 350 + 27_720)  # $29,178.80
    assert gpt.cost_per_completed_task == pytest.approx(29_178.8 / 35_640)  # ÷ 39,600 · 0.9 = $0.818709
    assert gpt.idle_usd is None

    bedrock = full.option("bedrock qwen.qwen3-32b-v1:0")
    # Model $28.9872; people 39,600 · (0.2 + 0.15 · 5 = 0.95) = $37,620; fixed $350.
    assert result.option(bedrock.name).success.source.startswith("given for this option")
    assert bedrock.people_usd == pytest.approx(37_620)
    assert bedrock.total_usd == pytest.approx(28.9872 + 350 + 37_620)  # $37,998.9872
    assert bedrock.cost_per_completed_task == pytest.approx(37_998.9872 / 33_660)  # ÷ 39,600 · 0.85 = $1.128906

    hosted = full.option("self-hosted")
    # Model $1,080 (3 replicas all day); people 39,600 · (0.2 + 0.2 · 5 = 1.2) = $47,520; fixed $2,800.
    assert hosted.total_usd == pytest.approx(1080 + 2800 + 47_520)  # $51,400
    assert hosted.cost_per_completed_task == pytest.approx(51_400 / 31_680)  # ÷ 39,600 · 0.8 = $1.622475
    # Idle GPUs: utilization 28.512M / 124.416M = 0.229167, so $1,080 · 0.770833 = $832.50 paid for nothing.
    assert hosted.idle_usd == pytest.approx(832.5)

    # Break-even on the total, always-on vs gpt: T_S − T_M = a + b·k with
    # b = 47,520 − 27,720 − 1,108.8 = +18,691.2 per unit of k: at 0.8 success self-hosted never catches up.
    by_pair = {(b.self_hosted, b.versus): b.k for b in full.break_evens}
    assert by_pair[("self-hosted", "gpt")] is None
    assert by_pair[("self-hosted (night scale-down)", "gpt")] is None


def test_full_break_even_known_answer_with_equal_success() -> None:
    # Every option at 0.9: people cancel out, b = −M(1) = −1,108.8 per unit of k.
    result, full = planned({"managed": 0.9, "bedrock": 0.9, "self-hosted": 0.9})
    by_pair = {(b.self_hosted, b.versus): b.k for b in full.break_evens}
    # Always-on: u = 2.5 replicas per unit of k every hour; n replicas cost 24 · $15 · n = $360 n on
    # k ∈ ((n−1)/2.5, n/2.5]. T_S − T_M = 2,800 − 350 + 360 n − 1,108.8 k ≤ 0 at k = (2,450 + 360 n) / 1,108.8,
    # inside its step when 2,450 + 360 n ≤ 443.52 n, i.e. n ≥ 29.33: n = 30, k = 13,250 / 1,108.8 = 11.94986
    # (n = 29 would cross at 12,890 / 1,108.8 = 11.625 > 29 / 2.5 = 11.6: outside its step).
    k = by_pair[("self-hosted", "gpt")]
    assert k == pytest.approx(13_250 / 1108.8)
    # Night scale-down: day hours u = 2.5, night u = 0.25, $15 per replica-hour-of-day. On (3.6, 4.0]:
    # 12 · 10 day + 12 · 1 night = 132 slots = $1,980, crossing at (2,450 + 1,980) / 1,108.8 = 3.99531 ∈ (3.6, 4.0].
    # The step before, (3.2, 3.6]: 120 slots = $1,800, crossing at 4,250 / 1,108.8 = 3.833 > 3.6: none.
    assert by_pair[("self-hosted (night scale-down)", "gpt")] == pytest.approx(4430 / 1108.8)
    # Against Bedrock ($28.99 per unit of k) self-hosted's $900 per unit at scale never catches up.
    assert by_pair[("self-hosted", "bedrock qwen.qwen3-32b-v1:0")] is None
    text = "\n".join(full_lines(result, full))
    assert f"self-hosted vs gpt: {13_250 / 1108.8 * 39_600 / 1000:.3g}k requests/month (11.9x today)" in text
    assert "self-hosted vs bedrock qwen.qwen3-32b-v1:0: never below 1000x today's volume" in text


def test_without_fixed_costs_or_people_the_break_even_is_the_model_one() -> None:
    spec = parse_self_hosted(SELF_HOSTED)
    result = plan(week(), spec, parse_managed("input=5,output=25,target=gpt"))
    zero: dict[Kind, FixedCosts] = {kind: FixedCosts() for kind in DEFAULT_FIXED}
    full = full_cost(result, week(), spec, zero, People())
    model = {(b.self_hosted, b.versus): b.first for b in result.break_evens}
    for b in full.break_evens:
        assert b.k == pytest.approx(model[(b.self_hosted, b.versus)])  # 360 / 1,108.8 for both (test_plan.py)
    for option in full.options:
        assert option.total_usd == pytest.approx(result.option(option.name).monthly_cost)


def test_chart_draws_each_option_against_volume() -> None:
    result, full = planned({"managed": 0.9, "bedrock": 0.9, "self-hosted": 0.9})
    svg = full_chart(result, full, week(), parse_self_hosted(SELF_HOSTED))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count('class="line"') == 4 and svg.count('class="point"') == 4 * 13
    assert "requests a month" in svg and "monthly cost against volume" in svg
    # The range runs to 1.5 × the largest finite break-even (always-on vs gpt, k = 11.95).
    ks = chart_range(full)
    assert ks[0] == 0 and ks[-1] == pytest.approx(1.5 * 13_250 / 1108.8) and len(ks) == 13
    # At k = 0 every line starts at its fixed cost plus the idle fleet: gpt $350 (the first point's hover).
    assert re.search(r"<title>gpt 0: \$350</title>", svg)


def test_json_has_every_figure() -> None:
    result, full = planned({"bedrock": 0.85, "self-hosted": 0.8})
    data = full_json(result, full)
    assert data["people"] == {"review_usd": 2.0, "escalation_usd": 5.0, "review_rate": 0.1}
    gpt = next(o for o in data["options"] if o["name"] == "gpt")
    assert gpt["fixed"]["total"] == 350 and gpt["total_usd"] == pytest.approx(29_178.8)
    assert {b["k"] for b in data["break_evens"]} == {None}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu:on_call=1", "KIND managed, bedrock or self-hosted"),
        ("managed", "expected KIND:key=value"),
        ("managed:pager=1", "unknown key(s) pager"),
        ("managed:on_call=-5", "on_call=-5: expected $ a month"),
        ("managed:on_call=x", "on_call=x: expected $ a month"),
        ("managed:on_call=inf", "on_call=inf: expected $ a month"),
    ],
)
def test_fixed_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_fixed([spec])


def test_fixed_spec_overrides_only_what_it_names() -> None:
    fixed = parse_fixed(["self-hosted:on_call=3000", "managed:observability=0,security_review=0"])
    assert fixed["self-hosted"] == FixedCosts(3000, DEFAULT_FIXED["self-hosted"].observability, 500)
    assert fixed["managed"].total == 0 and fixed["bedrock"] == DEFAULT_FIXED["bedrock"]


def test_success_rate_spec() -> None:
    assert parse_success("0.9") == (0.9, {})
    assert parse_success("managed=0.92,self-hosted=0.8") == (None, {"managed": 0.92, "self-hosted": 0.8})
    for bad, message in (("0", "expected a share"), ("1.5", "expected a share"), ("gpu=0.9", "expected managed")):
        with pytest.raises(SpecError, match=message):
            parse_success(bad)


@pytest.fixture
def config(tmp_path: Path) -> str:
    db = tmp_path / "ledger.db"
    seed(db, rows(time.time()))
    path = tmp_path / "turnout.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            store: {{kind: sqlite, path: {json.dumps(str(db))}}}
            targets:
              gpt:
                provider: openai
                base_url: "http://127.0.0.1:9/v1"
                model: gpt
                price: {{input_per_mtok: 3, output_per_mtok: 15}}
            tasks:
              support: {{route: [gpt], review_rate: 0.5, review_cost_usd: 1.5, escalation_cost_usd: 4}}
            """
        )
    )
    return str(path)


def invoke(config: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["plan", "--task", "support", *args, "--config", config])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_takes_people_from_the_task_and_flags_override(config: str) -> None:
    data = json.loads(invoke(config, "--format", "json"))["full_cost"]
    assert data["people"] == {"review_usd": 1.5, "escalation_usd": 4.0, "review_rate": 0.5}
    gpt = next(o for o in data["options"] if o["name"] == "gpt")
    # gpt observed 0.9: per request 0.5 · $1.5 + 0.1 · $4 = $1.15.
    requests = json.loads(invoke(config, "--format", "json"))["monthly"]["requests"]
    assert gpt["people_usd"] == pytest.approx(requests * 1.15)
    assert gpt["fixed"] == {"on_call": 0, "observability": 100, "security_review": 250, "total": 350}
    data = json.loads(
        invoke(
            config,
            "--format",
            "json",
            "--review-cost",
            "0",
            "--escalation-cost",
            "0",
            "--fixed",
            "managed:observability=0,security_review=0",
            "--success-rate",
            "self-hosted=0.5",
        )
    )
    gpt = next(o for o in data["full_cost"]["options"] if o["name"] == "gpt")
    assert gpt["total_usd"] == pytest.approx(gpt["model_usd"])
    hosted = next(o for o in data["full_cost"]["options"] if o["name"] == "self-hosted")
    assert hosted["success_rate"] == 0.5


def test_cli_table_and_chart(config: str, tmp_path: Path) -> None:
    svg = tmp_path / "plan.svg"
    text = invoke(config, "--chart", str(svg))
    for part in ("Full monthly cost", "on-call", "of which GPU idle", "review + escalation", "total a month"):
        assert part in text
    assert "Break-even on the full cost" in text
    assert svg.read_text().startswith("<svg") and 'class="line"' in svg.read_text()


def test_cli_errors(config: str, tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in (
        (["--fixed", "gpu:on_call=1"], "KIND managed, bedrock or self-hosted"),
        (["--success-rate", "2"], "expected a share"),
        (["--chart", str(tmp_path / "plan.png")], "SVG only"),
        (["--review-cost", "-1"], "-1"),
        (["--self-hosted", ""], "expected key=value"),  # `--self-hosted "$UNSET"` priced the defaults, unsaid
        (["--bedrock", " "], "not in turnout's Bedrock catalog"),
    ):
        result = runner.invoke(main, ["plan", "--task", "support", *args, "--config", config])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--self-hosted", "gpu_hour_usd=1,gpus=1,tokens_per_s=1e-300"], "more than 1,000,000 replicas"),
        (["--self-hosted", "gpu_hour_usd=1,gpus=1,tokens_per_s=10,min_replicas=2000000"], "check tokens_per_s"),
        (["--self-hosted", "gpu_hour_usd=1e308,gpus=4,tokens_per_s=3543"], "self-hosted: the monthly cost overflows"),
        (["--managed", "input=1e308,output=1e308"], "managed: the monthly cost overflows"),
        (["--fixed", "managed:on_call=1e308,observability=1e308"], "the monthly cost overflows"),
    ],
)
def test_cli_figures_past_any_fleet_are_one_line_errors(config: str, args: list[str], message: str) -> None:
    """Seen: ``tokens_per_s=1e-300`` printed a replica count of 300 digits and ``--format json``
    ended in a traceback (orjson: Integer exceeds 64-bit range); a price of 1e308 printed $inf."""
    for fmt in ("table", "json"):
        result = CliRunner().invoke(main, ["plan", "--task", "support", *args, "--format", fmt, "--config", config])
        assert result.exit_code == 1 and message in result.stderr, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
