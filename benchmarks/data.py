"""`rxrec bench data`: how fast the pharmacy world is generated and how long the GX gate takes.

Reports generation speed (events/s, whole world and the session simulation alone) and validation
time for about 1M events (contract checks, then again with the distribution checks against the
first run's profile), plus the Beauty ingest when ../shared/datasets is present.
"""

from __future__ import annotations

from typing import Any

import typer

EVENTS_PER_USER = 13.9  # measured on the default world: ~166k events from 12k users


def run(events: int = 1_000_000, products: int = 30_000, seed: int = 42) -> dict[str, Any]:
    """Generate ~`events` events, validate them twice; returns the figures (heavy imports inside)."""
    import time

    from pipelines.core.config import PROJECT_ROOT, DataSettings, ValidateSettings, load_settings
    from pipelines.data.generate import generate_world
    from pipelines.validate import validate_tables

    settings = DataSettings(n_products=products, n_users=max(10, round(events / EVENTS_PER_USER)), seed=seed)
    started = time.perf_counter()
    world = generate_world(settings, progress=True)
    gen_s = time.perf_counter() - started
    n = len(world.events)
    vsettings = ValidateSettings()
    started = time.perf_counter()
    first = validate_tables(world.catalogue, world.events, vsettings, source=world.source)
    val_s = time.perf_counter() - started
    started = time.perf_counter()
    second = validate_tables(world.catalogue, world.events, vsettings, source=world.source, accepted=first.profile)
    val_drift_s = time.perf_counter() - started
    out: dict[str, Any] = {
        "generate": {"products": products, "users": settings.n_users, "events": n, "seconds": round(gen_s, 2),
                     "events_per_s": round(n / gen_s)},
        "validate": {"events": n, "seconds": round(val_s, 2), "checks": len(first.checks), "passed": first.success},
        "validate_with_drift": {"events": n, "seconds": round(val_drift_s, 2), "checks": len(second.checks),
                                "passed": second.success},
    }
    beauty = load_settings().data.model_copy(update={"source": "s3rec"})
    path = PROJECT_ROOT / beauty.s3rec_path
    if path.exists():
        from pipelines.data.adapters import load_source

        started = time.perf_counter()
        b = load_source(beauty)
        ingest_s = time.perf_counter() - started
        out["beauty_ingest"] = {"users": int(b.events["user_id"].nunique()), "items": len(b.catalogue),
                                "interactions": len(b.events), "seconds": round(ingest_s, 2)}
    return out


def register(bench: typer.Typer) -> None:
    @bench.command("data")
    def data(events: int = typer.Option(1_000_000, help="about this many events"),
             products: int = typer.Option(30_000, help="catalogue size"),
             seed: int = typer.Option(42)) -> None:
        """Generation speed (events/s) and GX validation time for ~1M events."""
        from benchmarks.common import write_report

        result = run(events, products, seed)
        g, v, d = result["generate"], result["validate"], result["validate_with_drift"]
        lines = [
            "# Data benchmark", "",
            "| what | rows | seconds | rate |", "|---|---:|---:|---:|",
            (f"| generate world ({g['products']:,} products, {g['users']:,} users) | {g['events']:,} events "
             f"| {g['seconds']} | {g['events_per_s']:,} events/s |"),
            (f"| validate (GX contract, {v['checks']} checks) | {v['events']:,} events | {v['seconds']} "
             f"| {v['events'] / max(v['seconds'], 1e-9):,.0f} events/s |"),
            (f"| validate + distribution checks ({d['checks']} checks) | {d['events']:,} events | {d['seconds']} "
             f"| {d['events'] / max(d['seconds'], 1e-9):,.0f} events/s |"),
        ]
        if "beauty_ingest" in result:
            b = result["beauty_ingest"]
            lines.append(f"| ingest Amazon Beauty (S3-Rec format; {b['users']:,} users, {b['items']:,} items) "
                         f"| {b['interactions']:,} interactions | {b['seconds']} | |")
        path = write_report("data", result, "\n".join(lines))
        typer.echo("\n".join(lines))
        typer.echo(f"written: {path} and {path.with_suffix('.md')}")
