"""Training stages (one per model family) and the evaluation of every family on one protocol."""

from __future__ import annotations

from typing import Any

from pipelines.core.config import Paths, Settings
from pipelines.core.files import published_dir, read_json, write_json_atomic


def _train_family(name: str, s: Settings, p: Paths, **inputs: Any) -> dict[str, Any]:
    """Fit one model family on the training split and save it under artifacts/models/<name>."""
    from pipelines.data.sequences import load_sequences
    from pipelines.models.families import fit_family

    model, info = fit_family(name, load_sequences(p.features), s, **inputs)
    with published_dir(p.models / name) as out:
        model.save(out)
        write_json_atomic(out / "train.json", info)
    return info


def train_popularity(s: Settings, p: Paths) -> dict[str, Any]:
    return _train_family("popularity", s, p)


def train_mf(s: Settings, p: Paths) -> dict[str, Any]:
    return _train_family("mf", s, p)


def train_rules(s: Settings, p: Paths) -> dict[str, Any]:
    return _train_family("rules", s, p)


def train_ncf(s: Settings, p: Paths) -> dict[str, Any]:
    return _train_family("ncf", s, p)


def train_gpt4rec(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.item_features import ItemFeatures
    from pipelines.embed.prod2vec import ItemEmbeddings
    from pipelines.track.plots import plot_training_history

    pretrained = ItemEmbeddings.load(p.embeddings / "prod2vec") if s.gpt4rec.init_from_prod2vec else None
    tokens = ItemFeatures.load(p.features).tokens if s.gpt4rec.use_meta else None
    info = _train_family("gpt4rec", s, p, pretrained=pretrained, item_tokens=tokens)
    plot_training_history(info["history"], p.models / "gpt4rec" / "training.png")
    return {k: v for k, v in info.items() if k != "history"}


def evaluate(s: Settings, p: Paths) -> dict[str, Any]:
    """Every model on the same test split, same protocol; writes reports/metrics.json."""
    from pipelines.data.sequences import load_sequences
    from pipelines.evaluate.protocol import evaluate as run_protocol
    from pipelines.evaluate.slices import standard_slices
    from pipelines.models.families import load_recommenders
    from pipelines.track.plots import plot_metrics

    seqs = load_sequences(p.features)
    models = load_recommenders(p.models)
    slices = standard_slices(seqs, "test")
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        metrics = run_protocol(model, seqs, split="test", k=s.evaluate.k, mask_seen=s.evaluate.mask_seen,
                               slices=slices)
        # Flat names ("cold_start.hr_at_10"), the same for every family, so MLflow can compare them.
        for slice_name, values in metrics.pop("slices").items():
            metrics.update({f"{slice_name}.{key}": value for key, value in values.items() if key != "n_users"})
        metrics["train_seconds"] = read_json(p.models / name / "train.json")["train_seconds"]
        results[name] = metrics
    payload = {"protocol": {"split": "leave-one-out by time, last item", "ranking": "all items",
                            "mask_seen": s.evaluate.mask_seen, "k": s.evaluate.k,
                            "slice_users": {name: int(mask.sum()) for name, mask in slices.items()}},
               "models": results}
    write_json_atomic(p.reports / "metrics.json", payload)
    plot_metrics(results, p.reports / "metrics.png")
    return results
