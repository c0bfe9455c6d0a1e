"""Stage entry points: one function per stage of dvc.yaml, same names (grouped by area in this package).

Each reads its inputs from `Paths`, calls the library, writes its outputs and returns a small
JSON-able summary (what the CLI prints and Airflow keeps as XCom). The CLI, `dvc repro` and the
Airflow DAG all go through `run_stage`; none of them holds logic of its own. What each stage reads
and writes is declared once in `declare.py`; `run_stage` holds every stage to its declaration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.core.config import Paths, Settings, load_settings
from pipelines.stages.data import generate, sequences, validate
from pipelines.stages.declare import DeclaredSettings, declared_stages, strict_io, watch_io
from pipelines.stages.embed import meta_prod2vec, prod2vec, similar_products, text_encoder, tfidf
from pipelines.stages.promote import deploy, export_onnx, register, serve_check
from pipelines.stages.train import TRAIN_STAGES, evaluate

StageFn = Callable[[Settings, Paths], dict[str, Any]]


STAGES: dict[str, StageFn] = {
    "generate": generate,
    "validate": validate,
    "sequences": sequences,
    "prod2vec": prod2vec,
    "tfidf": tfidf,
    "text_encoder": text_encoder,
    "meta_prod2vec": meta_prod2vec,
    "similar_products": similar_products,
    **TRAIN_STAGES,  # train_<family> for every registered model family, in leaderboard order
    "evaluate": evaluate,
    "export_onnx": export_onnx,
    "register": register,
    "deploy": deploy,
    "serve_check": serve_check,
}


def run_stage(name: str, overrides: list[str] | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run one stage by its dvc.yaml name with params.yaml + overrides."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    spec = next(s for s in declared_stages() if s.name == name)
    settings = DeclaredSettings(load_settings(overrides=overrides or []), spec)
    paths = Paths(workdir)
    started = time.perf_counter()
    if strict_io():
        with watch_io(spec, paths.root):
            summary = dict(STAGES[name](settings, paths))  # type: ignore[arg-type]
    else:
        summary = dict(STAGES[name](settings, paths))  # type: ignore[arg-type]
    summary["stage_seconds"] = round(time.perf_counter() - started, 2)
    return summary
