"""`rxrec bench serve` end to end, seconds long: a small GPT4Rec, a real Triton, the report's schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.serve.triton_server import default_venv

pytestmark = pytest.mark.slow
LEVEL_KEYS = {"requests_per_min", "p50_ms", "p95_ms", "p99_ms", "max_ms", "errors", "achieved_rps", "versions"}


@pytest.mark.timeout(900)  # a small GPT4Rec, a real Triton, several load levels
def test_bench_serve_smoke_writes_report(tmp_path) -> None:
    if not (default_venv() / "bin" / "python").exists():
        pytest.skip("serving venv missing: run infra/triton/setup.sh")
    args = ["bench", "serve", "--quick", "--seq-lens", "20", "--rates", "20:100", "--duration", "1",
            "--warmup", "0.5", "--workers", "1", "--set", "gpt4rec.dim=16", "--set", "gpt4rec.layers=1",
            "--set", "data.n_products=200", "--preferred-batch-sizes", "4,8", "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((tmp_path / "serve.json").read_text())
    assert report["benchmark"] == "serve" and report["machine"]["cpu_count"]
    assert report["server"]["max_batch_size"] >= 1 and "perf_analyzer" in report["load_generator"]
    assert report["load_generator"]["perf_analyzer"]["reason"]
    assert report["server"]["preferred_batch_sizes"] == [4, 8]  # and Triton loaded a config with them
    run = report["results"]["20"]
    assert run["target"] is None and run["passed"] is None  # no target for length 20
    assert "random weights" in run["source"] or "champion" in run["source"]
    (level,) = run["levels"]
    assert LEVEL_KEYS <= set(level) and level["target_rps"] == 100
    assert level["errors"] == 0 and level["requests"] == pytest.approx(100, abs=2)
    assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]
    assert level["requests_per_min"] == pytest.approx(6000, rel=0.2)
    assert run["ort_floor"]["batch1_p50_ms"] > 0 and run["ort_floor"]["batched"]
    markdown = (tmp_path / "serve.md").read_text()
    assert markdown.startswith("# Serving benchmark") and "| 20 | open loop | 100 |" in markdown


def test_bad_options_are_refused_clearly() -> None:
    from benchmarks.serve import parse_instances, parse_rates
    from pipelines.repository.versions import write_config

    assert parse_rates("50:500,1050;512:60", [50, 512]) == {50: [500.0, 1050.0], 512: [60.0]}
    assert parse_instances("50:1;512:2", [50, 512, 100], default=3) == {50: 1, 512: 2, 100: 3}
    import typer

    with pytest.raises(typer.BadParameter, match="no rates for sequence length"):
        parse_rates("50:500", [50, 512])
    with pytest.raises(typer.BadParameter, match="LENGTH:RATE"):
        parse_rates("50=500", [50])
    with pytest.raises(typer.BadParameter, match="counts must be >= 1"):
        parse_instances("50:0", [50], default=1)
    with pytest.raises(ValueError, match="above max_batch_size"):
        write_config(Path("/nonexistent"), "m", max_batch_size=8, top_k=5, n_items=10, preferred_batch_sizes=(16,))
