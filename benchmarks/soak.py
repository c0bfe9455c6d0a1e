"""`rxrec bench soak`: GPT4Rec served by Triton at ~80% of its measured capacity for minutes on end.

A short benchmark says how fast the server is; a soak says whether it *stays* that way: whether
memory creeps up (a leak in the Python backend, the stub's shared memory, gRPC buffers), whether
latency drifts, whether errors appear after thousands of requests. The command serves the same
model, with the same Triton config, as `rxrec bench serve`, measures capacity with a short
closed-loop probe (or takes --rate), then runs one open-loop level at fraction x capacity for
--duration seconds and reports every --window seconds: requests, errors, latency percentiles,
server RSS (tritonserver plus every child: the Python backend stubs) and server CPU.

Verdicts, with thresholds stated in the report:
- memory: a least-squares slope of server RSS over time after a memory warm-up (arenas, caches and
  gRPC buffers grow to their working size in the first minute) and end-minus-start after it;
  growth if slope >= 1 MB/min or end-minus-start >= 5% of the start;
- latency drift: p99 of the last third of the run vs the first third; drift if it is 1.5x higher
  and at least 2 ms higher;
- errors: error rate <= 0.1%; and the offered rate must be met (answers >= 95% of the target rate),
  or the run did not soak at the load it claims.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from benchmarks.serve import TARGETS
from benchmarks.trained import TRAIN_BUDGET_S
from pipelines.core.config import PROJECT_ROOT

WORK_DIR = PROJECT_ROOT / "var" / "bench" / "soak"
# Memory: 1 MB/min at the default ~1,400 req/s is ~12 bytes per request: any object leaked per
# request (a Python object is >= 28 bytes, a tensor far more) exceeds it; allocator noise in a flat
# run stays well below it (a slope fitted over 50+ samples). 5% catches a step that a slope hides.
SLOPE_LIMIT_MB_PER_MIN = 1.0
GROWTH_LIMIT = 0.05
MEMORY_WARMUP_S = 60.0
P99_DRIFT_RATIO = 1.5
P99_DRIFT_MIN_MS = 2.0
ERROR_RATE_LIMIT = 0.001
RATE_MET_FRACTION = 0.95
CLIENT_LAG_LIMIT_MS = 10.0  # above it the load generator was starved: latency is not the server's alone


# ---------------------------------------------------------------------------------------- analysis
def memory_growth(t_s: Sequence[float], rss_mb: Sequence[float], *, warmup_s: float = MEMORY_WARMUP_S,
                  slope_limit_mb_per_min: float = SLOPE_LIMIT_MB_PER_MIN,
                  growth_limit: float = GROWTH_LIMIT) -> dict[str, Any]:
    """Whether RSS grows over a run: slope (MB/min, least squares) and end-minus-start after warm-up.

    `start`/`end` are the means of the first and last few samples after the warm-up (up to 3, a
    third of them at most), so one noisy sample decides nothing. Needs 3 samples after the warm-up.
    """
    t, rss = np.asarray(t_s, dtype=float), np.asarray(rss_mb, dtype=float)
    if t.shape != rss.shape or t.ndim != 1:
        raise ValueError(f"t_s and rss_mb must be 1-D and of one length, got {t.shape} and {rss.shape}")
    kept = t >= warmup_s
    if kept.sum() < 3:
        raise ValueError(f"memory growth needs >= 3 samples after the {warmup_s:g} s warm-up, got "
                         f"{int(kept.sum())}: run longer or use a shorter --window/--memory-warmup")
    t, rss = t[kept], rss[kept]
    slope_per_s, intercept = np.polyfit(t, rss, 1)
    k = max(1, min(3, len(t) // 3))
    start, end = float(rss[:k].mean()), float(rss[-k:].mean())
    slope = float(slope_per_s * 60)
    relative = (end - start) / start if start > 0 else math.inf
    growth = slope >= slope_limit_mb_per_min or relative >= growth_limit
    return {
        "warmup_s": warmup_s, "samples": len(t), "span_s": round(float(t[-1] - t[0]), 1),
        "slope_mb_per_min": round(slope, 3), "start_mb": round(start, 1), "end_mb": round(end, 1),
        "end_minus_start_mb": round(end - start, 1), "relative_growth": round(relative, 4),
        "min_mb": round(float(rss.min()), 1), "max_mb": round(float(rss.max()), 1),
        "fit_intercept_mb": round(float(intercept), 3),
        "slope_limit_mb_per_min": slope_limit_mb_per_min, "growth_limit": growth_limit,
        "growth": bool(growth),
        "verdict": ("growth" if growth else "no growth")
        + f" (slope {slope:+.2f} MB/min vs limit {slope_limit_mb_per_min:g}; end-start {end - start:+.1f} MB "
          f"= {relative:+.1%} vs limit {growth_limit:.0%})",
    }


def latency_drift(done_s: np.ndarray, latency_ms: np.ndarray, duration_s: float, *,
                  ratio_limit: float = P99_DRIFT_RATIO, min_ms: float = P99_DRIFT_MIN_MS) -> dict[str, Any]:
    """p99 of the answers in the first third of the run vs the last third (times from the run's start)."""
    done_s, latency_ms = np.asarray(done_s, dtype=float), np.asarray(latency_ms, dtype=float)
    first = latency_ms[done_s < duration_s / 3]
    last = latency_ms[done_s >= 2 * duration_s / 3]
    if not first.size or not last.size:
        raise ValueError(f"latency drift needs answers in the first and last third of {duration_s:g} s, got "
                         f"{first.size} and {last.size}")
    p_first, p_last = float(np.percentile(first, 99)), float(np.percentile(last, 99))
    ratio = p_last / p_first if p_first > 0 else math.inf
    drift = ratio >= ratio_limit and p_last - p_first >= min_ms
    return {"p99_first_third_ms": round(p_first, 3), "p99_last_third_ms": round(p_last, 3),
            "ratio": round(ratio, 3), "ratio_limit": ratio_limit, "min_increase_ms": min_ms, "drift": bool(drift)}


# ---------------------------------------------------------------------------------------- server
@dataclass(frozen=True)
class ServerSample:
    """Memory and CPU time of tritonserver and its children (the Python backend stubs) at one moment."""

    at: float  # time.monotonic()
    rss_mb: float  # server + children
    server_rss_mb: float
    children_rss_mb: float
    processes: int
    cpu_s: float  # user + system, server + children


def sample_server(pid: int) -> ServerSample:
    """RSS and CPU time of the server process tree (children listed anew: a stub may be restarted)."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss = {p.pid: 0.0 for p in procs}
    cpu = 0.0
    for proc in procs:
        try:
            rss[proc.pid] = proc.memory_info().rss / 2**20
            times = proc.cpu_times()
            cpu += times.user + times.system
        except psutil.Error:  # exited between listing and reading
            pass
    children = sum(v for k, v in rss.items() if k != pid)
    return ServerSample(at=time.monotonic(), rss_mb=round(rss[pid] + children, 2), server_rss_mb=round(rss[pid], 2),
                        children_rss_mb=round(children, 2), processes=len(procs), cpu_s=cpu)


# ---------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class SoakConfig:
    duration_s: float
    window_s: float
    warmup_s: float  # load sent before the measured part (not counted)
    memory_warmup_s: float  # measured, but left out of the memory fit
    capacity_fraction: float
    rate: float | None  # None: probe capacity first
    probe_s: float
    seq_len: int
    workers: int
    catalogue: str = ""  # synthetic:N or an S3-Rec file: its trained model (benchmarks/trained.py); "": the demo's
    train_budget_s: float = TRAIN_BUDGET_S


def validate(config: SoakConfig) -> None:
    """typer.BadParameter with what to change for options that cannot make a soak."""
    if not config.duration_s > 0:
        raise typer.BadParameter(f"--duration must be > 0 seconds, got {config.duration_s:g}")
    if not 0 < config.window_s <= config.duration_s:
        raise typer.BadParameter(f"--window must be in (0, --duration={config.duration_s:g}], got {config.window_s:g}")
    if config.duration_s / config.window_s < 3:
        raise typer.BadParameter(f"--duration {config.duration_s:g} s holds fewer than 3 windows of "
                                 f"{config.window_s:g} s: shorten --window or lengthen --duration")
    if not 0 < config.capacity_fraction <= 1:
        raise typer.BadParameter(f"--capacity-fraction must be in (0, 1], got {config.capacity_fraction:g}")
    if config.rate is not None and not config.rate > 0:
        raise typer.BadParameter(f"--rate must be > 0 requests/s (or 0 to probe capacity), got {config.rate:g}")
    if config.warmup_s < 0 or config.memory_warmup_s < 0:
        raise typer.BadParameter("--warmup and --memory-warmup must be >= 0 seconds")
    if config.memory_warmup_s > config.duration_s - 2 * config.window_s:
        raise typer.BadParameter(f"--memory-warmup {config.memory_warmup_s:g} s leaves fewer than 3 RSS samples "
                                 f"of a {config.duration_s:g} s run: lower it or lengthen --duration")
    if config.seq_len < 1 or config.workers < 1:
        raise typer.BadParameter("--seq-len and --workers must be >= 1")
    if not config.probe_s > 0:
        raise typer.BadParameter(f"--probe-seconds must be > 0, got {config.probe_s:g}")
    if config.catalogue:
        from benchmarks.trained import parse_catalogues

        if len(parse_catalogues(config.catalogue)) != 1:
            raise typer.BadParameter(f"--catalogue names one catalogue, got {config.catalogue!r}")


def run(config: SoakConfig, server: Any, settings: Any, work_dir: Path = WORK_DIR,
        echo: Any = typer.echo, overrides: list[str] | None = None) -> dict[str, Any]:
    """Serve, probe (unless a rate is given), soak; the report's payload."""
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))  # parallel runs stay apart
    try:
        return _run(config, server, settings, run_dir, echo, overrides or [])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run(config: SoakConfig, server: Any, settings: Any, run_dir: Path, echo: Any,
         overrides: list[str]) -> dict[str, Any]:
    from benchmarks.load import LoadGenerator, LoadLevel, WindowStats, merged_samples
    from benchmarks.serve import WORK_DIR as SERVE_DIR
    from benchmarks.serve import (
        _measured,
        cpu_seconds,
        full_sessions,
        machine_busy_s,
        prepare_models,
        write_served_models,
    )
    from benchmarks.trained import parse_catalogues, trained_gpt4rec
    from pipelines.serve.triton_server import TritonServer, find_free_port

    n_items, length = settings.data.n_products, config.seq_len
    repo = run_dir / "triton_repo"
    if config.catalogue:  # the trained model `bench serve` serves for this catalogue (the same cache)
        (catalogue,) = parse_catalogues(config.catalogue)
        trained = trained_gpt4rec(catalogue, overrides, SERVE_DIR / "trained", budget_s=config.train_budget_s,
                                  echo=echo)
        n_items = trained["n_items"]
        model = write_served_models(repo, Path(trained["onnx"]), [length], server, source=trained["source"],
                                    benchmark="soak")[length]
        model["catalogue"] = trained["catalogue"]
    else:  # the same model as `bench serve --random-weights` (its export cache) or the demo's champion
        model = prepare_models(repo, [length], n_items, server, settings, SERVE_DIR, benchmark="soak")[length]
    name, sessions = model["model"], full_sessions(length, n_items)
    triton = TritonServer(repo, http_port=find_free_port(), grpc_port=find_free_port(),
                          metrics_port=find_free_port(), log_dir=run_dir / "logs")
    with triton, LoadGenerator(f"127.0.0.1:{triton.grpc_port}", workers=config.workers) as generator:
        triton.load(name, timeout_s=180)
        assert triton.pid is not None
        idle = sample_server(triton.pid)
        generator.run(name, sessions, LoadLevel(min(config.rate or 200.0, 200.0), duration_s=1.0, warmup_s=0.5))
        probe = None
        if config.rate is None:
            echo(f"probing capacity: closed loop for {config.probe_s:g} s ...")
            probe = _measured(triton, generator, name, sessions, LoadLevel(
                None, config.probe_s, warmup_s=min(2.0, config.probe_s / 2), concurrency=16 if length <= 64 else 4))
            if probe["errors"] or not probe["achieved_rps"] > 0:
                raise RuntimeError(f"the capacity probe failed ({probe['errors']} errors: "
                                   f"{probe['error_messages'][:2]}); pass --rate to skip it")
            target = round(config.capacity_fraction * probe["achieved_rps"], 1)
            echo(f"capacity {probe['achieved_rps']:,.0f} req/s (closed loop x{probe['concurrency']}); soaking at "
                 f"{config.capacity_fraction:.0%} = {target:,.0f} req/s for {config.duration_s:g} s")
        else:
            target = config.rate
            echo(f"soaking at {target:,.0f} req/s (given) for {config.duration_s:g} s")

        samples: list[dict[str, Any]] = []
        last = [(sample_server(triton.pid), cpu_seconds(generator.pids), machine_busy_s())]

        def on_window(w: WindowStats) -> None:
            s, load_s, busy_s = sample_server(triton.pid), cpu_seconds(generator.pids), machine_busy_s()
            s0, load0, busy0 = last[0]
            seconds = max(s.at - s0.at, 1e-9)
            cores, load_cores = (s.cpu_s - s0.cpu_s) / seconds, (load_s - load0) / seconds
            others = max(0.0, (busy_s - busy0) / seconds - cores - load_cores)  # other jobs on this machine
            last[0] = (s, load_s, busy_s)
            samples.append({**w.to_dict(), "rss_mb": s.rss_mb, "server_rss_mb": s.server_rss_mb,
                            "children_rss_mb": s.children_rss_mb, "processes": s.processes,
                            "server_cores": round(cores, 3), "load_generator_cores": round(load_cores, 3),
                            "others_cores": round(others, 3)})
            echo(f"[{w.end_s:7.1f}/{config.duration_s:g} s] {w.requests:7,d} req {w.errors:4d} err "
                 f"{w.rps:8,.1f} req/s  p50 {w.p50_ms:6.2f}  p95 {w.p95_ms:6.2f}  p99 {w.p99_ms:7.2f} ms  "
                 f"RSS {s.rss_mb:8.1f} MB  CPU cores server {cores:4.2f} load {load_cores:4.2f} others {others:4.2f}")

        level = LoadLevel(target, config.duration_s, warmup_s=config.warmup_s)
        t_start = time.monotonic()
        overall, _ = generator.run_windowed(name, sessions, level, config.window_s, on_window)
        wall_s = time.monotonic() - t_start
        records, origin = generator.last_records, generator.last_start + config.warmup_s
        live = triton.is_live()

    due, _, done, ok = merged_samples(records)
    counted = (due >= origin) & ok
    memory = memory_growth([w["end_s"] for w in samples], [w["rss_mb"] for w in samples],
                           warmup_s=config.memory_warmup_s)
    drift = latency_drift(done[counted] - origin, (done - due)[counted] * 1e3, config.duration_s)
    error_rate = overall.errors / overall.requests if overall.requests else math.nan
    rate_met = overall.achieved_rps >= RATE_MET_FRACTION * target
    checks = {
        "error_rate": {"value": round(error_rate, 6), "limit": ERROR_RATE_LIMIT, "ok": error_rate <= ERROR_RATE_LIMIT},
        "rate_met": {"value": overall.achieved_rps, "limit": round(RATE_MET_FRACTION * target, 1), "ok": rate_met},
        "memory": {"value": memory["slope_mb_per_min"], "limit": SLOPE_LIMIT_MB_PER_MIN, "ok": not memory["growth"]},
        "latency_drift": {"value": drift["ratio"], "limit": P99_DRIFT_RATIO, "ok": not drift["drift"]},
        "server_alive": {"value": live, "limit": True, "ok": live},
    }
    if length in TARGETS:  # bench serve's target for this length, over the whole run rather than per window
        p99_limit = TARGETS[length][1]
        checks["p99_target"] = {"value": overall.p99_ms, "limit": p99_limit, "ok": overall.p99_ms <= p99_limit}
    passed = all(c["ok"] for c in checks.values())
    per_request = memory["slope_mb_per_min"] * 2**20 / (target * 60) if target else math.nan
    summary = {
        "duration_s": config.duration_s, "window_s": config.window_s, "seq_len": length,
        "capacity_rps": probe["achieved_rps"] if probe else None, "capacity_fraction": config.capacity_fraction
        if probe else None, "target_rate": target, "achieved_rps": overall.achieved_rps,
        "requests": overall.requests, "errors": overall.errors, "error_rate": round(error_rate, 6),
        "p50_ms": overall.p50_ms, "p95_ms": overall.p95_ms, "p99_ms": overall.p99_ms, "max_ms": overall.max_ms,
        "send_lag_p99_ms": overall.send_lag_p99_ms,
        "rss_idle_mb": idle.rss_mb, "rss_start_mb": memory["start_mb"], "rss_end_mb": memory["end_mb"],
        "rss_growth_mb_per_min": memory["slope_mb_per_min"], "rss_end_minus_start_mb": memory["end_minus_start_mb"],
        "rss_growth_bytes_per_request": round(per_request, 2), "memory_growth": memory["growth"],
        "p99_first_third_ms": drift["p99_first_third_ms"], "p99_last_third_ms": drift["p99_last_third_ms"],
        "latency_drift": drift["drift"], "server_alive_after": live, "wall_s": round(wall_s, 1),
        "others_cores_max": max((w["others_cores"] for w in samples), default=0.0), "passed": passed,
    }
    return {
        "summary": summary, "checks": checks, "memory": memory, "latency_drift": drift,
        "config": asdict(config), "model": model,
        "server": {"triton": "tritonserver 2.51 (nvidia-pytriton 0.7.0), Python backend + onnxruntime",
                   **server.__dict__, "preferred_batch_sizes": list(server.preferred_batch_sizes)},
        "load_generator": {"tool": "benchmarks/load.py run_windowed (open loop, unary gRPC, spawned "
                           "processes, threads engine)", "workers": config.workers, "warmup_s": config.warmup_s},
        "capacity_probe": probe, "overall": overall.to_dict(), "windows": samples,
    }


# ---------------------------------------------------------------------------------------- report
def markdown(payload: dict[str, Any], plot_name: str | None = "soak.png") -> str:
    s, c, m, d = payload["summary"], payload["checks"], payload["memory"], payload["latency_drift"]
    cfg = payload["config"]
    load = (f"{s['capacity_fraction']:.0%} of the measured capacity ({s['capacity_rps']:,.0f} req/s, closed loop)"
            if s["capacity_rps"] else "a given rate (no capacity probe)")
    lines = [
        (f"# Soak test: GPT4Rec (length {s['seq_len']}) through Triton at {s['target_rate']:,.0f} req/s "
        f"for {s['duration_s']:g} s"), "",
        (f"Load: open loop at {load}, {cfg['workers']} load processes, {cfg['warmup_s']:g} s warm-up not counted, "
        f"windows of {s['window_s']:g} s. Server: {payload['server']['triton']}, instance_count="
        f"{payload['server']['instance_count']}, max_batch_size={payload['server']['max_batch_size']}. "
        f"Model: {payload['model']['source']}."), "",
        (f"**Overall: {'PASS' if s['passed'] else 'FAIL'}** - {s['requests']:,} requests, {s['errors']} errors "
        f"({s['error_rate']:.4%}); {s['achieved_rps']:,.1f} req/s answered; p50 {s['p50_ms']} ms, p95 {s['p95_ms']} "
        f"ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms; client send lag p99 {s['send_lag_p99_ms']} ms. "
        f"Memory: {m['verdict']}."), "",
        "| check | measured | limit | result |", "|---|---:|---|---|",
        f"| error rate | {s['error_rate']:.4%} | <= {ERROR_RATE_LIMIT:.1%} | {_ok(c['error_rate'])} |",
        (f"| offered rate met | {s['achieved_rps']:,.1f} req/s | >= {RATE_MET_FRACTION:.0%} of "
        f"{s['target_rate']:,.0f} | {_ok(c['rate_met'])} |"),
        (f"| server RSS slope after {m['warmup_s']:g} s | {m['slope_mb_per_min']:+.3f} MB/min "
        f"({s['rss_growth_bytes_per_request']:+.1f} B/request) | < {m['slope_limit_mb_per_min']:g} MB/min "
        f"| {_ok(c['memory'])} |"),
        (f"| server RSS end - start after {m['warmup_s']:g} s | {m['end_minus_start_mb']:+.1f} MB "
        f"({m['relative_growth']:+.2%}; {m['start_mb']} -> {m['end_mb']} MB) | < {m['growth_limit']:.0%} "
        f"| {_ok(c['memory'])} |"),
        (f"| p99 last third vs first third | {d['p99_last_third_ms']} vs {d['p99_first_third_ms']} ms "
        f"(x{d['ratio']}) | < x{d['ratio_limit']:g} or < +{d['min_increase_ms']:g} ms | {_ok(c['latency_drift'])} |"),
        f"| server alive at the end | {s['server_alive_after']} | true | {_ok(c['server_alive'])} |",
        *([(f"| p99 over the whole run | {c['p99_target']['value']} ms | <= {c['p99_target']['limit']:g} ms "
           f"(`bench serve`'s target) | {_ok(c['p99_target'])} |")] if "p99_target" in c else []),
        "",
        (f"Server RSS is tritonserver plus its children (the Python backend stubs), idle {s['rss_idle_mb']} MB "
        "before load. Growth means slope >= the limit or end - start >= the limit; start and end are the means "
        "of the first and last up-to-3 samples after the memory warm-up (arenas, caches and gRPC buffers "
        "reach their working size in it). At this rate 1 MB/min is ~"
        f"{2**20 / (s['target_rate'] * 60):.0f} bytes per request: any per-request leak exceeds it."),
    ]
    if s["send_lag_p99_ms"] > CLIENT_LAG_LIMIT_MS or s["others_cores_max"] >= 0.2:
        lines += ["", (f"Note: other jobs used up to {s['others_cores_max']} cores of this {os.cpu_count()}-core "
                       f"machine during a window and requests left the load generator up to "
                       f"{s['send_lag_p99_ms']} ms late (p99): latency here includes CPU contention, so re-run on a "
                       "quiet machine before reading latency; errors and memory still count.")]
    if plot_name:
        lines += ["", f"![latency and server memory over time]({plot_name})"]
    lines += ["", ("| window end s | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms | RSS MB "
              "(server + stubs) | CPU cores: server / load gen / others |"),
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for w in payload["windows"]:
        lines.append(f"| {w['end_s']:g} | {w['requests']:,} | {w['errors']} | {w['rps']:,.1f} | {w['p50_ms']} | "
                     f"{w['p95_ms']} | {w['p99_ms']} | {w['max_ms']} | {w['rss_mb']} ({w['server_rss_mb']} + "
                     f"{w['children_rss_mb']}) | {w['server_cores']} / {w['load_generator_cores']} / "
                     f"{w['others_cores']} |")
    errors = payload["overall"]["error_messages"]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors)]
    return "\n".join(lines)


def _ok(check: dict[str, Any]) -> str:
    return "pass" if check["ok"] else "FAIL"


def plot(payload: dict[str, Any], path: Path) -> Path:
    """Latency percentiles, throughput/errors and server RSS (with the fitted line) per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.track.plots import save_figure

    windows, m = payload["windows"], payload["memory"]
    t = np.array([w["end_s"] for w in windows]) / 60
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for key, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", "-.")):
        axes[0].plot(t, [w[key] for w in windows], style, label=key.removesuffix("_ms"))
    axes[0].set_ylabel("latency ms")
    axes[0].legend(loc="upper left")
    axes[0].set_title(f"Soak at {payload['summary']['target_rate']:,.0f} req/s: "
                      f"{'PASS' if payload['summary']['passed'] else 'FAIL'}")
    axes[1].plot(t, [w["rps"] for w in windows], label="answers/s")
    axes[1].axhline(payload["summary"]["target_rate"], color="grey", lw=0.8, ls=":", label="target")
    axes[1].set_ylabel("req/s")
    errors = [w["errors"] for w in windows]
    if any(errors):
        ax = axes[1].twinx()
        ax.bar(t, errors, width=(t[1] - t[0]) * 0.8 if len(t) > 1 else 0.1, color="red", alpha=0.4)
        ax.set_ylabel("errors", color="red")
    axes[1].legend(loc="lower left")
    axes[2].plot(t, [w["rss_mb"] for w in windows], "o-", ms=3, label="server + stubs RSS")
    axes[2].plot(t, [w["server_rss_mb"] for w in windows], ":", label="tritonserver")
    fit_t = t[t * 60 >= m["warmup_s"]]
    axes[2].plot(fit_t, m["fit_intercept_mb"] + m["slope_mb_per_min"] * fit_t, "k--", lw=1,
                 label=f"fit {m['slope_mb_per_min']:+.2f} MB/min")
    axes[2].axvspan(0, m["warmup_s"] / 60, color="grey", alpha=0.15, label="memory warm-up")
    axes[2].set_ylabel("MB")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="center right", fontsize=8)
    return save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------------------------- CLI
def register(bench: typer.Typer) -> None:
    @bench.command("soak")
    def soak(
        duration: float = typer.Option(600.0, help="measured seconds at the soak rate"),
        capacity_fraction: float = typer.Option(0.8, help="soak rate as a fraction of the probed capacity"),
        seq_len: int = typer.Option(50, help="session length served (every session full length)"),
        rate: float = typer.Option(1000.0, help="requests/s to soak at (default: the length-50 target's "
                                   "60,000/min); 0: probe capacity, then use --capacity-fraction"),
        catalogue: str = typer.Option("synthetic:100000", help="whose trained GPT4Rec to serve: synthetic:N or an "
                                      "S3-Rec file, trained and cached as `bench serve` does; '': the demo's "
                                      "champion, else random weights at data.n_products"),
        train_budget: float = typer.Option(TRAIN_BUDGET_S, help="seconds of GPT4Rec training if the catalogue's model is "
                                           "not cached yet"),
        window: float = typer.Option(10.0, help="seconds per reported window (and per server memory sample)"),
        warmup: float = typer.Option(10.0, help="seconds of load before the measured part (not counted)"),
        memory_warmup: float = typer.Option(-1.0, help="measured seconds left out of the memory fit; "
                                            f"-1: {MEMORY_WARMUP_S:g} s, capped at a quarter of --duration"),
        probe_seconds: float = typer.Option(10.0, help="length of the closed-loop capacity probe"),
        workers: int = typer.Option(2, help="load generator processes"),
        instance_count: int = typer.Option(0, help="model instances; 0: what `bench serve` uses for this length"),
        out_dir: str = typer.Option("", help="where soak.json/.md/.png go (default: reports/)"),
        overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override section.key=value")] = None,
    ) -> None:
        """Serve GPT4Rec at ~80% of measured capacity for 10 minutes: errors, latency, server memory over time."""
        from benchmarks.common import REPORTS, write_report
        from benchmarks.serve import DEFAULT_INSTANCES, ServerConfig, parse_instances
        from pipelines.core.config import load_settings

        settings = load_settings(overrides=overrides or [])
        if memory_warmup < 0:
            memory_warmup = min(MEMORY_WARMUP_S, duration / 4)
        config = SoakConfig(duration_s=duration, window_s=window, warmup_s=warmup, memory_warmup_s=memory_warmup,
                            capacity_fraction=capacity_fraction, rate=rate or None, probe_s=probe_seconds,
                            seq_len=seq_len, workers=workers, catalogue=catalogue, train_budget_s=train_budget)
        validate(config)
        if instance_count < 0:
            raise typer.BadParameter(f"--instance-count must be >= 1 (or 0 for the default), got {instance_count}")
        instances = ({seq_len: instance_count} if instance_count else
                     parse_instances(DEFAULT_INSTANCES, [seq_len], settings.serve.instance_count))
        server = ServerConfig(max_batch_size=settings.serve.max_batch_size, instance_count=instances,
                              intra_op_threads=1, max_queue_delay_us=2000, preferred_batch_sizes=())
        payload = run(config, server, settings, overrides=overrides or [])
        out = Path(out_dir) if out_dir else REPORTS
        path = write_report("soak", payload, markdown(payload), out)
        plot(payload, out / "soak.png")
        s = payload["summary"]
        typer.echo(f"{'PASS' if s['passed'] else 'FAIL'}: {s['requests']:,} requests, {s['errors']} errors, "
                   f"p50/p95/p99 {s['p50_ms']}/{s['p95_ms']}/{s['p99_ms']} ms; {payload['memory']['verdict']}; "
                   f"p99 drift x{payload['latency_drift']['ratio']}")
        typer.echo(f"written: {path}, {path.with_suffix('.md')}, {out / 'soak.png'}")
        if not s["passed"]:  # a benchmark reports, like `bench serve`; the report says what failed
            failed = [k for k, v in payload["checks"].items() if not v["ok"]]
            typer.secho(f"soak failed: {', '.join(failed)} (see {path.with_suffix('.md')})", fg=typer.colors.RED,
                        err=True)
