"""`rxrec bench serve`: trained GPT4Rec models through the real Triton server under open-loop gRPC load.

The bar is 1mg's GPT4Rec on TensorRT/T4 (150 ms mean at 7,000 requests/min, sessions up to 512
events) over a real pharmacy's ~100k products. Here, on this machine's CPU cores, for every catalogue
(3k: the demo's world; 12k: Amazon Beauty; 100k: a generated world of that size): length 50 at
>= 60,000 requests/min with p99 <= 20 ms, length 512 at >= 7,000 requests/min with p99 <= 150 ms,
judged on the worst of `--repeats` runs of each level. Every catalogue's model is trained by the
pipeline's own stages (benchmarks/trained.py). Every session sent is *full* length (no padding: the
most work per request). The benchmark builds its own model repository (var/bench/serve/), starts and
stops its own tritonserver on free ports (its version read from the server), drives it with
benchmarks/load.py and compares with in-process ONNX Runtime on the same model (the floor).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from benchmarks.trained import TRAIN_BUDGET_S
from pipelines.core.config import PROJECT_ROOT

#: length -> (requests per minute at least, p99 ms at most)
TARGETS: dict[int, tuple[float, float]] = {50: (60_000, 20.0), 512: (7_000, 150.0)}
#: The `recommend` entry point (policy, placements, user vectors, BLS to gpt4rec) at length 50.
RECOMMEND_LENGTH, RECOMMEND_TARGET = 50, (30_000, 25.0)
DEFAULT_RECOMMEND_RATES = "525"  # requests/s: 5% above the target's 30,000/min, as 1,050/s is for 60,000
RECOMMEND_SESSIONS_PER_PLACEMENT = 64
DEFAULT_RATES = "50:500,1050;512:60,125"  # requests/s per length; the last one of each is above the target
QUICK_RATES = "50:1050;512:125"
# Length 50 is cheapest on one instance (one onnxruntime thread, the other core for gRPC and the client);
# length 512 is compute-bound and needs both cores: two instances (measured, reports/serve.md).
DEFAULT_INSTANCES = "50:1;512:2"
#: 1mg's catalogue is ~100k products; Amazon Beauty (12,101 items) is a real one; 3,000 is the demo's world.
DEFAULT_CATALOGUES = "synthetic:3000,../shared/datasets/amazon-beauty,synthetic:100000"
META_WIDTH, META_VOCAB = 8, 1000  # meta tokens per item, vocabulary: the generated world's order of size
SESSIONS_PER_LENGTH = 64
WORK_DIR = PROJECT_ROOT / "var" / "bench" / "serve"


@dataclass(frozen=True)
class ServerConfig:
    """The Triton model config the benchmark serves with (written by triton_repo.write_config)."""

    max_batch_size: int
    instance_count: dict[int, int]  # sequence length -> model instances
    intra_op_threads: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]


def parse_rates(text: str, seq_lens: list[int]) -> dict[int, list[float]]:
    """'50:500,1050;512:60' -> {50: [500, 1050], 512: [60]}; every length asked for needs rates."""
    rates: dict[int, list[float]] = {}
    for part in filter(None, (p.strip() for p in text.replace(" ", ";").split(";"))):
        length, sep, values = part.partition(":")
        try:
            if not sep:
                raise ValueError("missing ':'")
            rates[int(length)] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError as exc:
            raise typer.BadParameter(f"--rates entry {part!r} is not LENGTH:RATE,RATE ({exc})") from None
        if not rates[int(length)] or min(rates[int(length)]) <= 0:
            raise typer.BadParameter(f"--rates entry {part!r} needs positive requests/s")
    missing = [n for n in seq_lens if n not in rates]
    if missing:
        raise typer.BadParameter(f"--rates has no rates for sequence length(s) {missing}")
    return {n: rates[n] for n in seq_lens}


def parse_instances(text: str, seq_lens: list[int], default: int) -> dict[int, int]:
    """'2' -> every length 2; '50:1;512:2' -> per length; lengths not named get `default`."""
    text = text.strip()
    try:
        if text and ":" not in text:
            counts = dict.fromkeys(seq_lens, int(text))
        else:
            pairs = (part.split(":") for part in filter(None, (p.strip() for p in text.split(";"))))
            counts = {int(length): int(count) for length, count in pairs}
    except ValueError:
        raise typer.BadParameter(f"--instance-count {text!r} is not N or LENGTH:N;LENGTH:N") from None
    if any(c < 1 for c in counts.values()):
        raise typer.BadParameter(f"--instance-count {text!r}: counts must be >= 1")
    return {n: counts.get(n, default) for n in seq_lens}


def _source_digest() -> str:
    """Changes when the model or its export changes, so cached exports are rebuilt."""
    h = hashlib.sha256()
    for rel in ("pipelines/models/gpt4rec.py", "pipelines/export/onnx.py"):
        h.update((PROJECT_ROOT / rel).read_bytes())
    return h.hexdigest()[:10]


def champion_onnx(length: int, n_items: int) -> Path | None:
    """The newest model.onnx deployed by the demo in triton_repo/gpt4rec/ if it was exported for `length`
    and scores this catalogue's `n_items` (a demo run on other data scores another catalogue)."""
    from pipelines.core.config import Paths
    from pipelines.repository.metadata import read_model_metadata
    from pipelines.repository.versions import list_versions

    repo = Paths().triton_repo
    versions = list_versions(repo, "gpt4rec")
    if not versions:
        return None
    path = repo / "gpt4rec" / str(versions[-1]) / "model.onnx"
    if not path.is_file():
        return None
    meta = read_model_metadata(path)
    return path if (meta.max_len, meta.n_items) == (length, n_items) else None


def export_model(length: int, n_items: int, settings: Any, cache: Path) -> Path:
    """A GPT4Rec with params.yaml's architecture and random weights, exported like the pipeline does."""
    from pipelines.data.sequences import N_EVENT_KINDS

    g, top_k, opset = settings.gpt4rec, settings.export.top_k, settings.export.opset
    kinds = N_EVENT_KINDS if g.use_event_kinds else 0  # the served graph then has the event_types input too
    key = f"L{length}-n{n_items}-d{g.dim}-l{g.layers}-h{g.heads}-e{kinds}-k{top_k}-o{opset}-{_source_digest()}"
    out = cache / key
    if (out / "model.onnx").is_file():
        return out / "model.onnx"
    import torch

    from pipelines.export.onnx import export_onnx
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

    torch.manual_seed(0)
    meta_vocab, meta_width = (META_VOCAB, META_WIDTH) if g.use_meta else (0, 0)
    model = GPT4Rec(GPT4RecConfig.from_settings(g.model_copy(update={"max_len": length}), n_items,
                                                meta_vocab=meta_vocab, meta_width=meta_width, event_kinds=kinds))
    if meta_vocab:
        tokens = np.random.default_rng(0).integers(0, meta_vocab, size=(n_items + 1, meta_width))
        tokens[0] = 0
        model.set_item_tokens(tokens)
    tmp = cache / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_onnx(model.eval(), tmp, top_k, opset)
    try:
        tmp.rename(out)
    except OSError:  # a parallel run exported it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "model.onnx"


def full_sessions(length: int, n_items: int, count: int = SESSIONS_PER_LENGTH, seed: int = 0) -> list[np.ndarray]:
    """`count` sessions of exactly `length` real item ids (no padding: the most work per request)."""
    rng = np.random.default_rng(seed + length)
    return [rng.integers(1, n_items + 1, size=length, dtype=np.int64) for _ in range(count)]


def perf_analyzer_status() -> dict[str, Any]:
    """Whether NVIDIA's perf_analyzer can run here (it needs glibc >= 2.38)."""
    from pipelines.serve.triton_server import default_venv

    found = shutil.which("perf_analyzer") or next(
        (str(p) for p in [default_venv() / "bin" / "perf_analyzer"] if p.exists()), None
    )
    if not found:
        glibc = " ".join(platform.libc_ver()) or "unknown"
        return {"available": False, "reason": f"perf_analyzer is not installed (its builds need glibc >= 2.38; "
                f"this machine has {glibc}): rxrec's own load generator is used"}
    try:
        out = subprocess.run([found, "--help"], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "path": found, "reason": f"perf_analyzer does not run: {exc}"}
    if out.returncode not in (0, 1) or "GLIBC" in out.stderr:
        return {"available": False, "path": found,
                "reason": f"perf_analyzer does not run here: {out.stderr.strip()[:300]}"}
    return {"available": True, "path": found,
            "reason": "perf_analyzer runs here, but this benchmark reports rxrec's own generator "
                      "(same numbers for both lengths); compare with perf_analyzer by hand"}


def _batch_counts(triton: Any, model: str) -> tuple[float, float]:
    """(inferences, executions) of a model from Triton's Prometheus metrics: their ratio is the mean batch."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()

    def total(metric: str) -> float:
        return sum(float(v) for v in re.findall(metric + r'\{[^}]*model="' + re.escape(model) + r'"[^}]*\} (\S+)', text))

    return total("nv_inference_count"), total("nv_inference_exec_count")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (gone ones count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (not idle, not waiting on I/O) since boot."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _measured(triton: Any, generator: Any, model: str, sessions: list[np.ndarray], level: Any,
              payloads: list[bytes] | None = None) -> dict[str, Any]:
    """One load level plus where the CPU went: server (tritonserver + stubs), load generator, everyone else."""
    import time

    import psutil

    server_pids = [triton.pid, *(c.pid for c in psutil.Process(triton.pid).children(recursive=True))]
    counts0, server0, load0 = _batch_counts(triton, model), cpu_seconds(server_pids), cpu_seconds(generator.pids)
    machine0, t0 = machine_busy_s(), time.monotonic()
    result = generator.run(model, sessions, level, payloads=payloads)
    seconds, machine1 = time.monotonic() - t0, machine_busy_s()
    counts1 = _batch_counts(triton, model)
    server_s, load_s = cpu_seconds(server_pids) - server0, cpu_seconds(generator.pids) - load0
    busy = machine1 - machine0
    inferences, executions = counts1[0] - counts0[0], counts1[1] - counts0[1]
    return {**result.to_dict(), "cpu": {
        "server_cores": round(server_s / seconds, 2),
        "server_us_per_request": round(server_s / max(inferences, 1) * 1e6),
        "load_generator_cores": round(load_s / seconds, 2),
        "load_generator_us_per_request": round(load_s / max(inferences, 1) * 1e6),
        "others_cores": round(max(0.0, busy - server_s - load_s) / seconds, 2),  # other users of the machine
        "mean_batch": round(inferences / executions, 2) if executions else None,
    }}


def run(
    catalogues: list[Any],
    seq_lens: list[int],
    rates: dict[int, list[float]],
    *,
    repeats: int,
    duration_s: float,
    warmup_s: float,
    workers: int,
    capacity: bool,
    server: ServerConfig,
    settings: Any,
    overrides: list[str],
    train_budget_s: float,
    random_weights: bool = False,
    recommend_rates: Sequence[float] = (),
    work_dir: Path = WORK_DIR,
    engine: str = "threads",
    load_cpus: tuple[int, ...] = (),
    echo: Any = print,
) -> dict[str, Any]:
    """Per catalogue: its trained model (or random weights), served at every length and rate `repeats`
    times, then (trained models) the `recommend` entry point at `recommend_rates`; the report's payload."""
    import onnxruntime

    from benchmarks.trained import trained_gpt4rec

    results: list[dict[str, Any]] = []
    versions: set[str] = set()
    for catalogue in catalogues:
        if random_weights:
            if catalogue.products is None:
                raise typer.BadParameter("--random-weights needs synthetic:N catalogues (a size to export at)")
            model = {"onnx": None, "n_items": catalogue.products, "catalogue": catalogue.label, "training": None}
        else:
            echo(f"▶ {catalogue.label}: the trained model")
            model = trained_gpt4rec(catalogue, overrides, _mkdir(work_dir / "trained"), budget_s=train_budget_s,
                                    echo=echo)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=_mkdir(work_dir)))  # parallel runs stay apart
        try:
            version, served = _serve_catalogue(model, seq_lens, rates, run_dir, repeats=repeats,
                                               duration_s=duration_s, warmup_s=warmup_s, workers=workers,
                                               capacity=capacity, server=server, settings=settings, engine=engine,
                                               work_dir=work_dir, load_cpus=load_cpus, echo=echo,
                                               recommend_rates=list(recommend_rates), overrides=overrides)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        versions.add(version)
        results += served
    return {
        "server": {"triton": f"tritonserver {', '.join(sorted(versions))} (version read from the server; "
                             "nvidia-pytriton build), Python backend + onnxruntime",
                   "triton_version": sorted(versions), "grpc": True, **server.__dict__,
                   "preferred_batch_sizes": list(server.preferred_batch_sizes)},
        "load_generator": {"tool": "benchmarks/load.py (open loop, unary gRPC, spawned processes)",
                           "engine": engine, "workers": workers, "pinned_cpus": list(load_cpus),
                           "duration_s": duration_s, "warmup_s": warmup_s, "repeats": repeats,
                           "perf_analyzer": perf_analyzer_status()},
        "ort_floor_onnxruntime": onnxruntime.__version__ + " (main venv, in-process, batch=1 back to back)",
        "random_weights": random_weights,
        "passed": all(r["passed"] for r in results if r["passed"] is not None),
        "results": results,
        "note": _note(results),
    }


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_served_models(repo: Path, onnx: Path, seq_lens: list[int], server: ServerConfig, *, source: str,
                        benchmark: str) -> dict[int, dict[str, Any]]:
    """One Triton model gpt4rec_len<N> per length, all serving `onnx` (each with its own instance count)."""
    from pipelines.repository.metadata import read_model_metadata
    from pipelines.repository.versions import write_model_config, write_version

    meta = read_model_metadata(onnx)
    models: dict[int, dict[str, Any]] = {}
    for length in seq_lens:
        if length > meta.max_len:
            raise ValueError(f"{onnx} was exported with max_len {meta.max_len}; it cannot serve sessions of {length}")
        name = f"gpt4rec_len{length}"
        write_model_config(repo, name, meta, max_batch_size=server.max_batch_size,
                           instance_count=server.instance_count[length], intra_op_threads=server.intra_op_threads,
                           max_queue_delay_us=server.max_queue_delay_us,
                           preferred_batch_sizes=server.preferred_batch_sizes)
        write_version(repo, name, onnx, metadata={"benchmark": benchmark, "source": source})
        models[length] = {"model": name, "onnx": str(onnx), "source": source}
    return models


def random_export(length: int, n_items: int, settings: Any, work_dir: Path) -> tuple[Path, str]:
    """(model.onnx, how the report names it) of an untrained GPT4Rec at this length and catalogue size."""
    source = ("GPT4Rec with params.yaml's architecture, random weights (latency does not depend on "
              f"them), n_items={n_items}, exported by pipelines/export/onnx.py")
    return export_model(length, n_items, settings, work_dir / "models"), source


def prepare_models(repo: Path, seq_lens: list[int], n_items: int, server: ServerConfig, settings: Any,
                   work_dir: Path, *, benchmark: str) -> dict[int, dict[str, Any]]:
    """Write gpt4rec_len<N> into a Triton repository per length: the demo's champion when it was
    exported for that length, else a fresh export with random weights; {length: {model, onnx, source}}."""
    models: dict[int, dict[str, Any]] = {}
    for length in seq_lens:
        champion = champion_onnx(length, n_items)
        if champion is not None:
            shown = champion.relative_to(PROJECT_ROOT) if champion.is_relative_to(PROJECT_ROOT) else champion
            path, source = champion, f"the demo's trained champion ({shown})"
        else:
            path, source = random_export(length, n_items, settings, work_dir)
        models |= write_served_models(repo, path, [length], server, source=source, benchmark=benchmark)
    return models


def triton_version(triton: Any) -> str:
    """The server's own version string (GET /v2)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{triton.http_port}/v2", timeout=5) as response:
        return str(json.loads(response.read()).get("version", "unknown"))


def worst_of(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's repeats: the worst throughput and p99 (what the target is judged on) and their spread."""
    p99 = [lv["p99_ms"] for lv in repeats]
    rpm = [lv["requests_per_min"] for lv in repeats]
    return {"repeats": len(repeats), "requests_per_min": min(rpm), "p99_ms": max(p99),
            "p99_ms_spread": [min(p99), max(p99)], "requests_per_min_spread": [min(rpm), max(rpm)],
            "p50_ms": max(lv["p50_ms"] for lv in repeats), "errors": sum(lv["errors"] for lv in repeats)}


def meets(worst: dict[str, Any], target: tuple[float, float]) -> bool:
    min_rpm, max_p99 = target
    return worst["errors"] == 0 and worst["requests_per_min"] >= min_rpm and worst["p99_ms"] <= max_p99


def write_recommend(repo: Path, model: dict[str, Any], gpt4rec: dict[str, Any], overrides: Sequence[str] = ()
                    ) -> dict[str, Any]:
    """`recommend` as deploy writes it from the catalogue's training run (its popularity, rules, catalogue,
    safety and placement tables, search index and the model's own user vectors) over the served `gpt4rec`
    ({model, onnx}: scoring in process, recommend holds a copy of that file); {model, source, payloads}: the
    mixed placement requests (see serve_recommend) it is measured with."""
    import pandas as pd

    from benchmarks.serve_recommend import placement_payloads
    from pipelines.core.config import Paths, load_settings
    from pipelines.data.schema import CATALOGUE_FILE
    from pipelines.models.user_vectors import USERS_FILE
    from pipelines.pharmacy.served import PLACEMENTS
    from pipelines.repository.companions import deploy_recommend, recommend_tables
    from pipelines.repository.metadata import read_model_metadata

    gpt4rec_model = gpt4rec["model"]
    s = load_settings(overrides=[*model["overrides"], *overrides, f"serve.model_name={gpt4rec_model}"])
    paths = Paths(Path(model["workdir"]))
    users_file = paths.models / "gpt4rec" / USERS_FILE
    meta = read_model_metadata(Path(gpt4rec["onnx"]))
    tables, users_note = recommend_tables(s, paths, meta.n_items, users_file if users_file.is_file() else None)
    deploy_recommend(s, paths, repo, Path(gpt4rec["onnx"]), prepared=(tables, users_note))
    names = pd.read_parquet(paths.validated / CATALOGUE_FILE, columns=["name"])["name"].tolist()
    rng = np.random.default_rng(s.data.seed)
    payloads = [b for placement in PLACEMENTS for b in placement_payloads(
        "recommend", placement, names, tables, meta.n_items, rng, count=RECOMMEND_SESSIONS_PER_PLACEMENT)]
    payloads = [payloads[i] for i in rng.permutation(len(payloads))]
    return {"model": "recommend", "payloads": payloads,
            "source": (f"recommend as deployed (params.yaml policy, placements {', '.join(PLACEMENTS)} mixed, "
                       f"user vectors: {users_note}) over {gpt4rec_model}, "
                       + ("scored in process with its own copy of that model" if s.serve.recommend_scoring == "in_process"
                          else "called by BLS"))}


def _serve_catalogue(model: dict[str, Any], seq_lens: list[int], rates: dict[int, list[float]], run_dir: Path, *,
                     repeats: int, duration_s: float, warmup_s: float, workers: int, capacity: bool,
                     server: ServerConfig, settings: Any, engine: str, work_dir: Path, load_cpus: tuple[int, ...],
                     echo: Any, recommend_rates: list[float] = (), overrides: Sequence[str] = ()
                     ) -> tuple[str, list[dict[str, Any]]]:
    from benchmarks.load import LoadGenerator, LoadLevel, ort_floor
    from pipelines.serve.triton_server import TritonServer, find_free_port

    repo, n_items = run_dir / "triton_repo", model["n_items"]
    if model["onnx"] is None:  # random weights: one export per length at this catalogue size
        served = {}
        for length in seq_lens:
            onnx, source = random_export(length, n_items, settings, work_dir)
            served |= write_served_models(repo, onnx, [length], server, source=source, benchmark="serve")
    else:
        served = write_served_models(repo, Path(model["onnx"]), seq_lens, server, source=model["source"],
                                     benchmark="serve")
    entry = None
    if recommend_rates and model.get("workdir") is not None and RECOMMEND_LENGTH in served:
        echo(f"  {model['catalogue']}: writing recommend over {served[RECOMMEND_LENGTH]['model']} ...")
        entry = write_recommend(repo, model, served[RECOMMEND_LENGTH], overrides)
    results = []
    triton = TritonServer(repo, http_port=find_free_port(), grpc_port=find_free_port(),
                          metrics_port=find_free_port(), log_dir=run_dir / "logs")
    with triton, LoadGenerator(f"127.0.0.1:{triton.grpc_port}", workers=workers, engine=engine,
                               cpus=load_cpus) as generator:
        for length in seq_lens:
            triton.load(served[length]["model"], timeout_s=300)
        if entry is not None:
            triton.load(entry["model"], timeout_s=300)
        version = triton_version(triton)
        for length in seq_lens:
            name, sessions = served[length]["model"], full_sessions(length, n_items)
            floor = ort_floor(Path(served[length]["onnx"]), sessions, threads=server.intra_op_threads,
                              seconds=min(2.0, duration_s))
            levels, worst = _levels(triton, generator, name, sessions, None, rates[length], repeats=repeats,
                                    duration_s=duration_s, warmup_s=warmup_s,
                                    label=f"{model['catalogue']} length {length}", echo=echo)
            probe = None
            if capacity:
                probe = _measured(triton, generator, name, sessions, LoadLevel(
                    None, duration_s, warmup_s=warmup_s, concurrency=16 if length <= 64 else 4))
            target = TARGETS.get(length)
            results.append({
                "catalogue": model["catalogue"], "n_items": n_items, "length": length, **served[length],
                "training": model["training"],
                "target": {"requests_per_min": target[0], "p99_ms": target[1]} if target else None,
                "passed": any(meets(w, target) for w in worst.values()) if target else None,
                "ort_floor": floor.to_dict(),
                "levels": levels,
                "worst": worst,
                "capacity_closed_loop": probe,
            })
        if entry is not None:
            results.append(_serve_recommend(triton, generator, entry, model, recommend_rates, repeats=repeats,
                                            duration_s=duration_s, warmup_s=warmup_s, capacity=capacity, echo=echo))
    return version, results


def _levels(triton: Any, generator: Any, name: str, sessions: list[np.ndarray], payloads: list[bytes] | None,
            rates: list[float], *, repeats: int, duration_s: float, warmup_s: float, label: str,
            echo: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(every repeat of every rate, the worst repeat per rate) after a short warm-up at the first rate."""
    from benchmarks.load import LoadLevel

    generator.run(name, sessions, LoadLevel(rates[0], duration_s=1.0, warmup_s=0.5), payloads=payloads)  # warm
    levels, worst = [], {}
    for rate in rates:
        runs = []
        for repeat in range(repeats):
            level = _measured(triton, generator, name, sessions, LoadLevel(rate, duration_s, warmup_s=warmup_s),
                              payloads=payloads)
            runs.append({**level, "repeat": repeat + 1})
            echo(f"  {label} at {rate:g}/s, repeat {repeat + 1}: p99 {level['p99_ms']} ms, "
                 f"{level['requests_per_min']:,.0f}/min, {level['errors']} errors")
        levels += runs
        worst[f"{rate:g}"] = worst_of(runs)
    return levels, worst


def _serve_recommend(triton: Any, generator: Any, entry: dict[str, Any], model: dict[str, Any],
                     rates: list[float], *, repeats: int, duration_s: float, warmup_s: float, capacity: bool,
                     echo: Any) -> dict[str, Any]:
    """The recommend entry's levels (the mixed placement stream), judged like the model's: worst of the repeats."""
    from benchmarks.load import LoadLevel

    name, payloads = entry["model"], entry["payloads"]
    levels, worst = _levels(triton, generator, name, [], payloads, rates, repeats=repeats, duration_s=duration_s,
                            warmup_s=warmup_s, label=f"{model['catalogue']} recommend", echo=echo)
    probe = None
    if capacity:
        probe = _measured(triton, generator, name, [], LoadLevel(None, duration_s, warmup_s=warmup_s, concurrency=16),
                          payloads=payloads)
    return {"catalogue": model["catalogue"], "n_items": model["n_items"], "length": RECOMMEND_LENGTH,
            "entry": "recommend", "model": name, "onnx": str(model["onnx"]), "source": entry["source"],
            "training": model["training"],
            "target": {"requests_per_min": RECOMMEND_TARGET[0], "p99_ms": RECOMMEND_TARGET[1]},
            "passed": any(meets(w, RECOMMEND_TARGET) for w in worst.values()), "ort_floor": None,
            "levels": levels, "worst": worst, "capacity_closed_loop": probe}


def _note(results: list[dict[str, Any]]) -> str:
    """Whether other jobs shared the CPU during the run (the server and the load generator always do)."""
    others = max((lv["cpu"]["others_cores"] for r in results for lv in r["levels"]), default=0.0)
    shared = f"other jobs on this machine used up to {others} cores during a level"
    if others >= 0.2:
        return f"{shared}: a re-run on a quiet machine will be faster"
    return f"{shared} (quiet); server and load generator share the same {os.cpu_count()} cores"


def markdown(payload: dict[str, Any]) -> str:
    s, lg = payload["server"], payload["load_generator"]
    lines = [
        "# Serving benchmark: GPT4Rec through Triton (gRPC), open-loop load", "",
        (f"Server: {s['triton']}; instance_count per length={s['instance_count']}, intra_op_threads={s['intra_op_threads']}, "
         f"max_batch_size={s['max_batch_size']}, max_queue_delay_us={s['max_queue_delay_us']}, "
         f"preferred_batch_sizes={s['preferred_batch_sizes'] or 'none'}."),
        (f"Load: {lg['tool']}, {lg['engine']} engine, {lg['workers']} workers, {lg['duration_s']} s per level "
         f"after {lg['warmup_s']} s warm-up, each level {lg['repeats']} times; latency from each request's due time. "
         f"perf_analyzer: {lg['perf_analyzer']['reason']}."),
        f"Overall: {'PASS' if payload['passed'] else 'FAIL'} (worst of {lg['repeats']} repeats). {payload['note']}.",
        "",
        ("| catalogue | items | entry | length | offered req/s | requests/min (worst) | p50 ms (worst) | p99 ms (worst) "
         "| p99 ms per repeat | errors | mean batch | CPU cores: server / load gen / others |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in payload["results"]:
        entry = r.get("entry", "gpt4rec")
        for rate, w in r["worst"].items():
            runs = [lv for lv in r["levels"] if f"{lv['target_rps']:g}" == rate]
            p99s = ", ".join(f"{lv['p99_ms']}" for lv in runs)
            batch = max((lv["cpu"]["mean_batch"] or 0) for lv in runs)
            cpu = max(runs, key=lambda lv: lv["p99_ms"])["cpu"]
            lines.append(f"| {r['catalogue']} | {r['n_items']:,} | {entry} | {r['length']} | {rate} | {w['requests_per_min']:,.0f} "
                         f"| {w['p50_ms']} | {w['p99_ms']} | {p99s} | {w['errors']} | {batch} "
                         f"| {cpu['server_cores']} / {cpu['load_generator_cores']} / {cpu['others_cores']} |")
        probe = r["capacity_closed_loop"]
        if probe:
            lines.append(f"| {r['catalogue']} | {r['n_items']:,} | {entry} | {r['length']} | closed loop x{probe['concurrency']} "
                         f"| {probe['requests_per_min']:,.0f} | {probe['p50_ms']} | {probe['p99_ms']} | - "
                         f"| {probe['errors']} | {probe['cpu']['mean_batch']} | {probe['cpu']['server_cores']} / "
                         f"{probe['cpu']['load_generator_cores']} / {probe['cpu']['others_cores']} |")
    lines += ["", ("| catalogue | entry | length | target | result | ORT floor batch=1 p50 / p99 ms | ORT batch=1 req/s "
              "| ORT batched sessions/s | model |"), "|---|---|---:|---|---|---:|---:|---|---|"]
    for r in payload["results"]:
        t, f = r["target"], r["ort_floor"]
        target = f">= {t['requests_per_min']:,.0f}/min, p99 <= {t['p99_ms']:g} ms" if t else "-"
        verdict = "-" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        floor = ("- | - | -" if f is None else  # recommend: its model's floor is on the gpt4rec row
                 f"{f['batch1_p50_ms']} / {f['batch1_p99_ms']} | {f['batch1_rps']:,.0f} | "
                 + ", ".join(f"b{k}: {v:,.0f}" for k, v in f["batched"].items()))
        lines.append(f"| {r['catalogue']} | {r.get('entry', 'gpt4rec')} | {r['length']} | {target} | {verdict} "
                     f"| {floor} | {r['source']} |")
    errors = [m for r in payload["results"] for lv in r["levels"] for m in lv["error_messages"]]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors[:5])]
    return "\n".join(lines)


def register(bench: typer.Typer) -> None:
    @bench.command("serve")
    def serve(
        catalogues: str = typer.Option(DEFAULT_CATALOGUES, help="catalogues to serve, comma-separated: synthetic:N "
                                       "(a generated world of N products) or an S3-Rec file/folder; each gets a "
                                       "GPT4Rec trained by the pipeline (cached under var/bench/serve/trained/)"),
        repeats: int = typer.Option(3, help="times each load level runs; the report judges the worst"),
        train_budget: float = typer.Option(TRAIN_BUDGET_S, help="seconds of GPT4Rec training per catalogue (time budget)"),
        random_weights: bool = typer.Option(False, "--random-weights", help="serve untrained exports instead "
                                            "(synthetic:N catalogues only; no training)"),
        seq_lens: str = typer.Option("50,512", help="sequence lengths to serve, comma-separated"),
        rates: str = typer.Option(DEFAULT_RATES, help="open-loop requests/s per length: '50:500,1050;512:60,125'"),
        duration: float = typer.Option(30.0, help="measured seconds per load level (30 s: ~30k samples at 1,000/s, so p99 rests on ~300)"),
        warmup: float = typer.Option(2.0, help="seconds sent before each level's measurement"),
        workers: int = typer.Option(2, help="load generator processes"),
        engine: str = typer.Option("threads", help="load generator engine: threads (blocking gRPC channel with "
                                   "futures; cheapest here) | asyncio (grpc.aio)"),
        load_cpus: str = typer.Option("", help="pin the load generator to these CPUs, e.g. '1' (empty: no pinning)"),
        capacity: bool = typer.Option(True, help="also a closed-loop capacity probe per length"),
        recommend_rates: str = typer.Option(DEFAULT_RECOMMEND_RATES, help="open-loop requests/s of the `recommend` "
                                            "entry point (length 50, placements mixed), comma-separated; empty: "
                                            "the model alone"),
        instance_count: str = typer.Option(DEFAULT_INSTANCES, help="model instances: N, or per length "
                                           "'50:1;512:2' (lengths not named: params.yaml serve.instance_count)"),
        intra_op_threads: int = typer.Option(1, help="onnxruntime threads per instance"),
        max_batch_size: int = typer.Option(0, help="0: params.yaml serve.max_batch_size"),
        max_queue_delay_us: int = typer.Option(2000, help="dynamic batcher's wait for a fuller batch"),
        preferred_batch_sizes: str = typer.Option("", help="comma-separated, empty: none"),
        quick: bool = typer.Option(False, help="seconds-long smoke run: one level per length, one repeat, no probe"),
        entry: str = typer.Option("gpt4rec", help="gpt4rec (the model alone, reports/serve) or recommend (what "
                                  "the pharmacy layer adds to the entry point's p50: reports/serve-recommend)"),
        rate: float = typer.Option(60.0, help="--entry recommend: open-loop requests/s of the one stream that "
                                   "holds every variant interleaved"),
        rounds: int = typer.Option(3, help="--entry recommend: rounds of every variant"),
        out_dir: str = typer.Option("", help="where serve.json/.md go (default: reports/)"),
        overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override section.key=value")] = None,
    ) -> None:
        """Trained GPT4Rec models at catalogue sizes 3k, 12k, 100k served by Triton under open-loop gRPC load at
        lengths 50 and 512, each level 3 times, vs in-process ONNX Runtime."""
        from benchmarks.common import REPORTS, write_report
        from pipelines.core.config import load_settings

        settings = load_settings(overrides=overrides or [])
        if entry not in ("gpt4rec", "recommend"):
            raise typer.BadParameter(f"--entry must be gpt4rec or recommend, got {entry!r}")
        if entry == "recommend":
            from benchmarks import serve_recommend

            if quick:
                duration, warmup, rounds = min(duration, 3.0), min(warmup, 1.0), 1
            payload = serve_recommend.run_recommend(rate=rate, duration_s=duration, warmup_s=warmup, rounds=rounds,
                                                    workers=workers, settings=settings, work_dir=WORK_DIR)
            text = serve_recommend.markdown(payload)
            path = write_report("serve-recommend", payload, text, Path(out_dir) if out_dir else REPORTS)
            typer.echo(text)
            typer.echo(f"written: {path} and {path.with_suffix('.md')}")
            return
        try:
            lengths = [int(v) for v in seq_lens.split(",") if v.strip()]
            preferred = tuple(int(v) for v in preferred_batch_sizes.split(",") if v.strip())
        except ValueError as exc:
            raise typer.BadParameter(f"--seq-lens and --preferred-batch-sizes take integers: {exc}") from None
        if not lengths or min(lengths) < 1:
            raise typer.BadParameter(f"--seq-lens needs positive lengths, got {seq_lens!r}")
        if quick:
            duration, warmup, capacity, repeats = min(duration, 3.0), min(warmup, 1.0), False, 1
            if rates == DEFAULT_RATES:
                rates = QUICK_RATES
        try:
            entry_rates = [float(v) for v in recommend_rates.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(f"--recommend-rates takes requests/s, comma-separated: {recommend_rates!r}") from None
        if entry_rates and RECOMMEND_LENGTH not in lengths:
            raise typer.BadParameter(f"--recommend-rates needs length {RECOMMEND_LENGTH} in --seq-lens "
                                     "(recommend calls that model); pass --recommend-rates '' to skip it")
        config = ServerConfig(
            max_batch_size=max_batch_size or settings.serve.max_batch_size,
            instance_count=parse_instances(instance_count, lengths, settings.serve.instance_count),
            intra_op_threads=intra_op_threads,
            max_queue_delay_us=max_queue_delay_us,
            preferred_batch_sizes=preferred,
        )
        if repeats < 1:
            raise typer.BadParameter(f"--repeats must be at least 1, got {repeats}")
        from benchmarks.trained import parse_catalogues

        payload = run(parse_catalogues(catalogues), lengths, parse_rates(rates, lengths), repeats=repeats,
                      duration_s=duration, warmup_s=warmup, workers=workers, capacity=capacity, server=config,
                      settings=settings, overrides=overrides or [], train_budget_s=train_budget,
                      random_weights=random_weights, recommend_rates=entry_rates, engine=engine,
                      load_cpus=tuple(int(c) for c in load_cpus.split(",") if c.strip()), echo=typer.echo)
        text = markdown(payload)
        path = write_report("serve", payload, text, Path(out_dir) if out_dir else REPORTS)
        typer.echo(text)
        typer.echo(f"written: {path} and {path.with_suffix('.md')}")
        typer.echo(json.dumps({f"{r['catalogue']}/{r.get('entry', 'gpt4rec')}/{r['length']}": r["passed"]
                               for r in payload["results"]}))
