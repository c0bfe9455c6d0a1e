"""Distribution checks: new data is held to the profile of the last accepted version of the same source."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import DataSettings, ValidateSettings
from pipelines.data.generate import generate_world
from pipelines.validate import DataValidationError, enforce, validate_tables
from pipelines.validate.profile import DataProfile

SETTINGS = ValidateSettings(min_products=50, min_events=200)


@pytest.fixture(scope="module")
def world():
    return generate_world(DataSettings(n_products=300, n_users=400, seed=21), progress=False)


@pytest.fixture(scope="module")
def accepted(world) -> DataProfile:
    report = validate_tables(world.catalogue, world.events, SETTINGS, source=world.source)
    assert report.success and "no accepted profile yet" in report.drift
    return report.profile


Drift = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]


def _lost_carts_and_purchases(c, e):  # an export that only kept page views
    return c, e[e["event_type"] == "view"].reset_index(drop=True)


def _sessions_glued(c, e):  # a broken sessioniser: one session per user
    return c, e.assign(session_id=e["user_id"])


def _sessions_split(c, e):  # every event its own session
    return c, e.assign(session_id=np.arange(1, len(e) + 1))


def _unknown_items(c, e):  # 10% of events point at products the catalogue does not have
    e = e.copy()
    rows = np.random.default_rng(0).choice(len(e), size=len(e) // 10, replace=False)
    e.loc[rows, "item_id"] = len(c) + 1 + np.arange(len(rows)) % 7
    return c, e


def _price_in_paise(c, e):
    return c.assign(price=c["price"] * 100), e


def _descriptions_lost(c, e):
    return c.assign(description=pd.Series([None] * len(c), dtype="str")), e


DRIFTS: list[tuple[str, Drift, list[str]]] = [
    ("event_mix_shift", _lost_carts_and_purchases, ["events.event_type", "event-type mix", "KL divergence"]),
    ("sessions_glued", _sessions_glued, ["events.session_length", "mean session length", "this version"]),
    ("sessions_split", _sessions_split, ["events.session_length", "median session length"]),
    ("unknown_item_spike", _unknown_items, ["events.item_id", "missing from the catalogue", "% unknown"]),
    ("price_unit_change", _price_in_paise, ["catalogue.price", "median price", "unit or currency"]),
    ("descriptions_lost", _descriptions_lost, ["catalogue.description", "share of products with a description"]),
]


def test_same_source_same_distribution_passes(world, accepted) -> None:
    again = generate_world(DataSettings(n_products=300, n_users=600, seed=22), progress=False)  # new data drop
    report = validate_tables(again.catalogue, again.events, SETTINGS, source=again.source, accepted=accepted)
    assert report.success, report.summary()
    assert "compared with the version accepted" in report.drift
    assert sum(1 for c in report.checks if "accepted" in c.message) >= 6
    markdown = report.to_markdown()
    assert "## Distribution" in markdown and "session_length" in markdown


@pytest.mark.parametrize(("drift", "words"), [(d, w) for _, d, w in DRIFTS], ids=[i for i, _, _ in DRIFTS])
def test_drift_fails_gate(world, accepted, drift: Drift, words: list[str], tmp_path) -> None:
    lenient = SETTINGS.model_copy(update={"max_unknown_item_share": 0.5})  # only the drift check may catch it
    catalogue, events = drift(world.catalogue.copy(), world.events.copy())
    report = validate_tables(catalogue, events, lenient, source=world.source, accepted=accepted)
    with pytest.raises(DataValidationError) as info:
        enforce(report, tmp_path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in error message:\n{message}"


def test_other_source_or_switched_off_skips_drift(world, accepted) -> None:
    catalogue, events = _price_in_paise(world.catalogue.copy(), world.events.copy())
    other = {**world.source, "signature": "tables:new-shop.csv:-"}
    report = validate_tables(catalogue, events, SETTINGS, source=other, accepted=accepted)
    assert report.success and "another source" in report.drift
    off = SETTINGS.model_copy(update={"drift_checks": False})
    report = validate_tables(catalogue, events, off, source=world.source, accepted=accepted)
    assert report.success and "drift checks off" in report.drift
