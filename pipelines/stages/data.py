"""Data stages: generate or ingest, validate (the data gate), sequences and item features."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pandas as pd

from pipelines.core.config import Paths, Settings
from pipelines.core.files import published_dir, read_json
from pipelines.data.schema import CATALOGUE_FILE, EVENTS_FILE, GROUND_TRUTH_FILE


def generate(s: Settings, p: Paths) -> dict[str, Any]:
    """Generate the pharmacy world or ingest real data (`data.source`) into data/raw."""
    from pipelines.data.adapters import load_source

    world = load_source(s.data)
    with published_dir(p.raw) as out:
        world.save(out)
    return {"source": s.data.source, "dataset": world.source.get("dataset", ""),
            "products": len(world.catalogue), "events": len(world.events),
            "users": int(world.events["user_id"].nunique()), "sessions": int(world.events["session_id"].nunique())}


def validate(s: Settings, p: Paths) -> dict[str, Any]:
    """The data gate: nothing downstream runs on tables that fail it."""
    from pipelines.data.schema import SOURCE_FILE
    from pipelines.validate.data_docs import data_docs_root, publish_data_docs
    from pipelines.validate.gate import enforce, validate_tables
    from pipelines.validate.profile import ACCEPTED_PROFILE, PROFILE_FILE, DataProfile

    catalogue = pd.read_parquet(p.raw / CATALOGUE_FILE)
    events = pd.read_parquet(p.raw / EVENTS_FILE)
    source = json.loads((p.raw / SOURCE_FILE).read_text()) if (p.raw / SOURCE_FILE).exists() else None
    if p.validated.exists():
        shutil.rmtree(p.validated)  # a failed gate leaves no validated data behind
    accepted = DataProfile.load(p.root / ACCEPTED_PROFILE)
    report = validate_tables(catalogue, events, s.validate_, source=source, accepted=accepted)
    report.data_docs = str(publish_data_docs(report, data_docs_root(p)))  # failed runs too: then people need them
    report = enforce(report, p.reports)
    with published_dir(p.validated) as out:
        for name in (CATALOGUE_FILE, EVENTS_FILE, GROUND_TRUTH_FILE, SOURCE_FILE):
            if (p.raw / name).exists():
                shutil.copy2(p.raw / name, out / name)
        if report.profile is not None:
            # No wall-clock time in the data version: validating the same data again gives the same hash.
            report.profile.model_copy(update={"created_at": ""}).save(out / PROFILE_FILE)
    if report.profile is not None:  # this version, now in place, is the reference for the next one
        report.profile.save(p.root / ACCEPTED_PROFILE)
    return {"success": report.success, "checks": len(report.checks), "elapsed_s": round(report.elapsed_s, 2),
            "drift": report.drift, "data_docs": report.data_docs}


def sequences(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.item_features import build_item_features
    from pipelines.data.sequences import build_sequences, save_sequences

    catalogue = pd.read_parquet(p.validated / CATALOGUE_FILE)
    events = pd.read_parquet(p.validated / EVENTS_FILE)
    n_items = int(catalogue["item_id"].max())
    seqs = build_sequences(events, n_items=n_items)
    features = build_item_features(catalogue, n_items)
    with published_dir(p.features) as out:
        save_sequences(seqs, out)
        features.save(out)
    return {**read_json(p.features / "meta.json"), "meta_tokens": features.vocab_size - 1}
