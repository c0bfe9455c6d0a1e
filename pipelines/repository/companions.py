"""Assemble `similar_items` and `recommend` from the pipeline's artifacts at deploy time.

The deploy stage writes gpt4rec first (the registry champion), then calls `deploy_companions`,
which sizes both models by that gpt4rec version (its n_items, top_k, max_len) and writes:

- similar_items from the embedding table named by `similar.method` (artifacts/embeddings/<method>);
- recommend from the popularity list (artifacts/models/popularity, required), the association
  rules (artifacts/models/rules, optional: without them the cold path goes straight to
  popularity), the training interactions per item (data/features), the catalogue ids and the
  safety policy's tables (data/validated: composition, rx_required, restricted, in_stock; plus
  the interaction table of params.yaml `policy.interactions_table`), the placements' tables and
  the search index (names, compositions, makers, classes and uses of the validated catalogue) and the
  champion's stored user vectors (users.npz of its MLflow training run; without them home has no `history`).

A model whose inputs are missing is skipped with the reason in the summary, never half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.config import Paths, PolicySettings, RefillSettings, Settings
from pipelines.core.contract import MODEL_FILE
from pipelines.data.schema import CATALOGUE_FILE
from pipelines.models.user_vectors import UserVectors
from pipelines.pharmacy.catalogue import build_placement_tables, build_search
from pipelines.pharmacy.served import CHECK_REASONS, PolicyRules, SafetyTables
from pipelines.pharmacy.tables import DEFAULT_INTERACTIONS, build_safety_tables, read_interactions
from pipelines.repository.metadata import read_model_metadata
from pipelines.repository.models import (
    RECOMMEND,
    SIMILAR_ITEMS,
    WARM_MIN_INTERACTIONS,
    FallbackTables,
    VersionWritten,
    write_recommend_config,
    write_recommend_version,
    write_similar_items_config,
    write_similar_items_version,
)


def _resize(array: np.ndarray, n_rows: int) -> np.ndarray:
    """Cut or zero-pad a per-item array to n_rows (tables may cover more or fewer items than gpt4rec)."""
    out = np.zeros(n_rows, dtype=array.dtype)
    out[: min(n_rows, len(array))] = array[:n_rows]
    return out


def interactions_table(policy: PolicySettings, p: Paths) -> Path:
    """The interaction CSV: `policy.interactions_table` (relative to the work directory), else the shipped one."""
    if not policy.interactions_table:
        return DEFAULT_INTERACTIONS
    path = Path(policy.interactions_table)
    return path if path.is_absolute() else p.root / path


def safety_tables(policy: PolicySettings, p: Paths, catalogue: pd.DataFrame | None, n_items: int) -> SafetyTables:
    """The policy's tables over 0..n_items; permissive (nothing known) without a catalogue."""
    if catalogue is None:
        return SafetyTables.permissive(n_items)
    pairs = read_interactions(interactions_table(policy, p), tuple(policy.block_severities)) if policy.interactions else []
    return build_safety_tables(catalogue, n_items, pairs)


def policy_rules(policy: PolicySettings) -> PolicyRules:
    """params.yaml `policy` as the rules the backend applies."""
    return PolicyRules(**{key: getattr(policy, key) for key in CHECK_REASONS})


def fallback_tables(p: Paths, n_items: int, policy: PolicySettings | None = None,
                    refills: RefillSettings | None = None, users: UserVectors | None = None) -> FallbackTables:
    """The recommend tables over item ids 0..n_items; FileNotFoundError if popularity is missing."""
    from pipelines.data.sequences import load_sequences
    from pipelines.evaluate.slices import training_interactions
    from pipelines.models.popularity import PopularityRecommender
    from pipelines.models.rules import RULES_FILE, AssociationRules

    popularity_dir = p.models / "popularity"
    if not (popularity_dir / "counts.npy").exists():
        raise FileNotFoundError(f"{popularity_dir / 'counts.npy'} is missing: run the train_popularity stage")
    n = n_items + 1
    popularity = _resize(PopularityRecommender.load(popularity_dir).counts.astype(np.float32), n)
    interactions = _resize(training_interactions(load_sequences(p.features)).astype(np.int64), n)
    catalogue = np.zeros(n, dtype=bool)
    catalogue_file = p.validated / CATALOGUE_FILE
    frame = pd.read_parquet(catalogue_file) if catalogue_file.exists() else None
    if frame is not None:
        ids = frame["item_id"].to_numpy(dtype=np.int64)
        catalogue[ids[(ids >= 1) & (ids <= n_items)]] = True
    else:
        catalogue[1:] = True
    rules = None
    if (p.models / "rules" / RULES_FILE).exists():
        coo = AssociationRules.load(p.models / "rules").rules.tocoo()
        keep = (coo.row < n) & (coo.col < n) & (coo.data != 0)
        rules = sp.csr_matrix((coo.data[keep].astype(np.float32), (coo.row[keep], coo.col[keep])), shape=(n, n))
    placements = None if frame is None else build_placement_tables(frame, n_items, refills)
    search = None if frame is None else build_search(frame, n_items)
    safety = safety_tables(policy or PolicySettings(), p, frame, n_items)
    tables = FallbackTables(popularity, interactions, catalogue, rules, safety, placements, search, users)
    tables.check()
    return tables


def _summary(written: VersionWritten, config: Path, old_config: str | None, **extra: Any) -> dict[str, Any]:
    return {"version_path": str(written.path), "triton_version": written.version, "new": written.new,
            "fingerprint": written.fingerprint, "config_changed": config.read_text() != old_config, **extra}


def _old_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def deploy_similar_items(s: Settings, p: Paths, repo: Path, n_items: int) -> dict[str, Any]:
    """similar_items from the `similar.method` table; {"skipped": why} when the table is missing."""
    from pipelines.embed.prod2vec import META_FILE, ItemEmbeddings
    from pipelines.export.similar_onnx import build_similar_items

    table_dir = p.embeddings / s.similar.method
    if not (table_dir / META_FILE).exists():
        return {"skipped": f"{table_dir} holds no embedding table: run the {s.similar.method} stage "
                           "(or set similar.method to a table that exists)"}
    emb = ItemEmbeddings.load(table_dir)
    if emb.n_items > n_items:  # a catalogue grown since gpt4rec trained: serve gpt4rec's id range
        emb.vectors, emb.known = emb.vectors[: n_items + 1], emb.known[: n_items + 1]
    graph = build_similar_items(emb, s.similar)
    config = repo / SIMILAR_ITEMS / "config.pbtxt"
    old = _old_text(config)
    write_similar_items_config(repo, top_k=graph.top_k, n_items=graph.n_items, max_batch_size=s.serve.max_batch_size,
                               instance_count=s.serve.instance_count)
    written = write_similar_items_version(repo, graph.model.SerializeToString(), graph.known, metadata={
        "embedding_method": s.similar.method, "embedding_table": str(table_dir), "mode": graph.mode,
        "top_k": graph.top_k, "n_items": graph.n_items, "embedding_info": {
            k: v for k, v in emb.info.items() if isinstance(v, (str, int, float, bool))}})
    return _summary(written, config, old, mode=graph.mode, method=s.similar.method)


def champion_users(users_file: Path | None, n_items: int) -> tuple[UserVectors | None, str]:
    """(the champion's user vectors, what was found): None when its run stored none or they do not fit."""
    if users_file is None:
        return None, "the champion's training run stored no user vectors: home serves without `history`"
    users = UserVectors.load(users_file)
    if users.n_items != n_items:
        raise ValueError(f"{users_file} scores {users.n_items} items but the served gpt4rec {n_items}: "
                         "they must come from the same training run")
    return users, f"{len(users.user_ids)} users, dim {users.dim}"


def recommend_tables(s: Settings, p: Paths, n_items: int, users_file: Path | None) -> tuple[FallbackTables, str]:
    """(recommend's tables, what was found of the user vectors); FileNotFoundError if popularity is missing."""
    users, users_note = champion_users(users_file, n_items)
    return fallback_tables(p, n_items, s.policy, s.refills, users), users_note


def deploy_recommend(s: Settings, p: Paths, repo: Path, gpt4rec_onnx: Path, users_file: Path | None = None,
                     *, prepared: tuple[FallbackTables, str] | None = None) -> dict[str, Any]:
    """recommend over the deployed gpt4rec (its model.onnx: `gpt4rec_onnx`); {"skipped": why} when the popularity
    list is missing. Scoring in process (serve.recommend_scoring), the version holds its own copy of that model.

    `prepared`: what `recommend_tables` returned, when the caller built the tables already (they are not built
    twice).
    """
    gpt4rec = read_model_metadata(gpt4rec_onnx)
    in_process = s.serve.recommend_scoring == "in_process"
    try:
        tables, users_note = prepared or recommend_tables(s, p, gpt4rec.n_items, users_file)
    except FileNotFoundError as exc:
        return {"skipped": str(exc)}
    rules = policy_rules(s.policy)
    config = repo / RECOMMEND / "config.pbtxt"
    old = _old_text(config)
    write_recommend_config(
        repo, top_k=gpt4rec.top_k, n_items=gpt4rec.n_items, max_batch_size=s.serve.max_batch_size,
        gpt4rec_model=s.serve.model_name, gpt4rec_max_len=gpt4rec.max_len,
        gpt4rec_max_batch_size=s.serve.max_batch_size, warm_min_interactions=WARM_MIN_INTERACTIONS,
        rules_recent_items=s.rules.recent_items, rules_decay=s.rules.decay, policy=rules,
        max_cart_items=s.policy.max_cart_items, blends=s.placements.blends(), search_candidates=s.search.candidates,
        search_personal_weight=s.search.personal_weight, max_query_bytes=s.search.max_query_bytes,
        refill_due_within_days=s.refills.due_within_days, refill_overdue_days=s.refills.overdue_days,
        users=s.users, instance_count=s.serve.recommend_instances,
        max_queue_delay_us=s.serve.recommend_queue_delay_us, gpt4rec_scoring=s.serve.recommend_scoring)
    written = write_recommend_version(repo, tables, scorer=gpt4rec_onnx if in_process else None, metadata={
        "gpt4rec_model": s.serve.model_name, "n_items": gpt4rec.n_items, "top_k": gpt4rec.top_k,
        "gpt4rec_scoring": s.serve.recommend_scoring, "scorer_from": str(gpt4rec_onnx) if in_process else None,
        "rules": tables.rules is not None, "n_rules": int(tables.rules.nnz) if tables.rules is not None else 0,
        "popularity": str(p.models / "popularity"), "features": str(p.features),
        "policy": {"checks": rules.checks(), "molecules": tables.policy.n_molecules,
                   "interacting_pairs": len(tables.policy.interacting_pairs),
                   "rx_required": int(tables.policy.rx_required.sum()), "restricted": int(tables.policy.restricted.sum()),
                   "unavailable": int(tables.policy.unavailable.sum()),
                   "interactions_table": str(interactions_table(s.policy, p))},
        "placements": s.placements.blends(), "search": s.search.model_dump(), "refills": s.refills.model_dump(),
        "refillable_products": 0 if tables.placements is None else int((tables.placements.supply_days > 0).sum()),
        "search_words": 0 if tables.search is None else len(tables.search.words), "users": users_note,
        "products_with_substitutes": 0 if tables.placements is None else int(
            (np.diff(tables.placements.substitute_indptr) > 0).sum())})
    return _summary(written, config, old, rules=tables.rules is not None, policy=rules.checks(), users=users_note)


def deploy_companions(s: Settings, p: Paths, repo: Path, gpt4rec_dir: Path,
                      users_file: Path | None = None) -> dict[str, dict[str, Any]]:
    """Write similar_items and recommend sized by the gpt4rec version in `gpt4rec_dir` (and its run's
    stored user vectors, `users_file`)."""
    gpt4rec = read_model_metadata(gpt4rec_dir / MODEL_FILE)
    return {SIMILAR_ITEMS: deploy_similar_items(s, p, repo, gpt4rec.n_items),
            RECOMMEND: deploy_recommend(s, p, repo, gpt4rec_dir / MODEL_FILE, users_file)}
