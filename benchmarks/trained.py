"""Trained GPT4Rec models at a chosen catalogue size, for the serving benchmarks.

A catalogue is `synthetic:N` (a generated world of N products) or an S3-Rec file or folder (a real
catalogue such as Amazon Beauty's 12,101 items). Its model is trained by the pipeline itself: the
stages generate/ingest, validate, sequences, prod2vec, train_gpt4rec and export_onnx run as
`rxrec stage` in a work directory of their own, and the exported model.onnx (parity-checked against
torch by export_onnx) is what gets served. Models are cached by catalogue, settings and the code
that trains and exports them, so a second benchmark run does not retrain.

What serving costs depends on the catalogue size, the width and depth of the network and the session
length, not on how long it trained; the training here is short (a time budget) and uses the sampled
softmax so a 100k catalogue trains in minutes. The model is exported with max_len 512, so one model
serves sessions of 50 and of 512 items (the backend runs each batch at its own width). Positions past
the longest training history keep their initial weights: those sessions are answered, but by the least
trained part of the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

from pipelines.core.config import PROJECT_ROOT

SERVED_MAX_LEN = 512
TRAIN_BUDGET_S = 240.0
#: Users of a generated catalogue: the demo's 4 per product, at most the 10x world's 120,000 (training time).
USERS_PER_PRODUCT, MAX_USERS = 4, 120_000
#: train_popularity and train_rules: recommend's fallback tables (what deploy writes beside the model).
STAGES = ("generate", "validate", "sequences", "prod2vec", "train_gpt4rec", "export_onnx", "train_popularity",
          "train_rules")
#: What a trained model rests on besides its overrides: the packages its stages run (every module in them) and
#: params.yaml's defaults (its `serve` section aside). A change to any of them trains anew.
CODE = ("pipelines/core", "pipelines/data", "pipelines/validate", "pipelines/embed",
        "pipelines/graph", "pipelines/models", "pipelines/evaluate", "pipelines/export", "pipelines/stages")
PARAMS = "params.yaml"


@dataclass(frozen=True)
class Catalogue:
    """One catalogue to serve: a generated world of `products` items, or an S3-Rec file."""

    products: int | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"synthetic-{self.products}" if self.path is None else self.path.stem.lower()

    def overrides(self) -> list[str]:
        if self.path is None:
            users = min(MAX_USERS, USERS_PER_PRODUCT * int(self.products or 0))
            return ["data.source=synthetic", f"data.n_products={self.products}", f"data.n_users={users}"]
        attributes = self.path.with_name(f"{self.path.stem}_item2attributes.json")
        return ["data.source=s3rec", f"data.s3rec_path={self.path}",
                f"data.s3rec_attributes={attributes if attributes.is_file() else ''}"]


def parse_catalogues(text: str) -> list[Catalogue]:
    """'synthetic:3000,../shared/datasets/amazon-beauty' -> catalogues (an S3-Rec folder holds one .txt)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, size = part.partition(":")
        if kind == "synthetic":
            if not sep or not size.isdigit() or int(size) < 100:
                raise typer.BadParameter(f"--catalogues entry {part!r}: write synthetic:N with N >= 100 products")
            out.append(Catalogue(products=int(size)))
            continue
        path = Path(part) if Path(part).is_absolute() else Path.cwd() / part
        if path.is_dir():
            found = sorted(path.glob("*.txt"))
            if len(found) != 1:
                raise typer.BadParameter(f"--catalogues entry {part!r}: {path} must hold exactly one S3-Rec .txt "
                                         f"file, found {len(found)}")
            path = found[0]
        if not path.is_file():
            raise typer.BadParameter(f"--catalogues entry {part!r} is neither synthetic:N nor an S3-Rec file or "
                                     f"folder ({path} does not exist)")
        out.append(Catalogue(path=path.resolve()))
    if not out:
        raise typer.BadParameter("--catalogues names no catalogue")
    return out


def code_files() -> list[Path]:
    """Every module of the packages in CODE that exist, in a fixed order."""
    return sorted(path for rel in CODE for path in (PROJECT_ROOT / rel).rglob("*.py"))


def _key(catalogue: Catalogue, overrides: list[str]) -> str:
    h = hashlib.sha256(json.dumps([catalogue.label, catalogue.overrides(), overrides, STAGES]).encode())
    for path in code_files():
        h.update(str(path.relative_to(PROJECT_ROOT)).encode())
        h.update(path.read_bytes())
    params = yaml.safe_load((PROJECT_ROOT / PARAMS).read_text()) or {}
    h.update(json.dumps({k: v for k, v in params.items() if k != "serve"}, sort_keys=True, default=str).encode())
    if catalogue.path is not None:
        h.update(str(catalogue.path.stat().st_mtime_ns).encode())
    return f"{catalogue.label}-{h.hexdigest()[:12]}"


def training_only(overrides: list[str]) -> list[str]:
    """The overrides that change the trained model: all but params.yaml's `serve` section."""
    return [o for o in overrides if o.split(".", 1)[0].strip() != "serve"]


def training_overrides(budget_s: float) -> list[str]:
    return [f"gpt4rec.max_len={SERVED_MAX_LEN}", "gpt4rec.loss=sampled", f"gpt4rec.time_budget_s={budget_s:g}",
            "gate.latency_budget_ms=0"]


def trained_gpt4rec(catalogue: Catalogue, overrides: list[str], cache: Path, *, budget_s: float = TRAIN_BUDGET_S,
                    echo: Any = print) -> dict[str, Any]:
    """{onnx, n_items, source, training}: the catalogue's exported GPT4Rec, trained now unless cached.

    `serve.*` overrides neither reach training nor its cache key: they change how a model is served, not
    the model, and a 100k model takes minutes to train.
    """
    from benchmarks.scale import count_events, run_stage_measured
    from pipelines.repository.metadata import read_model_metadata

    every = [*catalogue.overrides(), *training_overrides(budget_s), *training_only(overrides)]
    workdir = cache / _key(catalogue, every)
    onnx = workdir / "artifacts" / "onnx" / "gpt4rec" / "model.onnx"
    done = workdir / "trained.json"
    if not done.is_file():
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        stages = []
        for stage in STAGES:
            echo(f"  training the {catalogue.label} model: {stage} ...")
            run = run_stage_measured(stage, every, workdir, workdir / "logs" / f"{stage}.log", timeout_s=3600,
                                     kill_above_bytes=20 * 2**30)
            stages.append({"stage": stage, "wall_s": run.wall_s, "peak_rss_gb": run.peak_rss_gb})
            if run.status != "ok":
                raise RuntimeError(f"training the {catalogue.label} model stopped at {stage} ({run.status}): "
                                   f"{run.error}")
        train = json.loads((workdir / "artifacts" / "models" / "gpt4rec" / "train.json").read_text())
        done.write_text(json.dumps({
            "events": count_events(workdir), "stages": stages, "overrides": every,
            "epochs": train.get("epochs_run"), "best_epoch": train.get("best_epoch"),
            "train_seconds": train.get("train_seconds"), "stopped_by": train.get("stopped_by"),
            "best_valid_ndcg_at_10": max((h.get("valid_ndcg_at_10", 0.0) for h in train.get("history", [])),
                                         default=None)}, indent=2))
    training = json.loads(done.read_text())
    meta = read_model_metadata(onnx)
    source = (f"GPT4Rec trained by the pipeline on {catalogue.label} ({meta.n_items:,} items, "
              f"{training['events']:,} events; {training['epochs']} epochs, {training['train_seconds']:.0f} s, "
              f"sampled softmax), max_len {meta.max_len}, exported by export_onnx")
    return {"onnx": onnx, "n_items": meta.n_items, "source": source, "training": training,
            "catalogue": catalogue.label, "workdir": workdir, "overrides": every}
