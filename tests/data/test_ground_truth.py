"""The saved user model answers for any recommendation list, deterministically, and prefers relevant lists."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import DataSettings
from pipelines.data.generate import generate_world
from pipelines.data.ground_truth import GroundTruth

SETTINGS = DataSettings(n_products=400, n_users=300, seed=11)


@pytest.fixture(scope="module")
def world_and_truth(tmp_path_factory):
    world = generate_world(SETTINGS, progress=False)
    out = tmp_path_factory.mktemp("world")
    world.save(out)
    return world, GroundTruth.load(out / "ground_truth.json")


def _lists(truth: GroundTruth, relevant: bool, k: int = 10) -> dict[int, np.ndarray]:
    """Per user: k items of the user's own condition classes (relevant) or of other classes."""
    rng = np.random.default_rng(0)
    lists = {}
    for user in range(1, truth.n_users + 1):
        mask = np.isin(truth.item_class, truth.conditions[user])
        pool = np.flatnonzero(mask if relevant else ~mask) + 1
        if len(pool) >= k:
            lists[user] = rng.choice(pool, size=k, replace=False)
    return lists


def test_feedback_is_deterministic_and_consistent(world_and_truth) -> None:
    _, truth = world_and_truth
    items = np.arange(1, 21)
    a = truth.simulate(5, items, np.random.default_rng(3))
    b = truth.simulate(5, items, np.random.default_rng(3))
    assert np.array_equal(a.clicked, b.clicked) and np.array_equal(a.purchased, b.purchased)
    # A purchase needs an add-to-cart, which needs a click.
    assert not (a.purchased & ~a.carted).any() and not (a.carted & ~a.clicked).any()


def test_relevant_lists_get_more_clicks_and_purchases(world_and_truth) -> None:
    _, truth = world_and_truth
    good = truth.estimate(_lists(truth, relevant=True), seed=1, repeats=3)
    bad = truth.estimate(_lists(truth, relevant=False), seed=1, repeats=3)
    assert good["ctr"] > 3 * bad["ctr"]
    assert good["purchase_rate"] > bad["purchase_rate"]
    assert 0 < good["purchase_rate"] < good["add_to_cart_rate"] < good["ctr"] < 1


def test_conversion_depends_on_price_and_prescription_not_only_on_the_click(world_and_truth) -> None:
    """Same clicks, different sales: dear products are carted less, rx products without a condition bought less."""
    _, truth = world_and_truth
    user = next(u for u in range(1, truth.n_users + 1) if truth.conditions[u])
    rng = np.random.default_rng(0)
    cheap, dear = int(np.argmax(truth.cart_factor)) + 1, int(np.argmin(truth.cart_factor)) + 1
    assert truth.cart_factor[cheap - 1] > 1 > truth.cart_factor[dear - 1]

    def rates(item: int, n: int = 4000) -> tuple[float, float, float]:
        fb = [truth.simulate(user, np.array([item]), rng) for _ in range(n)]
        clicked = sum(int(f.clicked[0]) for f in fb)
        return (clicked, sum(int(f.carted[0]) for f in fb) / max(clicked, 1),
                sum(int(f.purchased[0]) for f in fb) / max(sum(int(f.carted[0]) for f in fb), 1))

    assert rates(cheap)[1] > rates(dear)[1], "add-to-cart per click falls with price"
    rx_other = next(i + 1 for i in np.flatnonzero(truth.rx) if truth.item_class[i] not in truth.conditions[user])
    truth = copy.copy(truth)  # the module's fixture stays as it was
    truth.p_cart = truth.p_cart_regular = 1.0  # every click carted: the purchase step alone is measured
    assert rates(rx_other)[2] < 0.5 * truth.p_purchase, "no prescription for its class: rarely bought"


def test_regular_product_and_launch_time(world_and_truth) -> None:
    _, truth = world_and_truth
    user = next(u for u, reg in truth.regular.items() if reg)
    regular = next(iter(truth.regular[user]))
    assert truth.click_probability(user, np.array([regular]))[0] == pytest.approx(0.6)
    late = int(np.argmax(truth.launch_s)) + 1  # a cold-start item, launched late in the span
    assert truth.click_probability(user, np.array([late]), at_s=0.0)[0] == 0.0
    assert truth.click_probability(user, np.array([late]), at_s=truth.launch_s[late - 1] + 1)[0] > 0


def test_clear_errors(world_and_truth, tmp_path: Path) -> None:
    _, truth = world_and_truth
    with pytest.raises(KeyError, match="not in the generated world"):
        truth.click_probability(10_000, np.array([1]))
    with pytest.raises(ValueError, match="item ids must lie in 1..400"):
        truth.click_probability(1, np.array([0, 5]))
    with pytest.raises(FileNotFoundError, match="only the generated world"):
        GroundTruth.load(tmp_path / "ground_truth.json")
    (tmp_path / "old.json").write_text(json.dumps({"item_class": []}))
    with pytest.raises(ValueError, match="regenerate the world"):
        GroundTruth.load(tmp_path / "old.json")
