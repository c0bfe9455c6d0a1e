"""The registry of model families: found by name, listed in leaderboard order, trained and loaded alike.

A family is registered by existing: a section of the project's params.yaml with a module of the same
name in this package that defines its `Family` subclass and the class of that section
(pipelines/models/base.py). Nothing else names it: the settings loader validates the section through
`section_types()` (wired in pipelines/__init__.py), and the training stage, its dvc.yaml stage, the DAG
task and the leaderboard row are made from `family_names()`. The leaderboard order is the order of the
sections in params.yaml: 1mg's evolution (static list → MF → rules → NCF → GPT4Rec), then the families
added since. Listing the families imports no model code; typing their sections imports their modules.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.core.config import ParamsSection, Settings, params_file_sections
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext


@functools.cache
def family_names() -> tuple[str, ...]:
    """Every registered family, in leaderboard order: the params.yaml sections that name a module here."""
    core = {info.alias or name for name, info in Settings.model_fields.items()}
    return tuple(name for name in params_file_sections() if name not in core and name.isidentifier()
                 and importlib.util.find_spec(f"{__package__}.{name}") is not None)


@functools.cache
def family(name: str) -> type[Family]:
    """The family class of module pipelines/models/<name>.py."""
    if name not in family_names():
        raise KeyError(f"unknown model family {name!r}; families are: {', '.join(family_names())}")
    module = importlib.import_module(f"{__package__}.{name}")
    found = [obj for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, Family) and getattr(obj, "family", None) == name]
    if len(found) != 1:
        raise TypeError(f"{module.__name__} must define exactly one Family subclass with family = {name!r}, "
                        f"found {len(found)}")
    settings_type = getattr(found[0], "settings_type", None)
    if not (inspect.isclass(settings_type) and issubclass(settings_type, ParamsSection)):
        raise TypeError(f"{found[0].__qualname__} ({module.__name__}) must set settings_type to the class of "
                        f"its params.yaml section {name!r}: a subclass of pipelines.core.config.ParamsSection")
    return found[0]


def section_types() -> dict[str, type[ParamsSection]]:
    """params.yaml section -> its class, for every family (what the settings loader validates them with)."""
    return {name: family(name).settings_type for name in family_names()}


def fit_family(name: str, seqs: Sequences, settings: Settings, ctx: FitContext) -> tuple[Family, dict[str, Any]]:
    """Train one family on `seqs` with its params section; returns (model, info with train_seconds).

    The stages and the quality benchmark both train through here, so a family is trained the
    same way wherever it appears on the leaderboard. With `<name>.refit` the model returned is a fresh
    one trained the chosen number of epochs on the training histories plus the validation targets;
    `info` keeps the selection run's validation curve and best epoch, and adds `refit` (its epochs,
    losses and seconds); train_seconds covers both.
    """
    started = time.perf_counter()
    section = getattr(settings, name)
    model, info = family(name).fit(seqs, section, ctx)
    if getattr(section, "refit", False) and info.get("best_epoch"):
        model, info["refit"] = refit_family(name, seqs, section, ctx, info["best_epoch"],
                                            info.get("best_epoch_fraction", 1.0))
    info["train_seconds"] = round(time.perf_counter() - started, 3)
    return model, info


def refit_family(name: str, seqs: Sequences, section: ParamsSection, ctx: FitContext,
                 epochs: int, last_epoch_fraction: float = 1.0) -> tuple[Family, dict[str, Any]]:
    """A fresh model of family `name` trained `epochs` epochs (the last one `last_epoch_fraction` of its batches,
    as the time budget cut the selected epoch) on the training histories plus each user's validation target,
    reading no validation; returns it with its epochs, losses and seconds."""
    refit_section = section.model_copy(update={"epochs": epochs, "time_budget_s": 0})
    model, info = family(name).fit(seqs.with_validation_in_training(), refit_section,
                                   replace(ctx, validate=False, on_epoch=None, last_epoch_fraction=last_epoch_fraction))
    return model, {"epochs": info["epochs_run"], "last_epoch_fraction": info["best_epoch_fraction"],
                   "fit_seconds": info["fit_seconds"],
                   "losses": [row["loss"] for row in info["history"]],
                   "data": "training histories + each user's validation target"}


def load_recommenders(models_dir: Path) -> dict[str, Family]:
    """Every family trained under models_dir (a folder per family), in leaderboard order."""
    return {name: family(name).load(models_dir / name) for name in family_names() if (models_dir / name).is_dir()}
