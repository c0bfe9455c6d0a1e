"""`rxrec bench scale`: the whole chain on generated worlds of growing size, time and memory per stage.

Each size gets its own work directory (RXREC_WORKDIR) and runs every stage of the chain as
`rxrec stage <name>`, the command DVC and Airflow run, in a fresh process: its wall time, CPU time
and the peak resident memory of its process tree (sampled every 0.2 s) are what a scheduler would
see. Register runs with the gate's Triton latency check off (no server here; serving at catalogue
scale is `rxrec bench serve`); deploy and serve_check are left out for the same reason.

The issue's target for the largest world (~100k products, ~1M users, ~20M events) on this 2-core,
24 GB machine: the chain in <= 2 h, peak memory <= 12 GB, every stage growing no worse than n log n
in events. A stage that fails, runs past the time left or past --kill-above-gb stops its size; the
report names it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.core.config import PROJECT_ROOT

#: The chain as dvc.yaml orders it, through the gate; deploy and serve_check need a Triton server.
CHAIN: tuple[str, ...] = (
    "generate", "validate", "sequences", "prod2vec", "tfidf", "text_encoder", "meta_prod2vec",
    "similar_products", "train_popularity", "train_mf", "train_rules", "train_ncf", "train_gpt4rec",
    "train_gru4rec", "train_bert4rec", "evaluate", "export_onnx", "register",
)
#: products:users per world. The demo's world is 1x; users (and so events) grow 10x and 100x, the
#: catalogue to a real pharmacy's ~100k products.
DEFAULT_SIZES = "3000:12000,15000:120000,100000:1200000"
CHAIN_LIMIT_S, MEMORY_LIMIT_GB = 7200.0, 12.0  # the target for the largest world
TARGET_MIN_EVENTS = 10_000_000  # the target is set for the 100x world (~17M events); smaller ones are not judged
#: Within the run's own noise a stage "grows like n log n" when its exponent is at most this much above
#: n log n's; stages under MIN_GROWTH_S at the larger size are start-up dominated and not judged.
GROWTH_SLACK, MIN_GROWTH_S = 0.15, 10.0
STAGE_OVERRIDES = ("gate.latency_budget_ms=0",)  # no Triton in this benchmark
SAMPLE_S = 0.2
WORK_DIR = PROJECT_ROOT / "var" / "bench" / "scale"


@dataclass(frozen=True)
class WorldSize:
    products: int
    users: int

    @property
    def label(self) -> str:
        return f"{self.products:,} products, {self.users:,} users"

    def overrides(self) -> list[str]:
        return [f"data.n_products={self.products}", f"data.n_users={self.users}"]


@dataclass
class StageRun:
    stage: str
    status: str  # ok | failed | timed out | memory
    wall_s: float
    cpu_s: float
    peak_rss_gb: float
    error: str = ""


@dataclass
class SizeRun:
    size: WorldSize
    events: int | None = None
    stages: list[StageRun] = field(default_factory=list)
    measured: dict[str, Any] | None = None  # kept from an earlier report (--add): its commit and date

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SizeRun:
        return cls(WorldSize(data["products"], data["users"]), data["events"],
                   [StageRun(**stage) for stage in data["stages"]], data.get("measured"))

    @property
    def complete(self) -> bool:
        return bool(self.stages) and all(s.status == "ok" for s in self.stages)

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.stages)

    @property
    def peak_rss_gb(self) -> float:
        return max((s.peak_rss_gb for s in self.stages), default=0.0)


def parse_sizes(text: str) -> list[WorldSize]:
    """'3000:12000,15000:120000' -> sizes, smallest first (products:users per entry)."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        products, sep, users = part.partition(":")
        try:
            if not sep:
                raise ValueError("missing ':'")
            size = WorldSize(int(products), int(users))
        except ValueError as exc:
            raise typer.BadParameter(f"--sizes entry {part!r} is not PRODUCTS:USERS ({exc})") from None
        if size.products < 100 or size.users < 100:
            raise typer.BadParameter(f"--sizes entry {part!r}: a world needs at least 100 products and 100 users")
        sizes.append(size)
    if not sizes:
        raise typer.BadParameter("--sizes names no world")
    return sorted(sizes, key=lambda s: (s.users, s.products))


def parse_stages(text: str) -> tuple[str, ...]:
    """'generate,validate' -> those stages in chain order; empty: the whole chain."""
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in CHAIN]
    if unknown:
        raise typer.BadParameter(f"--stages: {unknown} not in the chain ({', '.join(CHAIN)})")
    return tuple(s for s in CHAIN if s in wanted) if wanted else CHAIN


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    rss = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
        except psutil.Error:
            pass
    return rss


def children_cpu_s() -> float:
    """CPU seconds of every finished, waited-for descendant of this process (stages run one at a time)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stage_measured(stage: str, overrides: list[str], workdir: Path, log: Path, *,
                       timeout_s: float, kill_above_bytes: float) -> StageRun:
    """`rxrec stage <stage>` in a fresh process under RXREC_WORKDIR=workdir; peak RSS of its tree."""
    env = {**os.environ, "RXREC_WORKDIR": str(workdir)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the work directory's own SQLite store
    command = [sys.executable, "-m", "pipelines.cli", "stage", stage]
    for item in overrides:
        command += ["--set", item]
    start, cpu0, peak, status = time.perf_counter(), children_cpu_s(), 0, "ok"
    with log.open("w") as out:
        pid = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True).pid
        while True:
            done, wait_status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            peak = max(peak, tree_rss(pid))
            if time.perf_counter() - start > timeout_s:
                status = "timed out"
            elif peak > kill_above_bytes:
                status = "memory"
            if status != "ok":
                os.killpg(pid, 9)
                _, wait_status, usage = os.wait4(pid, 0)
                break
            time.sleep(SAMPLE_S)
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu0
    # The kernel's high-water mark of the largest single process: a floor under the sampled tree sum
    # (a spike shorter than one sample still counts).
    peak = max(peak, usage.ru_maxrss * 1024)
    if status == "ok" and os.waitstatus_to_exitcode(wait_status) != 0:
        status = "failed"
    error = ""
    if status != "ok":
        tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-6:]
        error = {"timed out": f"stopped after {timeout_s:,.0f} s (time left for the chain)",
                 "memory": f"stopped above {kill_above_bytes / 2**30:.1f} GB resident"}.get(status, "")
        error = (error + " | " if error else "") + " / ".join(tail)[-600:]
    return StageRun(stage, status, round(wall, 2), round(cpu, 1), round(peak / 2**30, 3), error)


def count_events(workdir: Path) -> int | None:
    import pyarrow.parquet as pq

    from pipelines.data.schema import EVENTS_FILE

    path = workdir / "data" / "raw" / EVENTS_FILE
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else None


def run_size(size: WorldSize, stages: tuple[str, ...], overrides: list[str], work_dir: Path, *,
             chain_limit_s: float, kill_above_gb: float, echo: Any = print) -> SizeRun:
    """Every stage in order on one world; stops at the first stage that does not finish."""
    workdir = work_dir / f"p{size.products}-u{size.users}"
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "logs").mkdir(parents=True)
    result = SizeRun(size)
    for stage in stages:
        left = chain_limit_s - result.wall_s
        run = run_stage_measured(stage, [*size.overrides(), *STAGE_OVERRIDES, *overrides], workdir,
                                 workdir / "logs" / f"{stage}.log", timeout_s=max(left, 1.0),
                                 kill_above_bytes=kill_above_gb * 2**30)
        result.stages.append(run)
        if stage == "generate" and run.status == "ok":
            result.events = count_events(workdir)
        echo(f"  {stage:<18} {run.status:<9} {run.wall_s:>9.1f} s  {run.peak_rss_gb:>6.2f} GB"
             + (f"  {run.error[:200]}" if run.error else ""))
        if run.status != "ok":
            break
    return result


def nlogn_exponent(n1: float, n2: float) -> float:
    """The exponent a cost growing exactly like n log n shows between n1 and n2 (a little above 1)."""
    return math.log((n2 * math.log(n2)) / (n1 * math.log(n1))) / math.log(n2 / n1)


def growth(runs: list[SizeRun]) -> dict[str, dict[str, Any]]:
    """Per stage, between the two largest worlds where it finished: the exponent of time in events and
    whether it grows worse than n log n (judged only where the larger run took >= MIN_GROWTH_S)."""
    out: dict[str, dict[str, Any]] = {}
    stages = dict.fromkeys(s.stage for r in runs for s in r.stages)
    for stage in stages:
        points = [(r.events, s.wall_s) for r in runs if r.events
                  for s in r.stages if s.stage == stage and s.status == "ok"]
        if len(points) < 2:
            continue
        (n1, t1), (n2, t2) = points[-2], points[-1]
        if n2 <= n1 or t1 <= 0:
            continue
        exponent = math.log(t2 / t1) / math.log(n2 / n1)
        bound = nlogn_exponent(n1, n2)
        judged = t2 >= MIN_GROWTH_S
        out[stage] = {"from_events": n1, "to_events": n2, "exponent": round(exponent, 2),
                      "nlogn_exponent": round(bound, 2), "judged": judged,
                      "worse_than_nlogn": bool(judged and exponent > bound + GROWTH_SLACK)}
    return out


def verdict(runs: list[SizeRun], chain_limit_s: float, memory_limit_gb: float,
            stages: tuple[str, ...]) -> dict[str, Any]:
    """The target on the largest world asked for: the whole chain, in time, in memory."""
    largest = runs[-1]
    stopped = next((s for s in largest.stages if s.status != "ok"), None)
    ran_all = largest.complete and len(largest.stages) == len(stages)
    slowest = max(largest.stages, key=lambda s: s.wall_s, default=None)
    hungriest = max(largest.stages, key=lambda s: s.peak_rss_gb, default=None)
    met = ran_all and largest.wall_s <= chain_limit_s and largest.peak_rss_gb <= memory_limit_gb
    return {"world": largest.size.label, "events": largest.events, "met": met, "ran_all": ran_all,
            "judged": (largest.events or 0) >= TARGET_MIN_EVENTS,
            "wall_s": round(largest.wall_s, 1), "peak_rss_gb": largest.peak_rss_gb,
            "stopped_at": asdict(stopped) if stopped else None,
            "slowest_stage": slowest.stage if slowest else None,
            "hungriest_stage": hungriest.stage if hungriest else None}


def earlier_sizes(path: Path, measuring: list[WorldSize], same: dict[str, Any]) -> list[SizeRun]:
    """The sizes of the report at `path` not measured again now, each stamped with the commit and date it was
    measured at; refuses a report whose chain or overrides differ (its stages would not compare)."""
    import json

    if not path.is_file():
        raise typer.BadParameter(f"--add keeps the other sizes of {path}, but there is no such report")
    report = json.loads(path.read_text())
    differ = [f"{key}: report {report.get(key)!r}, this run {value!r}" for key, value in same.items()
              if report.get(key) != value]
    if differ:
        raise typer.BadParameter(f"--add cannot put sizes measured differently in one report ({path}): "
                                 + "; ".join(differ))
    stamp = {"code": report.get("code"), "measured_at": report.get("machine", {}).get("measured_at")}
    return [SizeRun.from_dict({"measured": stamp, **size}) for size in report["sizes"]
            if WorldSize(size["products"], size["users"]) not in measuring]


def plot(runs: list[SizeRun], path: Path) -> Path:
    """Wall time and peak memory against events, one line per stage (log-log), the chain's total bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    done = [r for r in runs if r.events]
    for stage in dict.fromkeys(s.stage for r in done for s in r.stages):
        pts = [(r.events, s) for r in done for s in r.stages if s.stage == stage]
        xs = [n for n, _ in pts]
        ax_t.plot(xs, [max(s.wall_s, 0.1) for _, s in pts], marker="o", lw=1, label=stage)
        ax_m.plot(xs, [s.peak_rss_gb for _, s in pts], marker="o", lw=1, label=stage)
        for n, s in pts:
            if s.status != "ok":
                ax_t.annotate(s.status, (n, max(s.wall_s, 0.1)), fontsize=8, color="red")
    xs = [r.events for r in done]
    ax_t.plot(xs, [r.wall_s for r in done], "k-", lw=3, marker="s", label="whole chain")
    ax_t.axhline(CHAIN_LIMIT_S, color="red", ls="--", lw=1, label="target: chain <= 2 h")
    ax_m.axhline(MEMORY_LIMIT_GB, color="red", ls="--", lw=1, label="target: <= 12 GB")
    if len(xs) >= 2:  # n log n through the chain's smallest point, for the eye
        x0, t0 = xs[0], done[0].wall_s
        ax_t.plot(xs, [t0 * (x * math.log(x)) / (x0 * math.log(x0)) for x in xs], "k:", lw=1,
                  label="n log n from the smallest")
    for ax, title, unit in ((ax_t, "wall time per stage", "seconds"), (ax_m, "peak resident memory", "GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events in the world")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("rxrec bench scale: the chain on generated worlds of growing size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def payload(runs: list[SizeRun], stages: tuple[str, ...], overrides: list[str], chain_limit_s: float,
            kill_above_gb: float) -> dict[str, Any]:
    return {
        "chain": list(stages), "overrides": [*STAGE_OVERRIDES, *overrides], "chain_limit_s": chain_limit_s,
        "memory_limit_gb": MEMORY_LIMIT_GB, "kill_above_gb": kill_above_gb, "sample_s": SAMPLE_S,
        "sizes": [{"products": r.size.products, "users": r.size.users, "events": r.events,
                   "wall_s": round(r.wall_s, 1), "peak_rss_gb": r.peak_rss_gb, "complete": r.complete,
                   "stages": [asdict(s) for s in r.stages], **({"measured": r.measured} if r.measured else {})}
                  for r in runs],
        "growth": growth(runs),
        "verdict": verdict(runs, chain_limit_s, MEMORY_LIMIT_GB, stages),
    }


def markdown(data: dict[str, Any], plot_name: str | None = "scale.png") -> str:
    sizes, grow, v = data["sizes"], data["growth"], data["verdict"]
    heads = [f"{s['events']:,} events" if s["events"] else f"{s['products']:,}/{s['users']:,}" for s in sizes]
    lines = [
        "# Scale benchmark: the chain on generated worlds of growing size", "",
        ("Each stage runs as `rxrec stage <name>` in its own process (what DVC and Airflow run), one world per "
         "work directory; wall time, CPU time and the peak resident memory of the stage's process tree "
         f"(sampled every {data['sample_s']} s). Overrides on every stage: {', '.join(data['overrides'])} "
         "(the gate's Triton latency check is off: no server here). Deploy and serve_check are not run."), "",
        "| world | products | users | events | chain wall s | peak GB | complete |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for head, s in zip(heads, sizes, strict=True):
        kept = s.get("measured")
        when = (f" (kept: commit {str((kept.get('code') or {}).get('git_commit'))[:12]}, "
                f"{str(kept.get('measured_at'))[:10]})" if kept else "")
        lines.append(f"| {head}{when} | {s['products']:,} | {s['users']:,} | {s['events'] or 0:,} | {s['wall_s']:,.0f} "
                     f"| {s['peak_rss_gb']:.2f} | {'yes' if s['complete'] else 'no'} |")
    lines += ["", "| stage | " + " | ".join(f"{h}: s / GB" for h in heads) + " | growth exponent (n log n) |",
              "|---|" + "---:|" * len(sizes) + "---|"]
    for stage in dict.fromkeys(st["stage"] for s in sizes for st in s["stages"]):
        cells = []
        for s in sizes:
            run = next((st for st in s["stages"] if st["stage"] == stage), None)
            if run is None:
                cells.append("-")
            else:
                flag = "" if run["status"] == "ok" else f" **{run['status']}**"
                cells.append(f"{run['wall_s']:,.1f} / {run['peak_rss_gb']:.2f}{flag}")
        g = grow.get(stage)
        if g is None:
            gcell = "-"
        else:
            mark = (" **worse than n log n**" if g["worse_than_nlogn"]
                    else "" if g["judged"] else " (under 10 s: not judged)")
            gcell = f"{g['exponent']:.2f} ({g['nlogn_exponent']:.2f}){mark}"
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {gcell} |")
    result = ("met" if v["met"] else "not met") if v["judged"] else \
        f"not judged: the target is for a world of >= {TARGET_MIN_EVENTS:,} events"
    lines += ["", (f"Target on the largest world asked for ({v['world']}): chain <= {data['chain_limit_s']:,.0f} s, "
              f"peak <= {data['memory_limit_gb']:g} GB: **{result}**. "
              f"Measured: {v['wall_s']:,.0f} s, {v['peak_rss_gb']:.2f} GB; slowest stage {v['slowest_stage']}, "
              f"most memory {v['hungriest_stage']}.")]
    if v["stopped_at"]:
        s = v["stopped_at"]
        lines.append(f"Stopped at **{s['stage']}** ({s['status']} after {s['wall_s']:,.0f} s, "
                     f"{s['peak_rss_gb']:.2f} GB): {s['error']}")
    worse = [k for k, g in grow.items() if g["worse_than_nlogn"]]
    lines.append("Stages growing worse than n log n between the two largest complete points: "
                 + (", ".join(worse) if worse else "none") + ".")
    for s in sizes:
        for st in s["stages"]:
            if st["status"] == "failed":
                lines.append(f"Failed at {s['events'] or '?'} events: {st['stage']}: {st['error']}")
    if plot_name:
        lines += ["", f"![time and memory per stage against events]({plot_name})"]
    return "\n".join(lines)


def register(bench: typer.Typer) -> None:
    @bench.command("scale")
    def scale(
        sizes: str = typer.Option(DEFAULT_SIZES, help="worlds as PRODUCTS:USERS, comma-separated (1x, 10x, 100x "
                                  "the demo's events by default)"),
        stages: str = typer.Option("", help="stages to run, comma-separated, in chain order (empty: the whole "
                                   "chain through register)"),
        chain_limit: float = typer.Option(CHAIN_LIMIT_S, help="seconds the chain may take on one world; a stage "
                                          "still running then is stopped and named"),
        kill_above_gb: float = typer.Option(20.0, help="stop a stage whose process tree holds more than this "
                                            "(protects a 24 GB machine; the target is 12 GB)"),
        out_dir: str = typer.Option("", help="where scale.json/.md/.png go (default: reports/)"),
        keep: bool = typer.Option(False, help="keep each world's work directory under var/bench/scale/"),
        add: bool = typer.Option(False, "--add", help="keep the existing report's other sizes (same chain and "
                                 "overrides; each keeps its own commit): the largest world can run on its own"),
        overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override on every "
                                                            "stage, section.key=value")] = None,
    ) -> None:
        """Run the chain on generated worlds of growing size: wall time and peak memory per stage."""
        from benchmarks.common import REPORTS, write_report

        worlds, chain = parse_sizes(sizes), parse_stages(stages)
        out = Path(out_dir) if out_dir else REPORTS
        out.mkdir(parents=True, exist_ok=True)
        runs: list[SizeRun] = []
        if add:  # checked before hours of running
            runs = earlier_sizes(out / "scale.json", worlds, {"chain": list(chain),
                                                              "overrides": [*STAGE_OVERRIDES, *(overrides or [])]})
        for size in worlds:
            typer.secho(f"▶ {size.label}", bold=True)
            runs.append(run_size(size, chain, overrides or [], WORK_DIR, chain_limit_s=chain_limit,
                                 kill_above_gb=kill_above_gb, echo=typer.echo))
            if not keep:
                shutil.rmtree(WORK_DIR / f"p{size.products}-u{size.users}", ignore_errors=True)
        runs.sort(key=lambda r: (r.size.users, r.size.products))
        data = payload(runs, chain, overrides or [], chain_limit, kill_above_gb)
        plot(runs, out / "scale.png")
        path = write_report("scale", data, markdown(data), out)
        typer.echo(markdown(data, plot_name=None))
        typer.echo(f"written: {path}, {path.with_suffix('.md')} and {out / 'scale.png'}")
