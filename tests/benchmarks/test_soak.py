"""`rxrec bench soak`: the growth and drift verdicts on synthetic series, and a short real soak."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from benchmarks.load import LoadGenerator, LoadLevel, WorkerRecord, window_stats
from benchmarks.soak import SoakConfig, latency_drift, memory_growth, register, validate
from pipelines.serve.triton_server import default_venv
from tests.serve.fake_grpc_triton import fake_triton_server


def _minutes(n: int, every_s: float = 10.0) -> np.ndarray:
    return np.arange(1, n + 1) * every_s


def test_flat_memory_with_noise_is_no_growth() -> None:
    rng = np.random.default_rng(0)
    t = _minutes(60)  # 10 minutes of 10 s windows
    rss = 600 + rng.normal(0, 2.0, t.size)  # +-2 MB of allocator noise
    rss[:6] = np.linspace(450, 600, 6)  # the first minute grows to the working size: the warm-up
    got = memory_growth(t, rss, warmup_s=60)
    assert not got["growth"] and got["verdict"].startswith("no growth")
    assert abs(got["slope_mb_per_min"]) < 0.5 and got["samples"] == 55
    assert 595 < got["start_mb"] < 605 and abs(got["relative_growth"]) < 0.02
    # The same series judged without the warm-up is growth: the warm-up matters, and is stated.
    assert memory_growth(t, rss, warmup_s=0)["growth"]


def test_leaking_memory_is_growth() -> None:
    rng = np.random.default_rng(1)
    t = _minutes(60)
    rss = 600 + 3.0 * t / 60 + rng.normal(0, 2.0, t.size)  # 3 MB/min: ~36 bytes per request at 1,400 req/s
    got = memory_growth(t, rss, warmup_s=60)
    assert got["growth"] and got["verdict"].startswith("growth")
    assert got["slope_mb_per_min"] == pytest.approx(3.0, abs=0.3)
    assert got["end_minus_start_mb"] == pytest.approx(3.0 * (t[-2] - t[7]) / 60, abs=5)


def test_slow_leak_and_step_are_judged_by_their_own_limit() -> None:
    t = _minutes(60)
    slow = 600 + 0.5 * t / 60  # 0.5 MB/min: under the slope limit, 4.5 MB = 0.75% over 9 minutes
    assert not memory_growth(t, slow, warmup_s=60)["growth"]
    step = np.where(t < 400, 600.0, 660.0)  # one 10% step late in the run: end - start catches it
    got = memory_growth(t, step, warmup_s=60)
    assert got["growth"] and got["relative_growth"] == pytest.approx(0.1, abs=0.001)
    assert memory_growth(t, step, warmup_s=60, growth_limit=0.2, slope_limit_mb_per_min=100)["growth"] is False


def test_memory_growth_refuses_too_few_samples() -> None:
    with pytest.raises(ValueError, match="needs >= 3 samples after the 60 s warm-up"):
        memory_growth([10, 20, 70, 80], [1, 1, 1, 1], warmup_s=60)
    with pytest.raises(ValueError, match="of one length"):
        memory_growth([1, 2, 3], [1, 2], warmup_s=0)


def test_latency_drift() -> None:
    rng = np.random.default_rng(2)
    done = np.sort(rng.uniform(0, 600, 60_000))
    flat = rng.gamma(4, 1.5, done.size)
    got = latency_drift(done, flat, 600)
    assert not got["drift"] and got["ratio"] == pytest.approx(1.0, abs=0.1)
    rising = flat * (1 + done / 200)  # latency 4x by the end: a queue that keeps growing
    got = latency_drift(done, rising, 600)
    assert got["drift"] and got["p99_last_third_ms"] > 1.5 * got["p99_first_third_ms"]
    tiny = flat / 100 * (1 + done / 200)  # 2x, but in tenths of a millisecond: noise, not drift
    assert not latency_drift(done, tiny, 600)["drift"]
    with pytest.raises(ValueError, match="first and last third"):
        latency_drift(done[done < 100], flat[done < 100], 600)


def test_window_stats_bins_by_answer_time_and_drops_the_warmup() -> None:
    # origin 10: a request due at 9 (warm-up) is dropped; answers at 10.5 and 11.9 fall in [10, 12).
    due = np.array([9.0, 10.0, 10.5, 11.0, 12.0])
    done = np.array([10.2, 10.5, 11.9, 12.4, 12.1])
    record = WorkerRecord(due=due, sent=due + 0.001, done=done, ok=np.array([True, True, True, False, True]),
                          versions=["1"] * 5, first_items=np.ones(5, dtype=np.int64), errors=Counter())
    first = window_stats([record], 0, 10.0, 12.0, origin=10.0)
    assert (first.requests, first.ok, first.errors) == (2, 2, 0)
    assert first.p50_ms == pytest.approx(950.0) and first.max_ms == pytest.approx(1400.0)
    last = window_stats([record], 1, 12.0, 14.0, origin=10.0, last=True)
    assert (last.requests, last.errors, last.start_s, last.end_s) == (2, 1, 2.0, 4.0)
    assert last.p99_ms == pytest.approx(100.0)


@pytest.fixture()
def fake_triton() -> Iterator[str]:
    with fake_triton_server(0.002, version="3", max_workers=32) as url:
        yield url


def test_windowed_run_reports_each_window_while_the_load_goes_on(fake_triton: str) -> None:
    sessions = [np.asarray([1, 2, 3]), np.asarray([4, 5, 6]), np.asarray([7, 8, 9]), np.asarray([1, -2, 3])]
    level = LoadLevel(rate_per_s=200, duration_s=3.0, warmup_s=0.5)
    seen: list[tuple[float, int]] = []
    with LoadGenerator(fake_triton, workers=2) as generator:
        overall, windows = generator.run_windowed("m", sessions, level, window_s=1.0,
                                                  on_window=lambda w: seen.append((time.monotonic(), w.index)))
        end = generator.last_start + level.warmup_s + level.duration_s
    assert [i for _, i in seen] == [0, 1, 2] and [w.end_s for w in windows] == [1.0, 2.0, 3.0]
    assert seen[0][0] < end - 1.0  # the first window was reported while the load still ran
    assert overall.requests == pytest.approx(600, abs=3) and overall.errors == pytest.approx(150, abs=3)
    assert sum(w.requests for w in windows) == overall.requests  # every answer in exactly one window
    assert sum(w.errors for w in windows) == overall.errors
    assert any("INVALID_ARGUMENT" in m and "negative id -2" in m for m in overall.error_messages)
    for w in windows:
        assert w.requests == pytest.approx(200, abs=25) and w.errors == pytest.approx(w.requests / 4, abs=8)
        assert 2.0 <= w.p50_ms <= w.p99_ms < 200
    assert overall.versions == {"3": overall.ok}


def test_windowed_run_refuses_what_it_cannot_do() -> None:
    level = LoadLevel(rate_per_s=10, duration_s=2.0)
    with pytest.raises(RuntimeError, match="not started"):
        LoadGenerator("127.0.0.1:1").run_windowed("m", [np.ones(3)], level, window_s=1.0)
    generator = LoadGenerator("127.0.0.1:1", engine="asyncio")
    generator._procs = [object()]  # "started" enough enough to reach the checks
    with pytest.raises(ValueError, match="needs engine='threads'"):
        generator.run_windowed("m", [np.ones(3)], level, window_s=1.0)
    generator.engine = "threads"
    with pytest.raises(ValueError, match=r"window_s must be in \(0, duration_s=2.0\]"):
        generator.run_windowed("m", [np.ones(3)], level, window_s=5.0)


def test_bad_soak_options_say_what_to_change() -> None:
    good = SoakConfig(duration_s=600, window_s=10, warmup_s=10, memory_warmup_s=60, capacity_fraction=0.8,
                      rate=None, probe_s=10, seq_len=50, workers=2)
    validate(good)
    cases = {
        "--capacity-fraction must be in": {"capacity_fraction": 1.5},
        "fewer than 3 windows": {"window_s": 300},
        r"--window must be in \(0": {"window_s": 0},
        "--rate must be > 0": {"rate": -5.0},
        "--memory-warmup 590 s leaves fewer than 3": {"memory_warmup_s": 590},
        "--duration must be > 0": {"duration_s": 0},
    }
    for message, change in cases.items():
        with pytest.raises(typer.BadParameter, match=message):
            validate(SoakConfig(**{**good.__dict__, **change}))


@pytest.mark.slow
@pytest.mark.timeout(600)  # a 20 s soak after a capacity probe and a Triton start
def test_short_real_soak_writes_sane_reports(tmp_path) -> None:
    if not (default_venv() / "bin" / "python").exists():
        pytest.skip("serving venv missing: run infra/triton/setup.sh")
    bench = typer.Typer()
    bench.callback()(lambda: None)  # a group, so `soak` is a subcommand as under `rxrec bench`
    register(bench)
    args = ["soak", "--duration", "20", "--window", "5", "--rate", "200", "--warmup", "2", "--workers", "1",
            "--seq-len", "50", "--catalogue", "", "--set", "gpt4rec.dim=16", "--set", "gpt4rec.layers=1",
            "--set", "data.n_products=200", "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.count(" req/s  p50 ") == 4  # a progress line per window

    report = json.loads((tmp_path / "soak.json").read_text())
    s = report["summary"]
    assert report["benchmark"] == "soak" and s["duration_s"] == 20 and s["target_rate"] == 200
    assert s["capacity_rps"] is None and report["capacity_probe"] is None  # --rate skips the probe
    assert s["requests"] == pytest.approx(4000, abs=20) and s["errors"] == 0 and s["error_rate"] == 0
    assert s["achieved_rps"] == pytest.approx(200, rel=0.05)
    assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"] < 1000
    assert 50 < s["rss_idle_mb"] and 50 < s["rss_start_mb"] < 20_000 and 50 < s["rss_end_mb"] < 20_000
    assert isinstance(s["memory_growth"], bool) and isinstance(s["passed"], bool)
    assert s["server_alive_after"] is True
    checks = report["checks"]
    assert checks["error_rate"]["ok"] and checks["rate_met"]["ok"] and checks["server_alive"]["ok"]
    assert checks["p99_target"] == {"value": s["p99_ms"], "limit": 20.0, "ok": s["p99_ms"] <= 20.0}  # whole run
    assert s["passed"] == all(c["ok"] for c in checks.values())

    windows = report["windows"]
    assert [w["end_s"] for w in windows] == [5, 10, 15, 20]
    assert sum(w["requests"] for w in windows) == pytest.approx(s["requests"], abs=5)  # answers binned once
    for w in windows:
        assert w["requests"] == pytest.approx(1000, abs=30) and w["errors"] == 0
        assert w["rss_mb"] == pytest.approx(w["server_rss_mb"] + w["children_rss_mb"], abs=0.1)
        assert w["children_rss_mb"] > 0 and w["processes"] >= 2  # the Python backend stub is counted
        assert w["server_cores"] > 0
    m = report["memory"]  # the verdict is the pure function's on the recorded series
    again = memory_growth([w["end_s"] for w in windows], [w["rss_mb"] for w in windows], warmup_s=m["warmup_s"])
    assert again == m and s["rss_growth_mb_per_min"] == m["slope_mb_per_min"]

    markdown = (tmp_path / "soak.md").read_text()
    assert markdown.startswith("# Soak test: GPT4Rec (length 50) through Triton at 200 req/s for 20 s")
    assert "| p99 over the whole run |" in markdown
    assert "< 1 MB/min" in markdown and "< 5%" in markdown and "![latency and server memory" in markdown
    assert markdown.count("\n| 5 |") + markdown.count("\n| 10 |") == 2
    png = (tmp_path / "soak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
