import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import DataSettings
from pipelines.data.generate import generate_world
from pipelines.data.schema import CATALOGUE_COLUMNS, CATALOGUE_OPTIONAL, EVENT_TYPES, EVENTS_COLUMNS

SMALL = DataSettings(n_products=300, n_users=400, seed=7)


def test_same_seed_same_world_other_seed_other_world():
    a, b = generate_world(SMALL, progress=False), generate_world(SMALL, progress=False)
    pd.testing.assert_frame_equal(a.catalogue, b.catalogue)
    pd.testing.assert_frame_equal(a.events, b.events)
    c = generate_world(SMALL.model_copy(update={"seed": 8}), progress=False)
    assert not a.events.equals(c.events)


def test_tables_follow_the_schema():
    world = generate_world(SMALL, progress=False)
    assert list(world.catalogue.columns) == [*CATALOGUE_COLUMNS, *CATALOGUE_OPTIONAL]
    assert world.catalogue["restricted"].isna().mean() > 0.9, "flags are sparse: absent means allowed"
    local = world.catalogue["deliverable_to"].dropna()
    assert 0 < len(local) < 0.1 * len(world.catalogue), "a few products ship to a few regions only"
    assert all(all(code.isdigit() for code in value.split("|")) for value in local)
    assert list(world.events.columns) == list(EVENTS_COLUMNS)
    assert world.catalogue["item_id"].tolist() == list(range(1, SMALL.n_products + 1))
    assert set(world.events["event_type"]) <= set(EVENT_TYPES)
    assert world.events["item_id"].between(1, SMALL.n_products).all()
    assert (world.catalogue["price"] > 0).all()


def test_statistics_match_parameters():
    world = generate_world(DataSettings(n_products=1000, n_users=1500, seed=3), progress=False)
    share = world.catalogue["description"].notna().mean()
    assert 0.15 < share < 0.25  # description_share = 0.2
    counts = world.events["item_id"].value_counts()
    top_decile = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.4  # long tail: a tenth of the items gets a large share of events
    # Cold-start products launch late and only appear after their launch.
    merged = world.events.merge(world.catalogue[["item_id", "launch_ts"]], on="item_id")
    assert (merged["timestamp"] >= merged["launch_ts"]).all()
    late = world.catalogue["launch_ts"] > world.events["timestamp"].min() + pd.Timedelta(days=0.8 * 90 - 1)
    assert 0.08 < late.mean() < 0.12  # cold_start_share = 0.1


def test_sessions_are_time_ordered_and_behave_like_the_ground_truth():
    world = generate_world(SMALL, progress=False)
    ordered = world.events.groupby("session_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing)
    assert ordered.all()
    # Consecutive views in a session mostly stay within a therapeutic class or its complements.
    item_class = np.array(world.ground_truth["item_class"])
    views = world.events[world.events["event_type"] == "view"]
    same = []
    for _, g in views.groupby("session_id"):
        classes = item_class[g["item_id"].to_numpy() - 1]
        same.extend(classes[1:] == classes[:-1])
    assert np.mean(same) > 0.4
    assert set(world.ground_truth["user_conditions"]) == {str(u) for u in range(1, SMALL.n_users + 1)}


def test_statistics_scale_with_parameters():
    """Event volume follows users x sessions x events per session; sessions hold ~events_per_session views."""
    small = generate_world(DataSettings(n_products=1000, n_users=2000, seed=5, sessions_per_user=2.0,
                                        events_per_session=4.0), progress=False)
    big = generate_world(DataSettings(n_products=5000, n_users=4000, seed=5, sessions_per_user=2.0,
                                      events_per_session=4.0), progress=False)
    assert len(big.catalogue) == 5000 and big.events["user_id"].nunique() == 4000
    ratio = len(big.events) / len(small.events)
    assert 1.8 < ratio < 2.2  # twice the users, about twice the events
    for world in (small, big):
        sessions = world.events["session_id"].nunique()
        assert 1.8 < sessions / world.events["user_id"].nunique() < 2.2  # sessions_per_user = 2 (Poisson, >= 1)
        views = (world.events["event_type"] == "view").sum() / sessions
        assert 2.5 < views < 4.5  # events_per_session = 4 (Poisson >= 2, sessions may stop early)
    # Zipf tail: the most viewed item of the big catalogue gets far more events than the median item.
    counts = big.events["item_id"].value_counts()
    assert counts.iloc[0] > 20 * counts.median()
    assert big.catalogue["description"].notna().mean() == pytest.approx(0.2, abs=0.02)


def test_source_record_and_raw_files(tmp_path):
    world = generate_world(SMALL, progress=False)
    world.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "catalogue.parquet", "events.parquet", "ground_truth.json", "source.json"]
    assert world.source["dataset"] == "synthetic" and world.source["signature"].startswith("synthetic:")
    other_size = generate_world(SMALL.model_copy(update={"n_users": 50, "seed": 1}), progress=False)
    assert other_size.source["signature"] == world.source["signature"]  # same shape, other size: comparable
