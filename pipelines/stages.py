"""Stage entry points: one function per stage of dvc.yaml, same names.

Each reads its inputs from `Paths`, calls the library, writes its outputs and returns a small
JSON-able summary (what the CLI prints and Airflow keeps as XCom). The CLI, `dvc repro` and the
Airflow DAG all go through `run_stage`; none of them holds logic of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Paths, Settings, load_settings
from pipelines.data.schema import CATALOGUE_FILE, EVENTS_FILE, GROUND_TRUTH_FILE

StageFn = Callable[[Settings, Paths], dict[str, Any]]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it first (see dvc.yaml)")
    return json.loads(path.read_text())


def _fresh_dir(path: Path) -> Path:
    """Stage outputs are replaced whole, never mixed with a previous run's files."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- data


def generate(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.generate import generate_world

    world = generate_world(s.data)
    world.save(_fresh_dir(p.raw))
    return {"products": len(world.catalogue), "events": len(world.events),
            "users": int(world.events["user_id"].nunique()), "sessions": int(world.events["session_id"].nunique())}


def validate(s: Settings, p: Paths) -> dict[str, Any]:
    """The data gate: nothing downstream runs on tables that fail it."""
    from pipelines.validate.gate import enforce, validate_tables

    catalogue = pd.read_parquet(p.raw / CATALOGUE_FILE)
    events = pd.read_parquet(p.raw / EVENTS_FILE)
    if p.validated.exists():
        shutil.rmtree(p.validated)  # a failed gate leaves no validated data behind
    report = enforce(validate_tables(catalogue, events, s.validate_), p.reports)
    out = _fresh_dir(p.validated)
    for name in (CATALOGUE_FILE, EVENTS_FILE, GROUND_TRUTH_FILE):
        if (p.raw / name).exists():
            shutil.copy2(p.raw / name, out / name)
    return {"success": report.success, "checks": len(report.checks), "elapsed_s": round(report.elapsed_s, 2)}


def sequences(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.sequences import build_sequences, save_sequences

    catalogue = pd.read_parquet(p.validated / CATALOGUE_FILE, columns=["item_id"])
    events = pd.read_parquet(p.validated / EVENTS_FILE)
    seqs = build_sequences(events, n_items=int(catalogue["item_id"].max()))
    save_sequences(seqs, _fresh_dir(p.features))
    return _read_json(p.features / "meta.json")


# --------------------------------------------------------------------------- embeddings and models


def prod2vec(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.sequences import load_sequences
    from pipelines.embed.prod2vec import train_prod2vec

    seqs = load_sequences(p.features)
    emb = train_prod2vec(seqs.train(), seqs.n_items, s.graph, s.prod2vec, seed=s.data.seed)
    emb.save(_fresh_dir(p.embeddings / "prod2vec"))
    return emb.info


def train_popularity(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.sequences import load_sequences
    from pipelines.models.popularity import PopularityRecommender

    started = time.perf_counter()
    model = PopularityRecommender.fit(load_sequences(p.features), s.popularity.window_days)
    seconds = time.perf_counter() - started
    out = _fresh_dir(p.models / "popularity")
    model.save(out)
    _write_json(out / "train.json", {"train_seconds": seconds})
    return {"train_seconds": round(seconds, 3)}


def train_gpt4rec(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.sequences import load_sequences
    from pipelines.embed.prod2vec import ItemEmbeddings
    from pipelines.models.train import train_gpt4rec as train
    from pipelines.track.plots import plot_training_history

    seqs = load_sequences(p.features)
    pretrained = ItemEmbeddings.load(p.embeddings / "prod2vec") if s.gpt4rec.init_from_prod2vec else None
    result = train(seqs, s.gpt4rec, seed=s.data.seed, pretrained=pretrained)
    out = _fresh_dir(p.models / "gpt4rec")
    result.model.save(out)
    summary = {"train_seconds": round(result.train_seconds, 2), "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "initialised_items": result.initialised_items,
               "history": result.history}
    _write_json(out / "train.json", summary)
    plot_training_history(result.history, out / "training.png")
    return {k: v for k, v in summary.items() if k != "history"}


def evaluate(s: Settings, p: Paths) -> dict[str, Any]:
    """Every model on the same test split, same protocol; writes reports/metrics.json."""
    from pipelines.data.sequences import load_sequences
    from pipelines.evaluate.protocol import evaluate as run_protocol
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecRecommender
    from pipelines.models.popularity import PopularityRecommender
    from pipelines.track.plots import plot_metrics

    seqs = load_sequences(p.features)
    models = {
        "popularity": PopularityRecommender.load(p.models / "popularity"),
        "gpt4rec": GPT4RecRecommender(GPT4Rec.load(p.models / "gpt4rec")),
    }
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        metrics = run_protocol(model, seqs, split="test", k=s.evaluate.k, mask_seen=s.evaluate.mask_seen)
        metrics["train_seconds"] = _read_json(p.models / name / "train.json")["train_seconds"]
        results[name] = metrics
    payload = {"protocol": {"split": "leave-one-out by time, last item", "ranking": "all items",
                            "mask_seen": s.evaluate.mask_seen, "k": s.evaluate.k}, "models": results}
    _write_json(p.reports / "metrics.json", payload)
    plot_metrics(results, p.reports / "metrics.png")
    return results


# --------------------------------------------------------------------------- export, registry, serving


def export_onnx(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.sequences import load_sequences
    from pipelines.export.onnx import export_and_check
    from pipelines.models.gpt4rec import GPT4Rec

    model = GPT4Rec.load(p.models / "gpt4rec")
    histories, _, _ = load_sequences(p.features).evaluation("test")
    report = export_and_check(model, _fresh_dir(p.onnx / "gpt4rec"), histories[: s.export.parity_sessions],
                              k=s.export.top_k, opset=s.export.opset, mask_seen=s.evaluate.mask_seen)
    report.save(p.reports / "parity.json")
    if not report.passed:
        raise RuntimeError(
            f"ONNX parity failed: {report.mismatched_sessions} of {report.sessions} sessions get a different "
            f"top-{report.top_k} from ONNX Runtime than from torch (see {p.reports / 'parity.json'})"
        )
    return {"passed": report.passed, "sessions": report.sessions, "max_abs_score_diff": report.max_abs_score_diff}


def register(s: Settings, p: Paths) -> dict[str, Any]:
    """Log the run to MLflow, register the ONNX model, apply the promotion gate."""
    from pipelines.track import lineage
    from pipelines.track.registry import fingerprint, log_training_run

    metrics_all = _read_json(p.reports / "metrics.json")["models"]
    parity = _read_json(p.reports / "parity.json")
    onnx_path = p.onnx / "gpt4rec" / "model.onnx"
    data = lineage.data_version(p.root, p.validated)
    commit = lineage.git_commit(p.root)
    params = s.flat()
    tags = {
        "git_commit": commit,
        "data_dvc_md5": data["dvc_md5"] or "",
        "data_content_md5": data["content_md5"],
        "dataset": "synthetic",
        "airflow_dag_run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", ""),
    }
    fp = fingerprint(data["content_md5"], json.dumps(params, sort_keys=True), onnx_path.read_bytes())
    artifacts = {
        "reports": p.reports / "metrics.json",
        "reports/plots": p.reports / "metrics.png",
        "reports/validation": p.reports / "validation.md",
        "reports/parity": p.reports / "parity.json",
        "torch": p.models / "gpt4rec",
        "embeddings/prod2vec": p.embeddings / "prod2vec" / "meta.json",
    }
    gpt = {k: v for k, v in metrics_all["gpt4rec"].items() if k != "n_users"}
    result = log_training_run(
        tracking_uri=p.tracking_uri(s), experiment=s.mlflow.experiment, artifact_root=p.mlflow_artifacts,
        model_name=s.mlflow.registered_model, params=params, metrics=gpt,
        baseline_metrics={"popularity": metrics_all["popularity"]}, tags=tags, artifacts=artifacts,
        onnx_path=onnx_path, parity_passed=bool(parity["passed"]), fp=fp,
    )
    result.save(p.reports / "registry.json")
    return json.loads((p.reports / "registry.json").read_text())


def deploy(s: Settings, p: Paths) -> dict[str, Any]:
    """Write the champion into a new version folder of the Triton model repository (once)."""
    import onnx

    from pipelines.export.triton_repo import list_versions, write_config, write_version
    from pipelines.track.registry import CHAMPION, configure, download_model

    registry = _read_json(p.reports / "registry.json")
    name, champion = registry["model_name"], registry["champion_version"]
    if not champion:
        raise RuntimeError(f"model {name!r} has no {CHAMPION!r} alias: nothing to deploy")
    repo = p.triton_repo
    model_dir = repo / s.serve.model_name
    for version in list_versions(repo, s.serve.model_name):
        lineage_file = model_dir / str(version) / "lineage.json"
        if lineage_file.exists():
            lineage_data = json.loads(lineage_file.read_text()).get("metadata", {})
            if lineage_data.get("registered_model") == name and str(lineage_data.get("model_version")) == champion \
                    and lineage_data.get("tracking_uri") == registry["tracking_uri"]:
                summary = {"version_path": str(model_dir / str(version)), "triton_version": version,
                           "model_version": champion, "new": False}
                _write_json(p.reports / "deploy.json", summary)
                return summary
    configure(registry["tracking_uri"], s.mlflow.experiment, p.mlflow_artifacts)
    staging = _fresh_dir(p.var / "deploy" / "download")
    onnx_path = download_model(f"models:/{name}/{champion}", staging)
    meta = {e.key: e.value for e in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    write_config(repo, s.serve.model_name, max_batch_size=s.serve.max_batch_size, top_k=int(meta["top_k"]),
                 n_items=int(meta["n_items"]), max_seq_len=int(meta["max_len"]),
                 instance_count=s.serve.instance_count)
    from mlflow import MlflowClient

    version_info = MlflowClient().get_model_version(name, champion)
    path = write_version(repo, s.serve.model_name, onnx_path, metadata={
        "registered_model": name, "model_version": champion, "alias": CHAMPION,
        "run_id": version_info.run_id, "tracking_uri": registry["tracking_uri"], **version_info.tags,
    })
    summary = {"version_path": str(path), "triton_version": int(path.name), "model_version": champion, "new": True}
    _write_json(p.reports / "deploy.json", summary)
    return summary


def serve_check(s: Settings, p: Paths) -> dict[str, Any]:
    """Start the real Triton, load the deployed model, ask it for 3 sessions, compare with ONNX Runtime."""
    from pipelines.serve.check import check_served_model

    summary = check_served_model(s, p)
    _write_json(p.reports / "serve_check.json", summary)
    return summary


STAGES: dict[str, StageFn] = {
    "generate": generate,
    "validate": validate,
    "sequences": sequences,
    "prod2vec": prod2vec,
    "train_popularity": train_popularity,
    "train_gpt4rec": train_gpt4rec,
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
    settings = load_settings(overrides=overrides or [])
    paths = Paths(workdir)
    started = time.perf_counter()
    summary = STAGES[name](settings, paths)
    summary = dict(summary)
    summary["stage_seconds"] = round(time.perf_counter() - started, 2)
    return summary
