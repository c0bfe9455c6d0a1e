"""Every recommender family by name: how to load a trained one for evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.evaluate.protocol import Recommender


def _popularity(path: Path) -> Recommender:
    from pipelines.models.popularity import PopularityRecommender

    return PopularityRecommender.load(path)


def _mf(path: Path) -> Recommender:
    from pipelines.models.mf import MatrixFactorization

    return MatrixFactorization.load(path)


def _rules(path: Path) -> Recommender:
    from pipelines.models.rules import AssociationRules

    return AssociationRules.load(path)


def _ncf(path: Path) -> Recommender:
    from pipelines.models.ncf import NCFRecommender

    return NCFRecommender.load(path)


def _gpt4rec(path: Path) -> Recommender:
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecRecommender

    return GPT4RecRecommender(GPT4Rec.load(path))


# The model evolution, in the order 1mg went through it: static list → MF → rules → NCF → GPT4Rec.
LOADERS: dict[str, Callable[[Path], Recommender]] = {
    "popularity": _popularity,
    "mf": _mf,
    "rules": _rules,
    "ncf": _ncf,
    "gpt4rec": _gpt4rec,
}


def load_recommenders(models_dir: Path) -> dict[str, Recommender]:
    """Every family trained under models_dir (a folder per family), in evolution order."""
    return {name: load(models_dir / name) for name, load in LOADERS.items() if (models_dir / name).is_dir()}


def fit_family(name: str, seqs, settings, pretrained=None, item_tokens=None,
               progress: bool = True) -> tuple[Recommender, dict]:
    """Train one family on `seqs` (its training split) with `settings`; returns (model, info).

    The stages and the quality benchmark both train through here, so a family is trained the
    same way wherever it appears on the leaderboard.
    """
    import time

    started = time.perf_counter()
    info: dict = {}
    if name == "popularity":
        from pipelines.models.popularity import PopularityRecommender

        model = PopularityRecommender.fit(seqs, settings.popularity.window_days)
    elif name == "mf":
        from pipelines.models.mf import MatrixFactorization

        model = MatrixFactorization.fit(seqs.train(), seqs.n_items, settings.mf, seed=settings.data.seed,
                                        progress=progress)
    elif name == "rules":
        from pipelines.models.rules import AssociationRules

        model = AssociationRules.fit(seqs.train(), seqs.n_items, settings.rules)
        info["n_rules"] = int(model.rules.nnz)
    elif name == "ncf":
        from pipelines.models.ncf import NCFRecommender

        model, losses = NCFRecommender.fit(seqs.train(), seqs.n_items, settings.ncf, seed=settings.data.seed,
                                           progress=progress)
        info["losses"] = [round(x, 4) for x in losses]
    elif name == "gpt4rec":
        from pipelines.models.gpt4rec import GPT4RecRecommender
        from pipelines.models.train import train_gpt4rec

        result = train_gpt4rec(seqs, settings.gpt4rec, seed=settings.data.seed, pretrained=pretrained,
                               progress=progress, item_tokens=item_tokens)
        model = GPT4RecRecommender(result.model)
        info.update(best_epoch=result.best_epoch, epochs_run=len(result.history), history=result.history,
                    initialised_items=result.initialised_items, event_kinds=result.model.config.event_kinds)
    else:
        raise KeyError(f"unknown model family {name!r}; families are: {', '.join(LOADERS)}")
    info["train_seconds"] = round(time.perf_counter() - started, 3)
    return model, info
