"""`rxrec bench scale`: growth judged against n log n, a stage that stops its world, the report end to end."""

import json

import pytest
import typer
from typer.testing import CliRunner

from benchmarks.scale import (
    CHAIN,
    SizeRun,
    StageRun,
    WorldSize,
    growth,
    markdown,
    nlogn_exponent,
    parse_sizes,
    parse_stages,
    payload,
    run_size,
)
from pipelines.cli import app


def _run(events: int, seconds: dict[str, float]) -> SizeRun:
    run = SizeRun(WorldSize(1000, events // 10), events)
    run.stages = [StageRun(stage, "ok", wall, wall, 1.0) for stage, wall in seconds.items()]
    return run


def test_sizes_and_stages_are_parsed_in_order_and_bad_ones_named():
    assert parse_sizes("15000:120000, 3000:12000") == [WorldSize(3000, 12000), WorldSize(15000, 120000)]
    for bad, words in (("3000", "PRODUCTS:USERS"), ("a:b", "PRODUCTS:USERS"), ("50:12000", "at least 100"),
                       ("", "no world")):
        with pytest.raises(typer.BadParameter, match=words):
            parse_sizes(bad)
    assert parse_stages("validate, generate") == ("generate", "validate")
    assert parse_stages("") == CHAIN
    with pytest.raises(typer.BadParameter, match="deploy"):
        parse_stages("generate,deploy")


def test_growth_flags_a_quadratic_stage_not_a_linear_one_nor_a_short_one():
    assert 1.0 < nlogn_exponent(1e5, 1e6) < 1.2
    small = _run(2_000_000, {"linear": 20.0, "quadratic": 20.0, "startup": 2.0})
    large = _run(20_000_000, {"linear": 200.0, "quadratic": 2000.0, "startup": 9.0})
    g = growth([small, large])
    assert g["linear"]["exponent"] == pytest.approx(1.0) and not g["linear"]["worse_than_nlogn"]
    assert g["quadratic"]["exponent"] == pytest.approx(2.0) and g["quadratic"]["worse_than_nlogn"]
    assert not g["startup"]["judged"] and not g["startup"]["worse_than_nlogn"]  # under 10 s: start-up cost
    text = markdown(payload([small, large], ("linear", "quadratic", "startup"), [], 7200.0, 20.0), plot_name=None)
    assert "quadratic" in text.split("worse than n log n between")[1] and "**met**" in text
    # The target is set for the ~100x world: a run that stops below 10M events is not judged on it.
    text = markdown(payload([small], ("linear",), [], 7200.0, 20.0), plot_name=None)
    assert "**not judged: the target is for a world of >= 10,000,000 events**" in text


def test_a_failing_stage_stops_its_world_and_the_report_names_it(tmp_path):
    size = WorldSize(150, 500)
    # The data gate refuses the world (too few products for this setting): validate fails, sequences never runs.
    run = run_size(size, ("generate", "validate", "sequences"), ["validate.min_products=100000"], tmp_path,
                   chain_limit_s=600, kill_above_gb=20.0, echo=lambda *_: None)
    assert [s.stage for s in run.stages] == ["generate", "validate"]
    assert run.stages[0].status == "ok" and run.events and run.events > 1000
    assert run.stages[1].status == "failed", run.stages[1].error
    assert run.stages[0].peak_rss_gb > 0.05 and run.stages[0].cpu_s > 0
    data = payload([run], ("generate", "validate", "sequences"), [], 600, 20.0)
    assert data["verdict"]["stopped_at"]["stage"] == "validate" and not data["verdict"]["met"]
    assert "Stopped at **validate**" in markdown(data, plot_name=None)

    timed = run_size(size, ("generate",), [], tmp_path, chain_limit_s=0.3, kill_above_gb=20.0, echo=lambda *_: None)
    assert timed.stages[0].status == "timed out" and "stopped after" in timed.stages[0].error


def test_the_command_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["bench", "scale", "--sizes", "150:500,300:1000", "--stages",
                                      "generate,sequences", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "scale.json").read_text())
    assert [s["users"] for s in data["sizes"]] == [500, 1000]
    assert data["sizes"][1]["events"] > data["sizes"][0]["events"] > 0
    assert [s["stage"] for s in data["sizes"][0]["stages"]] == ["generate", "sequences"]
    assert data["benchmark"] == "scale" and (out / "scale.png").stat().st_size > 10_000
    assert "| sequences |" in (out / "scale.md").read_text()

    # --add measures one more world and keeps the others with the commit they were measured at.
    more = CliRunner().invoke(app, ["bench", "scale", "--sizes", "200:700", "--stages", "generate,sequences",
                                    "--out-dir", str(out), "--add"])
    assert more.exit_code == 0, more.output
    merged = json.loads((out / "scale.json").read_text())
    assert [s["users"] for s in merged["sizes"]] == [500, 700, 1000]
    assert [("measured" in s) for s in merged["sizes"]] == [True, False, True]
    assert merged["sizes"][0]["measured"]["code"] == data["code"]
    refused = CliRunner().invoke(app, ["bench", "scale", "--sizes", "200:700", "--stages", "generate",
                                       "--out-dir", str(out), "--add"])
    assert refused.exit_code != 0 and "measured differently" in refused.output
