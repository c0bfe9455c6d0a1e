"""`rxrec bench quality`: every model family on one dataset, one protocol, one leaderboard.

The dataset is the generated world ("synthetic", with the business view drawn from its ground
truth) or any folder/file in the S3-Rec format (`user item item ...` per line, optionally with
`*_item2attributes.json` beside it), e.g. ../shared/datasets/amazon-beauty. Writes
reports/quality-<dataset>.json, .md and .png, and logs one MLflow run per family.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.models.families import family_names

FAMILIES = family_names()  # every registered model family, in leaderboard order
# Published all-item-ranking results on the S3-Rec Beauty split (../shared/datasets/README.md).
PUBLISHED_BEAUTY = {
    "PopRec": (0.0152, 0.0068), "BERT4Rec": (0.0347, 0.0170), "SASRec": (0.0605, 0.0318),
    "S3-Rec": (0.0647, 0.0327), "eSASRec": (0.0928, 0.0523),
}


def _markdown(name: str, rows: dict[str, dict[str, Any]], k: int, published: bool) -> str:
    lines = [f"# Quality leaderboard: {name}", "",
             f"Leave-one-out by time, target ranked against all items, seen items masked; @{k}.", "",
             f"| model | HR@{k} | NDCG@{k} | MRR | coverage | cold HR@{k} | long-tail HR@{k} | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for model, m in rows.items():
        sl = m.get("slices", {})
        lines.append(f"| {model} | {m[f'hr_at_{k}']:.4f} | {m[f'ndcg_at_{k}']:.4f} | {m['mrr']:.4f} | "
                     f"{m[f'coverage_at_{k}']:.3f} | {sl.get('cold_start', {}).get(f'hr_at_{k}', 0):.4f} | "
                     f"{sl.get('long_tail', {}).get(f'hr_at_{k}', 0):.4f} | {m['train_seconds']:.1f} |")
    if any("business" in m for m in rows.values()):
        lines += ["", "Business view (simulated users of the generated world, top-10 lists, relative to popularity):", "",
                  "| model | CTR | add-to-cart | purchase | CTR vs static | ATC vs static | purchase vs static |",
                  "|---|---|---|---|---|---|---|"]
        for model, m in rows.items():
            b = m.get("business")
            if b:
                lines.append(f"| {model} | {b['ctr']:.4f} | {b['add_to_cart_rate']:.4f} | {b['purchase_rate']:.4f} | "
                             f"{b['ctr_lift']:+.0%} | {b['add_to_cart_lift']:+.0%} | {b['purchase_lift']:+.0%} |")
    if published:
        lines += ["", "Published on the same split (all-item ranking):", "", "| model | HR@10 | NDCG@10 |", "|---|---|---|"]
        lines += [f"| {m} | {hr:.4f} | {nd:.4f} |" for m, (hr, nd) in PUBLISHED_BEAUTY.items()]
    return "\n".join(lines)


def fit_families(families: tuple[str, ...], seqs: Any, catalogue: Any, settings: Any) -> Iterator[tuple[str, Any, dict]]:
    """(family, trained model, info with train_seconds) for each family, in order; the inputs some families
    share (Prod2Vec vectors, item meta tokens) are built once and their time counts for each family using them."""
    from pipelines.data.item_features import build_item_features
    from pipelines.embed.prod2vec import train_prod2vec
    from pipelines.models.base import FitContext, FitInput
    from pipelines.models.families import family as family_class
    from pipelines.models.families import fit_family

    inputs: dict[FitInput, Any] = {}
    input_seconds: dict[FitInput, float] = {}
    for family in families:
        typer.secho(f"▶ {family}", bold=True)
        wanted = family_class(family).inputs_for(getattr(settings, family))
        for which in sorted(wanted - set(inputs)):
            started = time.perf_counter()
            inputs[which] = (
                train_prod2vec(seqs.train(), seqs.n_items, settings.graph, settings.prod2vec, seed=settings.data.seed)
                if which is FitInput.PRETRAINED else build_item_features(catalogue, seqs.n_items).tokens)
            input_seconds[which] = time.perf_counter() - started if which is FitInput.PRETRAINED else 0.0
        ctx = FitContext(seed=settings.data.seed, k=settings.evaluate.k,
                         **{str(which): inputs[which] for which in wanted})
        model, info = fit_family(family, seqs, settings, ctx)
        info["train_seconds"] += sum(input_seconds[which] for which in wanted)
        yield family, model, info


def run_quality(dataset: str, families: tuple[str, ...], overrides: list[str], log_mlflow: bool = True,
                out_dir: Path | None = None) -> Path:
    import numpy as np

    from benchmarks.common import REPORTS, load_dataset, write_report
    from pipelines.core.config import Paths, load_settings
    from pipelines.data.sequences import build_sequences
    from pipelines.evaluate.protocol import evaluate
    from pipelines.evaluate.slices import standard_slices
    from pipelines.track.plots import plot_metrics

    settings = load_settings(overrides=overrides)
    name, world, truth = load_dataset(dataset, settings)
    seqs = build_sequences(world.events, len(world.catalogue))
    k = settings.evaluate.k
    slices = standard_slices(seqs, "test", cold_max_interactions=settings.evaluate.cold_max_interactions)
    rows: dict[str, dict[str, Any]] = {}
    for family, model, info in fit_families(families, seqs, world.catalogue, settings):
        lists: dict[int, np.ndarray] = {}
        m = evaluate(model, seqs, split="test", k=k, mask_seen=settings.evaluate.mask_seen, slices=slices,
                     top_lists=lists if truth is not None else None)
        m["train_seconds"] = info["train_seconds"]
        m["train_info"] = {key: v for key, v in info.items() if key != "history"}
        if truth is not None:
            users = {int(seqs.user_ids[row]): items for row, items in lists.items()}
            m["business"] = truth.estimate(users, seed=settings.data.seed)
        rows[family] = m
        typer.echo(f"  HR@{k} {m[f'hr_at_{k}']:.4f}  NDCG@{k} {m[f'ndcg_at_{k}']:.4f}  train {m['train_seconds']:.1f}s")
    if "popularity" in rows and "business" in rows["popularity"]:
        base = rows["popularity"]["business"]
        for m in rows.values():
            b = m["business"]
            for key, lift in (("ctr", "ctr_lift"), ("add_to_cart_rate", "add_to_cart_lift"),
                              ("purchase_rate", "purchase_lift")):
                b[lift] = b[key] / base[key] - 1.0 if base[key] else 0.0
    report_name = f"quality-{name}"
    out_dir = out_dir or REPORTS
    plot_metrics(rows, out_dir / f"{report_name}.png")
    payload = {
        "dataset": name, "source": dataset, "overrides": overrides, "seed": settings.data.seed,
        "protocol": {"split": "leave-one-out by time", "ranking": "all items", "mask_seen": settings.evaluate.mask_seen,
                     "k": k, "users": len(seqs.evaluation("test")[1]),
                     "slice_users": {s: int(mask.sum()) for s, mask in slices.items()}},
        "models": rows,
        "published": {m: {"hr_at_10": hr, "ndcg_at_10": nd} for m, (hr, nd) in PUBLISHED_BEAUTY.items()}
        if name == "beauty" else {},
    }
    path = write_report(report_name, payload, _markdown(name, rows, k, published=name == "beauty"), out_dir)
    if log_mlflow:
        _log_to_mlflow(report_name, rows, settings, Paths())
    return path


def _log_to_mlflow(experiment: str, rows: dict[str, dict[str, Any]], settings, paths) -> None:
    """One run per family in experiment `experiment`, same metric names: comparable in the UI."""
    import mlflow
    from pipelines.track.service import MlflowService

    service = MlflowService.from_settings(settings, paths, experiment=experiment)
    for family, m in rows.items():
        flat = {key: float(v) for key, v in m.items() if isinstance(v, (int, float))}
        for slice_name, values in m.get("slices", {}).items():
            flat.update({f"{slice_name}.{key}": float(v) for key, v in values.items() if key != "n_users"})
        for key, v in m.get("business", {}).items():
            flat[f"business.{key}"] = float(v)
        with service.start_run(run_name=family):
            mlflow.log_metrics(flat)
            mlflow.set_tag("family", family)


def register(bench: typer.Typer) -> None:
    @bench.command("quality")
    def quality(
        dataset: Annotated[str, typer.Option(help="'synthetic' or an S3-Rec file/folder, e.g. ../shared/datasets/amazon-beauty")] = "synthetic",
        models: Annotated[str, typer.Option(help="comma-separated families")] = ",".join(FAMILIES),
        set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override section.key=value")] = None,
        mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log one MLflow run per family")] = True,
    ) -> None:
        """Train and score every family on one dataset; writes reports/quality-<dataset>.json/.md/.png."""
        chosen = tuple(m.strip() for m in models.split(",") if m.strip())
        unknown = sorted(set(chosen) - set(FAMILIES))
        if unknown:
            raise typer.BadParameter(f"unknown model families {unknown}; choose from {', '.join(FAMILIES)}")
        from pipelines.core.config import SettingsError

        try:
            path = run_quality(dataset, chosen, set_ or [], log_mlflow=mlflow_log)
        except SettingsError as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(path.with_suffix(".md").read_text())
        typer.echo(f"written: {path}")
