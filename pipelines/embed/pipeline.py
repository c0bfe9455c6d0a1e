"""The embedding stages' work: read the validated data, train one method, evaluate, save, track.

Kept here, not in pipelines/stages/, so the stage functions stay one-liners and every method
goes through the same steps: the same walks, the same evaluation protocol (evaluate.py), the same
plots and one MLflow run per method with the table as an artifact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.config import Paths, Settings
from pipelines.data.schema import CATALOGUE_FILE, EVENTS_FILE
from pipelines.data.sequences import Sequences, load_sequences
from pipelines.embed.prod2vec import ItemEmbeddings, Walks
from pipelines.embed.tracking import embedding_run
from pipelines.track.live import TrainingRun

METHODS = ("prod2vec", "tfidf", "text_encoder", "meta_prod2vec")
METRICS_FILE = "metrics.json"


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _catalogue(p: Paths) -> pd.DataFrame:
    path = p.validated / CATALOGUE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the validate stage first (see dvc.yaml)")
    return pd.read_parquet(path)


def training_walks(s: Settings, p: Paths, seqs: Sequences) -> Walks:
    """The walks Prod2Vec and Meta-Prod2Vec share: training histories only, event-weighted edges.

    Deterministic from data.seed, so both stages walk exactly the same corpus.
    """
    from pipelines.embed.prod2vec import make_walks
    from pipelines.graph.cooccurrence import token_weights

    train = seqs.train()
    weights = None
    events_path = p.validated / EVENTS_FILE
    if events_path.exists():
        events = pd.read_parquet(events_path, columns=["user_id", "item_id", "event_type"])
        weights = token_weights(seqs.user_ids, train, events, s.graph.event_weights)
    return make_walks(train, seqs.n_items, s.graph, s.data.seed, weights)


def walks_digest(walks: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(walks).tobytes()).hexdigest()[:16]


def finish(method: str, emb: ItemEmbeddings, s: Settings, p: Paths, seqs: Sequences, catalogue: pd.DataFrame | None,
           run: TrainingRun, started: float) -> dict[str, Any]:
    """Evaluate, plot, save the table under artifacts/embeddings/<method>, log them to the method's run."""
    from pipelines.embed.evaluate import CosineSimilarity, evaluate_similarity
    from pipelines.embed.plots import plot_embedding_map, plot_field_importance
    from pipelines.embed.tracking import log_embedding_results

    timings: dict[str, float] = {}
    t = time.perf_counter()
    metrics = evaluate_similarity(CosineSimilarity(method, emb.vectors, emb.known), seqs, split="test",
                                  k=s.evaluate.k, mask_seen=s.evaluate.mask_seen,
                                  cold_max_interactions=s.evaluate.cold_max_interactions,
                                  max_users=s.evaluate.max_users)
    timings["evaluate_s"] = time.perf_counter() - t
    out = _fresh(p.embeddings / method)
    t = time.perf_counter()
    labels = None
    if catalogue is not None and "therapeutic_class" in catalogue:
        labels = catalogue.set_index("item_id")["therapeutic_class"]
    plots = [plot_embedding_map(emb.vectors, emb.known, labels, out / "map.png",
                                f"{method}: items in 2-D (PCA), coloured by therapeutic class", s.data.seed)]
    if "field_importance" in emb.info:
        plots.append(plot_field_importance(emb.info["field_importance"], out / "field_importance.png"))
    timings["plots_s"] = time.perf_counter() - t
    emb.save(out)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    t = time.perf_counter()
    numeric = {k: v for k, v in emb.info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    importance = {f"field_importance.{k}": v for k, v in emb.info.get("field_importance", {}).items()}
    log_embedding_results(run, metrics={**metrics, **numeric, **importance}, table_dir=out, plots=plots,
                          curves={"finetune_loss": emb.info["finetune_losses"]} if "finetune_losses" in emb.info
                          else None)
    timings["mlflow_s"] = time.perf_counter() - t
    summary = {**metrics, **{k: round(v, 3) for k, v in timings.items()}, "mlflow_run_id": run.run_id,
               "mlflow_run_url": run.url,
               "stage_s": round(time.perf_counter() - started, 3)}
    (out / "stage.json").write_text(json.dumps({**emb.info, **summary}, indent=2, default=str))
    return {**{k: v for k, v in emb.info.items() if k not in ("finetune_losses",)}, **summary}


def _section_params(s: Settings, *sections: str) -> dict[str, Any]:
    return {k: v for k, v in s.flat().items() if k.split(".", 1)[0] in sections}


def run_prod2vec(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.prod2vec import train_prod2vec

    started = time.perf_counter()
    with embedding_run(s, p, "prod2vec", _section_params(s, "graph", "prod2vec")) as run:
        seqs = load_sequences(p.features)
        walks = training_walks(s, p, seqs)
        emb = train_prod2vec(seqs.train(), seqs.n_items, s.graph, s.prod2vec, seed=s.data.seed, walks=walks)
        emb.info["walks_sha256"] = walks_digest(walks.walks)
        catalogue = _catalogue(p) if (p.validated / CATALOGUE_FILE).exists() else None
        return finish("prod2vec", emb, s, p, seqs, catalogue, run, started)


def run_tfidf(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.meta import item_texts
    from pipelines.embed.text import train_tfidf

    started = time.perf_counter()
    with embedding_run(s, p, "tfidf", _section_params(s, "tfidf")) as run:
        seqs = load_sequences(p.features)
        catalogue = _catalogue(p)
        emb = train_tfidf(item_texts(catalogue, seqs.n_items), s.tfidf)
        return finish("tfidf", emb, s, p, seqs, catalogue, run, started)


def run_text_encoder(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.meta import item_texts
    from pipelines.embed.text import cooccurring_pairs, train_text_encoder

    started = time.perf_counter()
    with embedding_run(s, p, "text_encoder", _section_params(s, "text_encoder")) as run:
        seqs = load_sequences(p.features)
        catalogue = _catalogue(p)
        pairs = None
        if s.text_encoder.finetune:
            pairs = cooccurring_pairs(training_walks(s, p, seqs).graph, s.text_encoder.finetune_pairs, s.data.seed)
        emb = train_text_encoder(item_texts(catalogue, seqs.n_items), s.text_encoder, s.data.seed, pairs=pairs)
        return finish("text_encoder", emb, s, p, seqs, catalogue, run, started)


def run_meta_prod2vec(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.meta import item_fields
    from pipelines.embed.meta_prod2vec import train_meta_prod2vec
    from pipelines.evaluate.slices import training_interactions

    started = time.perf_counter()
    with embedding_run(s, p, "meta_prod2vec", _section_params(s, "graph", "meta_prod2vec")) as run:
        seqs = load_sequences(p.features)
        catalogue = _catalogue(p)
        t = time.perf_counter()
        walks = training_walks(s, p, seqs)
        fields = item_fields(catalogue, seqs.n_items, s.meta_prod2vec.fields, s.meta_prod2vec.text_vocab)
        prep_s = time.perf_counter() - t
        emb = train_meta_prod2vec(walks.walks, fields, s.meta_prod2vec, seed=s.data.seed,
                                  interactions=training_interactions(seqs))
        emb.info.update({**{k: round(v, 3) for k, v in walks.timings.items()}, "fields_s": round(prep_s, 3),
                         "walks_sha256": walks_digest(walks.walks)})
        return finish("meta_prod2vec", emb, s, p, seqs, catalogue, run, started)


def run_similar_products(s: Settings, p: Paths) -> dict[str, Any]:
    """The comparison table of every method (same protocol) and the top-k neighbours of every item."""
    from pipelines.embed.evaluate import Popularity, evaluate_similarity, similarity_slices
    from pipelines.embed.similar import SimilarProducts
    from pipelines.track.plots import plot_metrics

    seqs = load_sequences(p.features)
    k = s.evaluate.k
    table: dict[str, dict[str, float]] = {
        "popularity": evaluate_similarity(Popularity(seqs.train(), seqs.n_items), seqs, k=k,
                                          mask_seen=s.evaluate.mask_seen,
                                          cold_max_interactions=s.evaluate.cold_max_interactions,
                                          max_users=s.evaluate.max_users)}
    for method in METHODS:
        metrics_file = p.embeddings / method / METRICS_FILE
        if not metrics_file.exists():
            raise FileNotFoundError(f"{metrics_file} is missing: run the {method} stage first (see dvc.yaml)")
        table[method] = json.loads(metrics_file.read_text())
    emb = ItemEmbeddings.load(p.embeddings / s.similar.method)
    index = SimilarProducts(emb, s.similar)
    items = np.flatnonzero(emb.known)
    neighbours, cosines = [], []
    for lo in range(0, len(items), 2048):
        ids, sims = index.query(items[lo:lo + 2048], s.similar.k)
        neighbours.append(ids)
        cosines.append(sims)
    out = _fresh(p.artifacts / "similar")
    pd.DataFrame({"item_id": items, "similar": list(np.concatenate(neighbours)),
                  "cosine": list(np.concatenate(cosines))}).to_parquet(out / "neighbours.parquet", index=False)
    payload = {"protocol": {"query": "the user's previous item", "ranking": "cosine similarity against all items",
                            "split": "test (leave-one-out by time)", "k": k,
                            **similarity_slices(s.evaluate.cold_max_interactions)},
               "methods": table, "similar": {"method": s.similar.method, "approximate": index.approximate,
                                             "items": len(items), "k": s.similar.k}}
    p.reports.mkdir(parents=True, exist_ok=True)
    (p.reports / "embeddings.json").write_text(json.dumps(payload, indent=2))
    plot_metrics(table, p.reports / "embeddings.png",
                 keys=(f"hr_at_{k}", f"ndcg_at_{k}", f"warm_hr_at_{k}", f"cold_hr_at_{k}", f"unseen_hr_at_{k}"))
    return {m: {key: round(v, 4) for key, v in row.items()
                if key.startswith(("hr", "ndcg", "warm_hr", "cold_hr", "unseen_hr"))}
            for m, row in table.items()}
