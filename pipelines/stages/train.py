"""Training stages, one per registered model family, and the evaluation of every family on one protocol."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pipelines.core.config import Paths, Settings
from pipelines.core.files import published_dir, read_json, write_json_atomic
from pipelines.models.base import EmbedsUsers, FitInput
from pipelines.models.families import family_names
from pipelines.models.user_vectors import USERS_FILE

# Where the training stage finds each extra input a family may ask for (dvc.yaml lists the same paths).
INPUT_DEPS: dict[FitInput, str] = {
    FitInput.PRETRAINED: "artifacts/embeddings/prod2vec",
    FitInput.ITEM_TOKENS: "data/features",
}


def _load_input(which: FitInput, p: Paths) -> Any:
    from pipelines.data.item_features import ItemFeatures
    from pipelines.embed.prod2vec import ItemEmbeddings

    if which is FitInput.PRETRAINED:
        return ItemEmbeddings.load(p.embeddings / "prod2vec")
    return ItemFeatures.load(p.features).tokens


# params.yaml sections behind each extra input, logged with the child run of a family that reads it.
INPUT_SECTIONS: dict[FitInput, tuple[str, ...]] = {FitInput.PRETRAINED: ("graph", "prod2vec")}


def train_family(name: str, s: Settings, p: Paths) -> dict[str, Any]:
    """Fit one model family on the training split and save it under artifacts/models/<name>.

    Tracked live in the family's MLflow child run: params and dataset when it starts, each epoch's loss
    and validation metrics as they come (a family with the shared epoch loop), system metrics, then the
    final metrics, train_seconds and the validation curve (training.png, also saved with the model).
    A family without validation epochs is scored once on the validation split, so every family's run
    has the same validation metric names.
    """
    from pipelines.data.sequences import load_sequences
    from pipelines.evaluate.protocol import evaluate as run_protocol
    from pipelines.models.base import FitContext
    from pipelines.models.families import family, fit_family
    from pipelines.track.live import training_dataset, training_run
    from pipelines.track.plots import plot_training_history

    if getattr(getattr(s, name), "refit", False):
        raise ValueError(f"{name}.refit=true trains the model on the validation targets, and the promotion gate "
                         f"decides on validation figures, so it could not judge this model honestly; the pipeline "
                         f"trains with {name}.refit=false (the quality benchmark's recipe uses the refit)")
    wanted = family(name).inputs_for(getattr(s, name))
    sections = ("data", "evaluate", name, *(section for which in wanted for section in INPUT_SECTIONS.get(which, ())))
    params = {k: v for k, v in s.flat().items() if k.split(".", 1)[0] in sections}
    seqs = load_sequences(p.features)
    with training_run(s, p, name, kind="model", params=params, dataset=training_dataset(s, p)) as run:
        ctx = FitContext(seed=s.data.seed, k=s.evaluate.k, max_users=s.evaluate.max_users, on_epoch=run.log_epoch,
                         **{str(which): _load_input(which, p) for which in wanted})
        model, info = fit_family(name, seqs, s, ctx)
        with published_dir(p.models / name) as out:
            model.save(out)
            if isinstance(model, EmbedsUsers):  # the home page's stored user vectors, versioned with the model
                users = model.user_embeddings(seqs, progress=ctx.progress)
                (out / USERS_FILE).write_bytes(users.to_bytes())
                info["users_stored"] = len(users.user_ids)
            write_json_atomic(out / "train.json", info)
            if "history" in info:
                plot_training_history(info["history"], out / "training.png", title=f"{name} training")
        final = dict(info)
        if "history" in info:  # the valid_* curves are logged; the chosen epoch's values as best_valid_*
            best = info["history"][info["best_epoch"] - 1] if info["best_epoch"] else {}
        else:
            run.log_curve("loss", list(info.get("losses", [])))
            valid = run_protocol(model, seqs, split="valid", k=s.evaluate.k, max_users=s.evaluate.max_users)
            best = {f"valid_{key}": value for key, value in valid.items() if key != "n_users"}
            final |= best
        final |= {f"best_{key}": value for key, value in best.items() if key.startswith("valid_")}
        plot = p.models / name / "training.png"
        run.finish(final, {"plots": plot} if plot.exists() else None)
    summary = {key: value for key, value in info.items() if key != "history"}
    return {**summary, "mlflow_run_id": run.run_id, "mlflow_run_url": run.url}


TRAIN_STAGES: dict[str, Callable[[Settings, Paths], dict[str, Any]]] = {
    f"train_{name}": partial(train_family, name) for name in family_names()
}


def evaluate(s: Settings, p: Paths) -> dict[str, Any]:
    """Every trained family on the same test split, same protocol; writes reports/metrics.json."""
    from pipelines.data.sequences import load_sequences
    from pipelines.evaluate.protocol import evaluate as run_protocol
    from pipelines.evaluate.slices import standard_slices
    from pipelines.models.families import load_recommenders
    from pipelines.track.plots import plot_metrics

    seqs = load_sequences(p.features)
    models = load_recommenders(p.models)
    slices = standard_slices(seqs, "test", cold_max_interactions=s.evaluate.cold_max_interactions)
    results: dict[str, dict[str, float]] = {}
    slice_users: dict[str, int] = {}  # in the ranked users (the fixed sample above evaluate.max_users)
    for name, model in models.items():
        metrics = run_protocol(model, seqs, split="test", k=s.evaluate.k, mask_seen=s.evaluate.mask_seen,
                               slices=slices, max_users=s.evaluate.max_users)
        # Flat names ("cold_start.hr_at_10"), the same for every family, so MLflow can compare them.
        for slice_name, values in metrics.pop("slices").items():
            slice_users[slice_name] = int(values["n_users"])
            metrics.update({f"{slice_name}.{key}": value for key, value in values.items() if key != "n_users"})
        metrics["train_seconds"] = read_json(p.models / name / "train.json")["train_seconds"]
        results[name] = metrics
    payload = {"protocol": {"split": "leave-one-out by time, last item", "ranking": "all items",
                            "mask_seen": s.evaluate.mask_seen, "k": s.evaluate.k,
                            "cold_max_interactions": s.evaluate.cold_max_interactions,
                            "max_users": s.evaluate.max_users,
                            "slice_users": slice_users},
               "models": results}
    write_json_atomic(p.reports / "metrics.json", payload)
    plot_metrics(results, p.reports / "metrics.png")
    return results
