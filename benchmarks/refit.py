"""`rxrec bench refit`: does refitting on train + validation targets beat the selected model? Decided on
validation only.

A refit trains on each user's validation target, so the validation split cannot judge it. This check moves
everything one step earlier (`Sequences.one_step_earlier`: each user's test item removed), picks the best
epoch on that view's validation split, and scores two models on that view's test split, which is the real
validation target: the selected model, and a fresh one refit for the chosen epochs on that view's train +
validation. The real test split is never read. Writes reports/refit-<dataset>-<family>.json/.md.
"""

from __future__ import annotations

from typing import Annotated

import typer


def run_refit_check(dataset: str, family: str, recipe: str | None, seed: int | None, overrides: list[str]) -> dict:
    """Selected vs refit model of `family` on the one-step-earlier view of `dataset` (metrics, epochs, seconds)."""
    from benchmarks.common import load_dataset
    from benchmarks.quality import fit_context
    from pipelines.core.config import load_settings
    from pipelines.data.sequences import build_sequences
    from pipelines.evaluate.protocol import evaluate
    from pipelines.models.families import fit_family, refit_family

    settings = load_settings(overrides=[*overrides, f"{family}.refit=false"], recipe=recipe)
    seed = settings.data.seed if seed is None else seed
    name, world, _ = load_dataset(dataset, settings)
    earlier = build_sequences(world.events, len(world.catalogue)).one_step_earlier()
    k = settings.evaluate.k
    ctx, _ = fit_context(family, earlier, world.catalogue, settings, seed)
    typer.secho(f"▶ {family}: selection on the one-step-earlier view (seed {seed})", bold=True)
    selected, info = fit_family(family, earlier, settings, ctx)
    typer.secho(f"▶ {family}: refit for {info['best_epoch']} epochs on its train + validation", bold=True)
    refit, refit_info = refit_family(family, earlier, getattr(settings, family), ctx, info["best_epoch"])
    scores = {}
    for which, model in (("selected", selected), ("refit", refit)):
        m = evaluate(model, earlier, split="test", k=k, mask_seen=settings.evaluate.mask_seen,
                     max_users=settings.evaluate.max_users)
        scores[which] = {key: m[key] for key in (f"hr_at_{k}", f"ndcg_at_{k}", "mrr", "n_users")}
        typer.echo(f"  {which:<8} HR@{k} {m[f'hr_at_{k}']:.4f}  NDCG@{k} {m[f'ndcg_at_{k}']:.4f}")
    return {"dataset": name, "family": family, "seed": seed, "recipe": recipe, "overrides": overrides, "k": k,
            "settings": getattr(settings, family).model_dump(), "scores": scores,
            "selection": {key: info[key] for key in ("best_epoch", "epochs_run", "stopped_by", "fit_seconds")},
            "refit": {key: value for key, value in refit_info.items() if key != "losses"}}


def _markdown(result: dict) -> str:
    k, s = result["k"], result["scores"]
    lines = [f"# Refit check: {result['family']} on {result['dataset']}", "",
             ("Each user's test item removed; best epoch chosen on that view's validation split; both models scored "
             f"on its test split, the real validation target (the real test split is never read). Seed "
             f"{result['seed']}, params.yaml recipe `{result['recipe']}`."), "",
             f"| model | HR@{k} | NDCG@{k} | MRR | epochs | train s |", "|---|---|---|---|---|---|"]
    sel, ref = result["selection"], result["refit"]
    lines.append(f"| selected (best validation epoch) | {s['selected'][f'hr_at_{k}']:.4f} | "
                 f"{s['selected'][f'ndcg_at_{k}']:.4f} | {s['selected']['mrr']:.4f} | {sel['best_epoch']} of "
                 f"{sel['epochs_run']} | {sel['fit_seconds']:.0f} |")
    lines.append(f"| refit on train + validation | {s['refit'][f'hr_at_{k}']:.4f} | {s['refit'][f'ndcg_at_{k}']:.4f} | "
                 f"{s['refit']['mrr']:.4f} | {ref['epochs']} | {ref['fit_seconds']:.0f} |")
    gain = s["refit"][f"ndcg_at_{k}"] / max(s["selected"][f"ndcg_at_{k}"], 1e-12) - 1
    lines += ["", f"Refit against selected: NDCG@{k} {gain:+.1%} over {int(s['refit']['n_users']):,} users."]
    return "\n".join(lines)


def register(bench: typer.Typer) -> None:
    @bench.command("refit")
    def refit(
        dataset: Annotated[str, typer.Option(help="'synthetic' or an S3-Rec file/folder")] = "synthetic",
        model: Annotated[str, typer.Option(help="a neural family")] = "gpt4rec",
        recipe: Annotated[str, typer.Option(help="params.yaml recipe ('none': the sections as they are)")] = "quality",
        seed: Annotated[int | None, typer.Option(help="default data.seed")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override section.key=value")] = None,
    ) -> None:
        """Selected vs refit model, decided one step earlier (no test read); writes reports/refit-<dataset>-<family>.*."""
        from benchmarks.common import write_report

        result = run_refit_check(dataset, model, None if recipe == "none" else recipe, seed, set_ or [])
        path = write_report(f"refit-{result['dataset']}-{model}", result, _markdown(result))
        typer.echo(path.with_suffix(".md").read_text())

