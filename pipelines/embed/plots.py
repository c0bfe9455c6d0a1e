"""Embedding plots: a 2-D map coloured by therapeutic class, and the field-importance bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import scipy.sparse as sp

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipelines.data.text import normalise_value
from pipelines.track.plots import save_figure

MAX_POINTS = 5000
MAX_CLASSES = 10


def project_2d(vectors: np.ndarray | sp.csr_matrix, seed: int = 0) -> np.ndarray:
    """PCA (truncated SVD of the centred rows for dense, plain for sparse) to 2-D: fast and deterministic."""
    if sp.issparse(vectors):
        from sklearn.decomposition import TruncatedSVD

        return TruncatedSVD(n_components=2, random_state=seed).fit_transform(vectors)
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_embedding_map(vectors, known: np.ndarray, labels: pd.Series | None, path: Path, title: str,
                       seed: int = 0) -> Path:
    """Scatter of the items with a vector, coloured by label (the 10 most common; the rest grey)."""
    items = np.flatnonzero(known)
    if len(items) > MAX_POINTS:
        items = np.sort(np.random.default_rng(seed).choice(items, MAX_POINTS, replace=False))
    xy = project_2d(vectors[items], seed) if len(items) >= 3 else np.zeros((len(items), 2))
    fig, ax = plt.subplots(figsize=(7, 5.5))
    if labels is not None:
        lab = labels.reindex(items).map(normalise_value).replace("", "(missing)").to_numpy()
        top = pd.Series(lab).value_counts().index[:MAX_CLASSES]
        other = ~np.isin(lab, top)
        ax.scatter(xy[other, 0], xy[other, 1], s=5, c="lightgrey", label="other / missing")
        for i, name in enumerate(top):
            sel = lab == name
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=plt.cm.tab10(i % 10), label=name)
        ax.legend(fontsize=7, markerscale=2, loc="best")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=5)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)


def plot_field_importance(importance: dict[str, float], path: Path, title: str = "Meta-Prod2Vec field importance"
                          ) -> Path:
    """Bars of each meta field's share of the importance (its agreement with the id vectors), largest first."""
    names = sorted(importance, key=importance.get, reverse=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [importance[n] for n in names], color="tab:blue")
    ax.set_ylabel("share of importance")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return save_figure(fig, path)
