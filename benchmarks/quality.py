"""`rxrec bench quality`: every model family on one dataset, one protocol, one leaderboard.

The dataset is the generated world ("synthetic", with the business view drawn from its ground
truth) or any folder/file in the S3-Rec format (`user item item ...` per line, optionally with
`*_item2attributes.json` beside it), e.g. ../shared/datasets/amazon-beauty. Families train with
params.yaml's `quality` recipe (each to convergence on validation, within a time budget) unless told
otherwise, once per seed; the leaderboard is the mean over seeds with their spread. Writes
reports/quality-<dataset>.json (every seed's metrics and validation curve, the settings used), .md and
.png (the leaderboard) and -curves.png, and logs one MLflow run per family and seed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.models.families import family_names
from pipelines.track.lineage import provenance_line

FAMILIES = family_names()  # every registered model family, in leaderboard order
RECIPE = "quality"  # params.yaml recipe the benchmark trains with by default
# Published all-item-ranking results on the S3-Rec Beauty split (../shared/datasets/README.md).
PUBLISHED_BEAUTY = {
    "PopRec": (0.0152, 0.0068), "BERT4Rec": (0.0347, 0.0170), "SASRec": (0.0605, 0.0318),
    "S3-Rec": (0.0647, 0.0327), "eSASRec": (0.0928, 0.0523),
}
# Shared settings sections every family's fit may read besides its own (recorded with the report).
SHARED_SECTIONS = ("data", "evaluate", "graph", "prod2vec")


def _cell(m: dict[str, Any], key: str, spread: dict[str, Any], digits: int = 4) -> str:
    """`mean` or `mean ± sd` (sample standard deviation over seeds)."""
    value = f"{m.get(key, 0.0):.{digits}f}"
    return f"{value} ± {spread[key]:.{digits}f}" if key in spread else value


def _markdown(name: str, rows: dict[str, dict[str, Any]], k: int, published: bool, seeds: list[int],
              recipe: str | None) -> str:
    over = f"mean ± sd over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 \
        else f"seed {seeds[0]}"
    lines = [f"# Quality leaderboard: {name}", "",
             (f"Leave-one-out by time, target ranked against all items, seen items masked; @{k}; {over}; "
             f"params.yaml {f'recipe `{recipe}`' if recipe else 'as is (no recipe)'}."), "",
             f"| model | HR@{k} | NDCG@{k} | MRR | coverage | cold HR@{k} | long-tail HR@{k} | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for model, m in rows.items():
        sl, spread = m.get("slices", {}), m.get("spread", {})
        lines.append(f"| {model} | {_cell(m, f'hr_at_{k}', spread)} | {_cell(m, f'ndcg_at_{k}', spread)} | "
                     f"{_cell(m, 'mrr', spread)} | {m[f'coverage_at_{k}']:.3f} | "
                     f"{sl.get('cold_start', {}).get(f'hr_at_{k}', 0):.4f} | "
                     f"{sl.get('long_tail', {}).get(f'hr_at_{k}', 0):.4f} | {_cell(m, 'train_seconds', spread, 1)} |")
    trained = {model: m for model, m in rows.items() if any("epochs_run" in run["train_info"] for run in m["runs"])}
    if trained:
        lines += ["", (f"Training of the neural families, per seed (validation NDCG@{k} by epoch: "
                  f"quality-{name}-curves.png; every epoch in the .json):"), "",
                  "| model | epochs run | best epoch | stopped by | refit epochs | train s |", "|---|---|---|---|---|---|"]
        for model, m in trained.items():
            infos = [run["train_info"] for run in m["runs"]]
            lines.append(f"| {model} | {', '.join(str(i.get('epochs_run', '')) for i in infos)} | "
                         f"{', '.join(str(i.get('best_epoch', '')) for i in infos)} | "
                         f"{', '.join(str(i.get('stopped_by', '')).replace('_', ' ') for i in infos)} | "
                         f"{', '.join(str(i['refit']['epochs']) if 'refit' in i else 'none' for i in infos)} | "
                         f"{', '.join(format(run['train_seconds'], '.0f') for run in m['runs'])} |")
        if any("refit" in run["train_info"] for m in trained.values() for run in m["runs"]):
            lines += ["", ("Refit: after the best epoch is chosen on validation, a fresh model trains that many "
                           "epochs on the training histories plus each user's validation target, and the test "
                           "split scores that model (train s includes both runs).")]
    if any("business" in m for m in rows.values()):
        lines += ["", "Business view (simulated users of the generated world, top-10 lists, relative to popularity):", "",
                  "| model | CTR | add-to-cart | purchase | CTR vs static | ATC vs static | purchase vs static |",
                  "|---|---|---|---|---|---|---|"]
        for model, m in rows.items():
            b = m.get("business")
            if b:
                lines.append(f"| {model} | {b['ctr']:.4f} | {b['add_to_cart_rate']:.4f} | {b['purchase_rate']:.4f} | "
                             f"{b['ctr_lift']:+.0%} | {b['add_to_cart_lift']:+.0%} | {b['purchase_lift']:+.0%} |")
    earlier = {model: m["measured"] for model, m in rows.items() if "measured" in m}
    if earlier:
        lines += ["", ("Rows kept from an earlier run of this leaderboard (`--add`; same dataset, seeds, recipe and "
                       "overrides), each measured at its own commit:"), ""]
        lines += [f"- {model}: {provenance_line(stamp.get('code'))} Measured {stamp.get('measured_at')}."
                  for model, stamp in earlier.items()]
        lines += ["- the other rows: the commit below."]
    if published:
        lines += ["", "Published on the same split (all-item ranking):", "", "| model | HR@10 | NDCG@10 |", "|---|---|---|"]
        lines += [f"| {m} | {hr:.4f} | {nd:.4f} |" for m, (hr, nd) in PUBLISHED_BEAUTY.items()]
    return "\n".join(lines)


def _mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number (and each slice's and business view's) averaged over the seeds' runs; `spread` holds the
    sample standard deviation of the top-level numbers when there is more than one run."""
    def mean(dicts: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in dicts[0].items():
            if isinstance(value, dict):
                out[key] = mean([d[key] for d in dicts])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = statistics.fmean(d[key] for d in dicts)
        return out

    metrics = [{key: v for key, v in run.items() if key not in ("train_info", "seed")} for run in runs]
    row = mean(metrics)
    if len(runs) > 1:
        row["spread"] = {key: statistics.stdev(m[key] for m in metrics) for key, v in metrics[0].items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return row


def fit_families(families: tuple[str, ...], seqs: Any, catalogue: Any, settings: Any,
                 seed: int | None = None) -> Iterator[tuple[str, Any, dict]]:
    """(family, trained model, info with train_seconds) for each family, in order, trained with `seed`
    (default data.seed); the inputs some families share (Prod2Vec vectors, item meta tokens) are built once
    and their time counts for each family using them."""
    from pipelines.models.families import fit_family

    seed = settings.data.seed if seed is None else seed
    inputs: dict[Any, tuple[Any, float]] = {}
    for family in families:
        typer.secho(f"▶ {family} (seed {seed})", bold=True)
        ctx, input_seconds = fit_context(family, seqs, catalogue, settings, seed, inputs)
        model, info = fit_family(family, seqs, settings, ctx)
        info["train_seconds"] += input_seconds
        yield family, model, info


def fit_context(family: str, seqs: Any, catalogue: Any, settings: Any, seed: int,
                inputs: dict[Any, tuple[Any, float]] | None = None) -> tuple[Any, float]:
    """The FitContext `family` trains with (Prod2Vec vectors, item meta tokens: built here unless `inputs`, a
    cache shared by families, has them) and the seconds its Prod2Vec input took to train."""
    from pipelines.data.item_features import build_item_features
    from pipelines.embed.prod2vec import train_prod2vec
    from pipelines.models.base import FitContext, FitInput
    from pipelines.models.families import family as family_class

    inputs = {} if inputs is None else inputs
    wanted = family_class(family).inputs_for(getattr(settings, family))
    for which in sorted(wanted - set(inputs)):
        started = time.perf_counter()
        if which is FitInput.PRETRAINED:
            built = train_prod2vec(seqs.train(), seqs.n_items, settings.graph, settings.prod2vec, seed=seed)
            inputs[which] = (built, time.perf_counter() - started)
        else:
            inputs[which] = (build_item_features(catalogue, seqs.n_items).tokens, 0.0)
    ctx = FitContext(seed=seed, k=settings.evaluate.k, max_users=settings.evaluate.max_users, **{str(which): inputs[which][0] for which in wanted})
    return ctx, sum(inputs[which][1] for which in wanted)


def _earlier_rows(path: Path, families: tuple[str, ...], same: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rows of the existing report at `path` for families other than `families` (each stamped with the
    commit, command and date it was measured at), and its settings; refuses a report measured differently."""
    import json

    if not path.is_file():
        raise ValueError(f"--add keeps the other rows of {path}, but there is no such report: run without --add first")
    report = json.loads(path.read_text())
    differ = {key: (report.get(key), value) for key, value in same.items() if report.get(key) != value}
    if differ:
        detail = "; ".join(f"{key}: report {old!r}, this run {new!r}" for key, (old, new) in differ.items())
        raise ValueError(f"--add cannot put rows measured differently on one leaderboard ({path}): {detail}")
    stamp = {"code": report.get("code"), "measured_at": report.get("machine", {}).get("measured_at")}
    rows = {family: {"measured": stamp, **m} for family, m in report["models"].items() if family not in families}
    return rows, report.get("settings", {})


def run_quality(dataset: str, families: tuple[str, ...], overrides: list[str], log_mlflow: bool = True,
                out_dir: Path | None = None, recipe: str | None = None, seeds: int = 1, add: bool = False) -> Path:
    """Train and score `families` once per seed (data.seed, data.seed + 1, ...) on `dataset` with params.yaml,
    its `recipe` and `overrides` (in that order); writes the leaderboard report and returns its .json.

    With `add`, the existing report's rows for other families stay on the leaderboard (same dataset, seeds,
    recipe and overrides required), each keeping the commit it was measured at: a slow family can join a
    leaderboard without retraining the others."""
    import numpy as np

    from benchmarks.common import REPORTS, load_dataset, write_report
    from pipelines.core.config import Paths, load_settings
    from pipelines.data.sequences import build_sequences
    from pipelines.evaluate.protocol import evaluate
    from pipelines.evaluate.slices import standard_slices
    from pipelines.track.plots import plot_metrics, plot_validation_curves

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    settings = load_settings(overrides=overrides, recipe=recipe)
    name, world, truth = load_dataset(dataset, settings)
    seqs = build_sequences(world.events, len(world.catalogue))
    k = settings.evaluate.k
    slices = standard_slices(seqs, "test", cold_max_interactions=settings.evaluate.cold_max_interactions)
    seed_list = [settings.data.seed + i for i in range(seeds)]
    report_name = f"quality-{name}"
    out_dir = out_dir or REPORTS
    earlier: dict[str, Any] = {}
    earlier_settings: dict[str, Any] = {}
    if add:  # checked before training: an hour of training must not end in a refusal
        same = {"dataset": name, "seeds": seed_list, "recipe": recipe, "overrides": overrides}
        earlier, earlier_settings = _earlier_rows(out_dir / f"{report_name}.json", families, same)
    runs: dict[str, list[dict[str, Any]]] = {family: [] for family in families}
    for seed in seed_list:
        for family, model, info in fit_families(families, seqs, world.catalogue, settings, seed=seed):
            lists: dict[int, np.ndarray] = {}
            m = evaluate(model, seqs, split="test", k=k, mask_seen=settings.evaluate.mask_seen, slices=slices,
                         max_users=settings.evaluate.max_users, top_lists=lists if truth is not None else None)
            m["seed"], m["train_seconds"], m["train_info"] = seed, info["train_seconds"], info
            if truth is not None:
                users = {int(seqs.user_ids[row]): items for row, items in lists.items()}
                m["business"] = truth.estimate(users, seed=settings.data.seed)
            runs[family].append(m)
            typer.echo(f"  HR@{k} {m[f'hr_at_{k}']:.4f}  NDCG@{k} {m[f'ndcg_at_{k}']:.4f}  "
                       f"train {m['train_seconds']:.1f}s")
    rows = {family: {**_mean_over_seeds(family_runs), "runs": family_runs} for family, family_runs in runs.items()}
    if add:
        rows = {family: (rows[family] if family in rows else earlier[family])
                for family in FAMILIES if family in rows or family in earlier}
    if "popularity" in rows and "business" in rows["popularity"]:
        base = rows["popularity"]["business"]
        for m in rows.values():
            b = m["business"]
            for key, lift in (("ctr", "ctr_lift"), ("add_to_cart_rate", "add_to_cart_lift"),
                              ("purchase_rate", "purchase_lift")):
                b[lift] = b[key] / base[key] - 1.0 if base[key] else 0.0
    plot_metrics(rows, out_dir / f"{report_name}.png")
    curves = {family: [run["train_info"]["history"] for run in m["runs"] if run["train_info"].get("history")]
              for family, m in rows.items()}
    if any(curves.values()):
        plot_validation_curves(curves, out_dir / f"{report_name}-curves.png",
                               title=f"{name}: validation by epoch (the best epoch is kept)")
    used = {**earlier_settings,
            **{section: getattr(settings, section).model_dump() for section in (*SHARED_SECTIONS, *families)}}
    payload = {
        "dataset": name, "source": dataset, "recipe": recipe, "overrides": overrides, "seeds": seed_list,
        "settings": used,
        "protocol": {"split": "leave-one-out by time", "ranking": "all items", "mask_seen": settings.evaluate.mask_seen,
                     "k": k, "users": len(seqs.evaluation("test")[1]),
                     "slice_users": {s: int(mask.sum()) for s, mask in slices.items()},
                     "model_selection": "validation split (best epoch by validation NDCG@k); test read once per seed"},
        "models": rows,
        "published": {m: {"hr_at_10": hr, "ndcg_at_10": nd} for m, (hr, nd) in PUBLISHED_BEAUTY.items()}
        if name == "beauty" else {},
    }
    path = write_report(report_name, payload, _markdown(name, rows, k, name == "beauty", seed_list, recipe), out_dir)
    if log_mlflow:
        _log_to_mlflow(report_name, {family: rows[family] for family in families}, settings, Paths(), recipe)
    return path


def _log_to_mlflow(experiment: str, rows: dict[str, dict[str, Any]], settings, paths, recipe: str | None) -> None:
    """One run per family and seed in experiment `experiment`, same metric names (comparable in the UI), with
    the validation curve as step metrics and the family's settings as params."""
    from pipelines.track.service import MlflowService

    service = MlflowService.from_settings(settings, paths, experiment=experiment)
    for family, m in rows.items():
        for run in m["runs"]:
            flat = {key: float(v) for key, v in run.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for slice_name, values in run.get("slices", {}).items():
                flat.update({f"{slice_name}.{key}": float(v) for key, v in values.items() if key != "n_users"})
            for key, v in run.get("business", {}).items():
                flat[f"business.{key}"] = float(v)
            with service.start_run(run_name=f"{family} seed {run['seed']}") as active:
                service.log_values(active.info.run_id, metrics=flat,
                                   params={f"{family}.{key}": v for key, v in getattr(settings, family).model_dump().items()},
                                   tags={"family": family, "seed": str(run["seed"]), "recipe": recipe or "none",
                                         "stopped_by": str(run["train_info"].get("stopped_by", ""))})
                for row in run["train_info"].get("history", []):
                    service.log_step_metrics(active.info.run_id, {key: v for key, v in row.items() if key != "epoch"},
                                             step=int(row["epoch"]))


def register(bench: typer.Typer) -> None:
    @bench.command("quality")
    def quality(
        dataset: Annotated[str, typer.Option(help="'synthetic' or an S3-Rec file/folder, e.g. ../shared/datasets/amazon-beauty")] = "synthetic",
        models: Annotated[str, typer.Option(help="comma-separated families")] = ",".join(FAMILIES),
        set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override section.key=value")] = None,
        recipe: Annotated[str, typer.Option(help="params.yaml recipe trained with ('none': params.yaml as is); "
                                                 "--set values apply after it")] = RECIPE,
        seeds: Annotated[int, typer.Option(min=1, help="train and score each family this many times, with seeds "
                                                       "data.seed, data.seed + 1, ...; the report gives mean and sd")] = 3,
        mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log one MLflow run per family and seed")] = True,
        add: Annotated[bool, typer.Option("--add", help="keep the existing report's rows of the other families "
                                                        "(each with the commit it was measured at)")] = False,
    ) -> None:
        """Train and score every family on one dataset; writes reports/quality-<dataset>.json/.md/.png/-curves.png."""
        chosen = tuple(m.strip() for m in models.split(",") if m.strip())
        unknown = sorted(set(chosen) - set(FAMILIES))
        if unknown:
            raise typer.BadParameter(f"unknown model families {unknown}; choose from {', '.join(FAMILIES)}")
        from pipelines.core.config import SettingsError

        try:
            path = run_quality(dataset, chosen, set_ or [], log_mlflow=mlflow_log,
                               recipe=None if recipe == "none" else recipe, seeds=seeds, add=add)
        except (SettingsError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(path.with_suffix(".md").read_text())
        typer.echo(f"written: {path}")
