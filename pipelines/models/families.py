"""The registry of model families: found by name, listed in leaderboard order, trained and loaded alike.

A family is registered by existing: a params.yaml section (a field of `Settings`) with a module of
the same name in this package that defines its `Family` subclass (pipelines/models/base.py). The
leaderboard order is the order of those sections in `Settings`: 1mg's evolution (static list → MF →
rules → NCF → GPT4Rec), then the families added since. Listing them imports no model code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from pathlib import Path
from typing import Any

from pipelines.core.config import Settings
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext


def family_names() -> tuple[str, ...]:
    """Every registered family, in leaderboard order."""
    return tuple(name for name in Settings.model_fields
                 if importlib.util.find_spec(f"{__package__}.{name}") is not None)


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
    return found[0]


def fit_family(name: str, seqs: Sequences, settings: Settings, ctx: FitContext) -> tuple[Family, dict[str, Any]]:
    """Train one family on `seqs` with its params section; returns (model, info with train_seconds).

    The stages and the quality benchmark both train through here, so a family is trained the
    same way wherever it appears on the leaderboard.
    """
    started = time.perf_counter()
    model, info = family(name).fit(seqs, getattr(settings, name), ctx)
    info["train_seconds"] = round(time.perf_counter() - started, 3)
    return model, info


def load_recommenders(models_dir: Path) -> dict[str, Family]:
    """Every family trained under models_dir (a folder per family), in leaderboard order."""
    return {name: family(name).load(models_dir / name) for name in family_names() if (models_dir / name).is_dir()}
