"""Simulated feedback on a recommendation list, drawn from the generated world's saved user model.

Why: offline metrics only say whether the held-out item was ranked; the generated world knows what
each user wants, so a list can also be scored the way the business sees it (CTR, add-to-cart,
purchase). The response model uses the same ground truth the sessions were drawn from:

- the user looks at position k (1-based) with probability 1 / log2(k + 1) (position bias);
- a looked-at item is clicked with its relevance to the user: the user's regular chronic product
  `RELEVANCE["regular"]`; an item of one of the user's condition classes `in_condition`; of a
  complement class `complement`; anything else `other`; scaled by popularity (popular products
  are clicked more, clipped to [0.5, 2]) and by manufacturer loyalty; never before launch;
- a click becomes an add-to-cart with the generator's P_CART (P_CART_REGULAR for the regular
  product), scaled by price: (class median price / item price) ** PRICE_ELASTICITY, clipped to
  PRICE_CLIP, so a dearer product of the same class is carted less;
- an add-to-cart becomes a purchase with P_PURCHASE_GIVEN_CART, except a prescription-only product of
  a class the user has no condition in (so no prescription to upload): RX_WITHOUT_PRESCRIPTION of that.
  Conversion can therefore move apart from CTR: a list of clickable but dear or prescription-only
  products clicks well and sells badly. Worlds saved before item prices were recorded convert at the
  constant rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RELEVANCE = {"regular": 0.6, "in_condition": 0.25, "complement": 0.12, "other": 0.02}
LOYALTY_BOOST = 1.3
POPULARITY_CLIP = (0.5, 2.0)
PRICE_ELASTICITY = 0.5
PRICE_CLIP = (0.5, 1.5)
RX_WITHOUT_PRESCRIPTION = 0.1


@dataclass(frozen=True)
class Feedback:
    """Per position of one list: whether the simulated user clicked, carted and bought the item."""

    items: np.ndarray
    clicked: np.ndarray
    carted: np.ndarray
    purchased: np.ndarray


class GroundTruth:
    """The saved user model of a generated world (ground_truth.json), able to answer for any list."""

    def __init__(self, truth: dict) -> None:
        missing = [k for k in ("item_class", "item_popularity", "user_conditions", "user_regular", "complements",
                               "classes", "item_launch_s", "item_manufacturer", "user_loyal_manufacturer")
                   if k not in truth]
        if missing:
            raise ValueError(f"ground truth lacks {missing}: regenerate the world (rxrec stage generate)")
        self.item_class = np.asarray(truth["item_class"], dtype=np.int64)
        self.n_items = len(self.item_class)
        pop = np.asarray(truth["item_popularity"], dtype=np.float64)
        self.pop_factor = np.clip((pop / np.median(pop)) ** 0.2, *POPULARITY_CLIP)
        self.launch_s = np.asarray(truth["item_launch_s"], dtype=np.float64)
        self.manufacturer = np.asarray(truth["item_manufacturer"], dtype=np.int64)
        self.start = np.datetime64(truth["start"][:19])
        index = {name: i for i, name in enumerate(truth["classes"])}
        self.complements = {index[k]: [index[c] for c in v] for k, v in truth["complements"].items()}
        self.conditions = {int(u): list(cs) for u, cs in truth["user_conditions"].items()}
        self.regular = {int(u): {int(i) + 1 for i in reg.values()} for u, reg in truth["user_regular"].items()}
        self.loyal = truth["user_loyal_manufacturer"]
        self.p_cart = float(truth["p_cart"])
        self.p_cart_regular = float(truth.get("p_cart_regular", self.p_cart))
        self.p_purchase = float(truth["p_purchase_given_cart"])
        self.n_users = len(self.conditions)
        self.cart_factor = np.ones(self.n_items)
        self.rx = np.zeros(self.n_items, dtype=bool)
        if "item_price" in truth and "item_rx" in truth:
            price = np.maximum(np.asarray(truth["item_price"], dtype=np.float64), 0.01)
            median = {c: np.median(price[self.item_class == c]) for c in np.unique(self.item_class)}
            relative = np.array([median[c] for c in self.item_class]) / price
            self.cart_factor = np.clip(relative ** PRICE_ELASTICITY, *PRICE_CLIP)
            self.rx = np.asarray(truth["item_rx"], dtype=bool)

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        """Read ground_truth.json (data/raw or data/validated); a clear error for real-data sources."""
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: only the generated world (data.source: synthetic) "
                                    f"has a ground-truth user model")
        return cls(json.loads(path.read_text()))

    def click_probability(self, user_id: int, item_ids: np.ndarray, at_s: float | None = None) -> np.ndarray:
        """P(click | the user looks at the item) for items 1..n_items; `at_s` seconds after the start."""
        if user_id not in self.conditions:
            raise KeyError(f"user {user_id} is not in the generated world (users 1..{self.n_users})")
        items = np.asarray(item_ids, dtype=np.int64)
        if items.size and (items.min() < 1 or items.max() > self.n_items):
            raise ValueError(f"item ids must lie in 1..{self.n_items}, got {items.min()}..{items.max()}")
        idx = items - 1
        classes = self.item_class[idx]
        conds = self.conditions[user_id]
        comps = {c for k in conds for c in self.complements.get(k, [])}
        prob = np.full(len(items), RELEVANCE["other"])
        prob[np.isin(classes, list(comps))] = RELEVANCE["complement"]
        prob[np.isin(classes, conds)] = RELEVANCE["in_condition"]
        prob *= self.pop_factor[idx]
        loyal = self.loyal[user_id - 1]
        if loyal >= 0:
            prob[self.manufacturer[idx] == loyal] *= LOYALTY_BOOST
        prob[np.isin(items, list(self.regular.get(user_id, ())))] = RELEVANCE["regular"]
        if at_s is not None:
            prob[self.launch_s[idx] > at_s] = 0.0
        return np.clip(prob, 0.0, 1.0)

    def simulate(self, user_id: int, item_ids: np.ndarray | list[int], rng: np.random.Generator,
                 at_s: float | None = None) -> Feedback:
        """Draw one user's clicks, add-to-carts and purchases on a ranked list."""
        items = np.asarray(item_ids, dtype=np.int64)
        looks = rng.random(len(items)) < 1.0 / np.log2(np.arange(2, len(items) + 2))
        clicked = looks & (rng.random(len(items)) < self.click_probability(user_id, items, at_s))
        regular = np.isin(items, list(self.regular.get(user_id, ())))
        p_cart = np.where(regular, self.p_cart_regular, self.p_cart) * self.cart_factor[items - 1]
        carted = clicked & (rng.random(len(items)) < np.clip(p_cart, 0.0, 1.0))
        no_prescription = self.rx[items - 1] & ~np.isin(self.item_class[items - 1], self.conditions[user_id])
        p_buy = np.where(no_prescription, self.p_purchase * RX_WITHOUT_PRESCRIPTION, self.p_purchase)
        purchased = carted & (rng.random(len(items)) < p_buy)
        return Feedback(items=items, clicked=clicked, carted=carted, purchased=purchased)

    def estimate(self, lists: dict[int, list[int] | np.ndarray], seed: int = 0, repeats: int = 1,
                 at_s: float | None = None) -> dict[str, float]:
        """CTR, add-to-cart and purchase rates per shown item, and per-list hit rates, over many users."""
        rng = np.random.default_rng(seed)
        shown = clicks = carts = buys = lists_clicked = lists_bought = n_lists = 0
        for _ in range(repeats):
            for user, items in lists.items():
                fb = self.simulate(int(user), items, rng, at_s)
                shown += len(fb.items)
                clicks += int(fb.clicked.sum())
                carts += int(fb.carted.sum())
                buys += int(fb.purchased.sum())
                lists_clicked += bool(fb.clicked.any())
                lists_bought += bool(fb.purchased.any())
                n_lists += 1
        per = max(shown, 1)
        return {"ctr": clicks / per, "add_to_cart_rate": carts / per, "purchase_rate": buys / per,
                "lists_with_click": lists_clicked / max(n_lists, 1),
                "lists_with_purchase": lists_bought / max(n_lists, 1), "lists": n_lists, "shown": shown}
