"""Plots people would rather look at than read; written as PNG and logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> Path:
    """Lay out, write `path` (its folder made if missing) and free the figure: how every rxrec plot ends."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_training_history(history: list[dict[str, float]], path: Path, title: str = "GPT4Rec training") -> Path:
    """Training loss and validation NDCG@k (the history's valid_ndcg_at_<k>) by epoch."""
    epochs = [row["epoch"] for row in history]
    key = next(name for name in history[0] if name.startswith("valid_ndcg_at_"))
    label = f"valid NDCG@{key.removeprefix('valid_ndcg_at_')}"
    fig, loss_ax = plt.subplots(figsize=(6, 3.5))
    loss_ax.plot(epochs, [row["loss"] for row in history], marker="o", color="tab:blue", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy", color="tab:blue")
    metric_ax = loss_ax.twinx()
    metric_ax.plot(epochs, [row[key] for row in history], marker="s", color="tab:orange", label=label)
    metric_ax.set_ylabel(label, color="tab:orange")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_metrics(models: dict[str, dict[str, float]], path: Path, keys: tuple[str, ...] = ("hr_at_10", "ndcg_at_10")) -> Path:
    """Side-by-side bars of each model's ranking metrics."""
    names = list(models)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar([x + i * width for x in range(len(names))], [models[n].get(key, 0.0) for n in names], width, label=key)
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(names))], names)
    ax.set_ylabel("score (all-item ranking)")
    ax.legend()
    return save_figure(fig, path)


def plot_validation_curves(curves: dict[str, list[list[dict[str, float]]]], path: Path, title: str) -> Path:
    """Validation NDCG@k by epoch: one panel per family, one line per seed (a history of the epoch loop each)."""
    names = [name for name, runs in curves.items() if any(runs)]
    if not names:
        raise ValueError("no family has an epoch-by-epoch history to plot")
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for seed, history in enumerate(curves[name]):
            key = next(key for key in history[0] if key.startswith("valid_ndcg_at_"))
            ax.plot([row["epoch"] for row in history], [row[key] for row in history], marker=".",
                    label=f"seed {seed + 1}")
            ax.set_ylabel(f"valid NDCG@{key.removeprefix('valid_ndcg_at_')}")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_figure(fig, path)
