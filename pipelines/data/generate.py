"""The generated pharmacy world: a catalogue and user sessions drawn from a known user model.

Why generated: real pharmacy logs are private. A world with a saved ground truth lets every
model be scored on what users would really do (not only on held-out clicks), and the same seed
always gives the same data. What users do follows the ground truth: they browse their
conditions' therapeutic classes, compare substitutes (same composition, other manufacturer),
cross-buy complements, refill chronic medicines, favour popular products (a Zipf long tail),
and meet new products that launch late in the span (cold start). Meta-info is sparse and
spelled inconsistently, as in real catalogues.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines.core.config import DataSettings
from pipelines.data.schema import CATALOGUE_FILE, EVENTS_FILE, GROUND_TRUTH_FILE, SOURCE_FILE
from pipelines.data.world import (
    BRAND_SYLLABLES,
    CLASSES,
    COMPLEMENTS,
    MANUFACTURERS,
    PACK_SIZES,
    TAGS,
)

START = pd.Timestamp("2026-01-01")
SECONDS_PER_DAY = 86_400

# Ground-truth behaviour: where the next item in a session comes from.
NEXT_ITEM_SOURCES = {"substitute": 0.30, "same_class": 0.30, "complement": 0.20, "popular": 0.05, "stop_repeat": 0.15}
# Sparse catalogue flags the safety policy reads (absent = allowed): a few restricted products, and a stock
# feed that knows about a quarter of the catalogue, some of it out of stock.
FLAGS_STREAM = 7
P_RESTRICTED = 0.01
P_OUT_OF_STOCK = 0.03
P_STOCK_KNOWN = 0.25
P_LOCAL_DELIVERY = 0.03  # products shipped to a few regions only (cold chain, local licences)
DELIVERY_REGIONS = ("11", "40", "56", "60", "70", "50")  # pincode prefixes: Delhi, Mumbai, Bengaluru, Chennai, ...
P_REFILL_FIRST = 0.6  # a chronic session opens on the user's regular product
P_CART = 0.22
P_CART_REGULAR = 0.7
P_PURCHASE_GIVEN_CART = 0.55
P_EXPLORE_CLASS = 0.12  # a session about a class outside the user's conditions (an acute need)


@dataclass
class World:
    """The internal tables from any source; `save` writes the raw files every stage reads.

    `ground_truth` exists only for the generated world; `source` says where the tables came from
    (dataset name for lineage, a signature that keys the drift reference).
    """

    catalogue: pd.DataFrame
    events: pd.DataFrame
    ground_truth: dict | None = field(default=None, repr=False)
    source: dict = field(default_factory=dict)

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.catalogue.to_parquet(out_dir / CATALOGUE_FILE, index=False)
        self.events.to_parquet(out_dir / EVENTS_FILE, index=False)
        if self.ground_truth is not None:
            (out_dir / GROUND_TRUTH_FILE).write_text(json.dumps(self.ground_truth))
        if self.source:
            (out_dir / SOURCE_FILE).write_text(json.dumps(self.source, indent=2))


def generate_world(settings: DataSettings, progress: bool = True) -> World:
    """Draw a catalogue, users and their sessions, deterministically from `settings.seed`."""
    rng = np.random.default_rng(settings.seed)
    products = _draw_products(settings, rng)
    catalogue = _catalogue_table(products, settings, rng)
    users = _draw_users(settings, products, rng)
    events = _simulate_sessions(settings, products, users, random.Random(settings.seed), progress)
    truth = {
        "seed": settings.seed,
        "start": START.isoformat(),
        "n_days": settings.n_days,
        "classes": [c.name for c in CLASSES],
        "complements": COMPLEMENTS,
        "next_item_sources": NEXT_ITEM_SOURCES,
        "p_cart": P_CART,
        "p_purchase_given_cart": P_PURCHASE_GIVEN_CART,
        "item_class": products.class_idx.tolist(),
        "item_composition": products.composition_idx.tolist(),
        "item_popularity": products.popularity.round(8).tolist(),
        "user_conditions": {str(u + 1): cs for u, cs in enumerate(users.conditions)},
        "user_regular": {str(u + 1): {str(c): i for c, i in reg.items()} for u, reg in enumerate(users.regular)},
        # For simulated feedback on recommendation lists (pipelines/data/ground_truth.py).
        "p_cart_regular": P_CART_REGULAR,
        "item_launch_s": products.launch_s.round(1).tolist(),
        "item_manufacturer": products.manufacturer_idx.tolist(),
        # Item-dependent conversion of simulated feedback: price and prescription (ground_truth.py).
        "item_price": catalogue["price"].round(2).tolist(),
        "item_rx": catalogue["rx_required"].astype(bool).tolist(),
        "user_loyal_manufacturer": users.loyal_manufacturer,
    }
    return World(catalogue=catalogue, events=events, ground_truth=truth, source=synthetic_source(settings))


def synthetic_source(settings: DataSettings) -> dict:
    """Source record of the generated world. The signature covers only the parameters that shape
    the distributions (not seed or sizes), so a bigger world is checked against a smaller one."""
    shape = {k: getattr(settings, k) for k in ("sessions_per_user", "events_per_session", "n_days",
                                               "description_share", "cold_start_share", "popularity_exponent")}
    return {"source": "synthetic", "dataset": settings.dataset or "synthetic",
            "signature": "synthetic:" + json.dumps(shape, sort_keys=True)}


# --------------------------------------------------------------------------- products


@dataclass
class _Products:
    class_idx: np.ndarray  # per item (index 0 = item_id 1)
    composition: list[str | None]  # canonical composition text
    composition_idx: np.ndarray  # -1 for products without one
    manufacturer_idx: np.ndarray
    form: list[str]
    popularity: np.ndarray  # sums to 1
    launch_s: np.ndarray  # seconds from START; negative = before the span


def _draw_products(s: DataSettings, rng: np.random.Generator) -> _Products:
    n = s.n_products
    prevalence = np.array([c.prevalence for c in CLASSES])
    class_idx = rng.choice(len(CLASSES), size=n, p=prevalence / prevalence.sum())
    compositions: list[str | None] = []
    forms: list[str] = []
    for ci in class_idx:
        cls = CLASSES[ci]
        forms.append(cls.forms[rng.integers(len(cls.forms))])
        if not cls.molecules:
            compositions.append(None)
            continue
        picks = [int(rng.integers(len(cls.molecules)))]
        if len(cls.molecules) > 1 and rng.random() < 0.25:
            picks.append(int((picks[0] + 1 + rng.integers(len(cls.molecules) - 1)) % len(cls.molecules)))
        parts = []
        for m in sorted(picks):
            molecule, strengths = cls.molecules[m]
            parts.append(f"{molecule} {strengths[rng.integers(len(strengths))]}")
        compositions.append(" + ".join(parts))
    vocab = {c: i for i, c in enumerate(sorted({c for c in compositions if c}))}
    composition_idx = np.array([vocab[c] if c else -1 for c in compositions])
    # Zipf long tail over a random order of products.
    ranks = rng.permutation(n) + 1
    popularity = 1.0 / ranks ** s.popularity_exponent
    popularity /= popularity.sum()
    span = s.n_days * SECONDS_PER_DAY
    launch = -rng.uniform(0, 365 * SECONDS_PER_DAY, size=n)
    n_cold = round(s.cold_start_share * n)
    cold = rng.choice(n, size=n_cold, replace=False)
    launch[cold] = rng.uniform(0.8 * span, 0.97 * span, size=n_cold)
    return _Products(
        class_idx=class_idx,
        composition=compositions,
        composition_idx=composition_idx,
        manufacturer_idx=rng.integers(len(MANUFACTURERS), size=n),
        form=forms,
        popularity=popularity,
        launch_s=launch,
    )


def _brand(rng: np.random.Generator) -> str:
    k = 2 + int(rng.random() < 0.4)
    return "".join(BRAND_SYLLABLES[i] for i in rng.integers(len(BRAND_SYLLABLES), size=k)).capitalize()


def _noisy_case(text: str, rng: np.random.Generator, p: float) -> str:
    """Real catalogues mix 'Analgesic', 'ANALGESIC' and 'analgesic'."""
    r = rng.random()
    if r < p / 2:
        return text.upper()
    if r < p:
        return text.lower()
    return text


def _catalogue_table(p: _Products, s: DataSettings, rng: np.random.Generator) -> pd.DataFrame:
    n = len(p.class_idx)
    rows = []
    has_description = rng.random(n) < s.description_share
    for i in range(n):
        cls = CLASSES[p.class_idx[i]]
        form = p.form[i]
        composition = p.composition[i]
        strength = composition.split(" + ")[0].split(" ")[-1] if composition else ""
        name = f"{_brand(rng)} {strength} {form.capitalize()}".replace("  ", " ").strip()
        manufacturer = MANUFACTURERS[p.manufacturer_idx[i]]
        if rng.random() < 0.1:
            manufacturer = manufacturer + (" Ltd" if rng.random() < 0.5 else " Limited")
        uses = [u for u in cls.uses if rng.random() < 0.7] or [cls.uses[0]]
        tags = [TAGS[t] for t in rng.choice(len(TAGS), size=rng.integers(0, 3), replace=False)]
        if composition and rng.random() < 0.1:
            composition = composition.lower().replace(" + ", "+")  # spelling variant
        price = float(np.round(rng.lognormal(np.log(cls.price_median), 0.45), 2))
        description = None
        if has_description[i]:
            description = (
                f"{name} is a {form} by {manufacturer}"
                + (f" containing {p.composition[i]}" if p.composition[i] else "")
                + f". It is used for {', '.join(uses)}."
                + (" Take it as prescribed by your doctor." if cls.rx else " Suitable for everyday use.")
            )
        rows.append(
            {
                "item_id": i + 1,
                "name": name,
                "manufacturer": None if rng.random() < 0.05 else manufacturer,
                "composition": None if composition and rng.random() < 0.08 else composition,
                "therapeutic_class": None if rng.random() < 0.1 else _noisy_case(cls.name, rng, 0.15),
                "uses": None if rng.random() < 0.15 else "|".join(uses),
                "form": None if rng.random() < 0.05 else _noisy_case(form, rng, 0.1),
                "pack_size": PACK_SIZES[form][rng.integers(len(PACK_SIZES[form]))],
                "price": max(price, 1.0),
                "rx_required": bool(cls.rx),
                "tags": "|".join(tags) if tags else None,
                "description": description,
                "launch_ts": START + pd.to_timedelta(p.launch_s[i], unit="s"),
            }
        )
    table = pd.DataFrame(rows)
    table["launch_ts"] = table["launch_ts"].astype("datetime64[us]")
    # Availability flags from their own stream, so adding them left every other column as it was.
    flags = np.random.default_rng([s.seed, FLAGS_STREAM])
    restricted, stock = flags.random(n), flags.random(n)
    table["restricted"] = pd.array(np.where(restricted < P_RESTRICTED, True, None), dtype="boolean")
    table["in_stock"] = pd.array(np.where(stock < P_OUT_OF_STOCK, False, np.where(stock < P_STOCK_KNOWN, True, None)),
                                 dtype="boolean")
    local, regions = flags.random(n), flags.permuted(np.tile(np.arange(len(DELIVERY_REGIONS)), (n, 1)), axis=1)
    counts = flags.integers(1, 4, size=n)
    table["deliverable_to"] = pd.array(
        ["|".join(DELIVERY_REGIONS[j] for j in sorted(regions[i, :counts[i]])) if local[i] < P_LOCAL_DELIVERY else None
         for i in range(n)], dtype="str")
    return table


# --------------------------------------------------------------------------- users


@dataclass
class _Users:
    conditions: list[list[int]]  # class indices
    regular: list[dict[int, int]]  # chronic class -> regular item index
    loyal_manufacturer: list[int]  # -1 = none


def _draw_users(s: DataSettings, p: _Products, rng: np.random.Generator) -> _Users:
    prevalence = np.array([c.prevalence for c in CLASSES])
    has = rng.random((s.n_users, len(CLASSES))) < prevalence
    none = ~has.any(axis=1)
    has[none, rng.choice(len(CLASSES), size=int(none.sum()), p=prevalence / prevalence.sum())] = True
    conditions = [np.flatnonzero(row).tolist() for row in has]
    launched = p.launch_s <= 0
    # Per chronic class: launched items and their cumulative popularity, built once (not per user).
    pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c, cls in enumerate(CLASSES):
        pool = np.flatnonzero((p.class_idx == c) & launched)
        if cls.chronic and len(pool):
            cum = np.cumsum(p.popularity[pool])
            pools[c] = (pool, cum / cum[-1])
    regular: list[dict[int, int]] = []
    for conds in conditions:
        reg = {}
        for c in conds:
            if c in pools:
                pool, cum = pools[c]
                reg[c] = int(pool[min(int(np.searchsorted(cum, rng.random(), side="right")), len(pool) - 1)])
        regular.append(reg)
    loyal = np.where(rng.random(s.n_users) < 0.3, rng.integers(len(MANUFACTURERS), size=s.n_users), -1)
    return _Users(conditions=conditions, regular=regular, loyal_manufacturer=loyal.tolist())


# --------------------------------------------------------------------------- sessions


class _Pool:
    """Items drawn in proportion to popularity, skipping those not launched yet (O(log n) a draw)."""

    def __init__(self, items: np.ndarray, p: _Products, launch: list[float]) -> None:
        order = items[np.argsort(-p.popularity[items])]
        self.items = order.tolist()
        self.cum = list(accumulate(p.popularity[order].tolist()))
        self.launch = launch  # one shared Python list: numpy scalar indexing is ~10x slower here

    def draw(self, r: random.Random, t: float) -> int | None:
        if not self.items:
            return None
        for _ in range(6):
            i = self.items[min(bisect.bisect_left(self.cum, r.random() * self.cum[-1]), len(self.items) - 1)]
            if self.launch[i] <= t:
                return i
        for i in self.items:  # most popular launched item
            if self.launch[i] <= t:
                return i
        return None


def _simulate_sessions(s: DataSettings, p: _Products, u: _Users, r: random.Random, progress: bool) -> pd.DataFrame:
    launch = p.launch_s.tolist()
    everything = _Pool(np.arange(len(p.class_idx)), p, launch)
    by_class = [_Pool(np.flatnonzero(p.class_idx == c), p, launch) for c in range(len(CLASSES))]
    # Group items by composition with one sort (not one scan of the catalogue per composition).
    order = np.argsort(p.composition_idx, kind="stable")
    keys, starts = np.unique(p.composition_idx[order], return_index=True)
    by_composition = {
        int(k): _Pool(group, p, launch) for k, group in zip(keys, np.split(order, starts[1:]), strict=True) if k >= 0
    }
    class_index = {c.name: i for i, c in enumerate(CLASSES)}
    complements = [[class_index[x] for x in COMPLEMENTS.get(c.name, ())] for c in CLASSES]
    span = s.n_days * SECONDS_PER_DAY
    sources = list(NEXT_ITEM_SOURCES)
    source_cum = list(accumulate(NEXT_ITEM_SOURCES.values()))
    # Plain lists for the hot loop (numpy scalar indexing costs more than the work itself).
    lists = _ItemLists(p.class_idx.tolist(), p.composition_idx.tolist(), p.manufacturer_idx.tolist())

    users_col, sessions_col, items_col, types_col, ts_col = [], [], [], [], []
    session_id = 0
    for user in tqdm(range(s.n_users), desc="simulating users", disable=not progress, mininterval=1.0):
        conds = u.conditions[user]
        n_sessions = 1 + _poisson(r, s.sessions_per_user - 1)
        starts = sorted(r.uniform(0, span - 3600) for _ in range(n_sessions))
        for start in starts:
            session_id += 1
            if r.random() < P_EXPLORE_CLASS:
                cls = r.randrange(len(CLASSES))
            else:  # chronic conditions bring the user back more often
                weights = [2.0 if CLASSES[c].chronic else 1.0 for c in conds]
                cls = r.choices(conds, weights=weights)[0]
            t = start
            regular = u.regular[user].get(cls)
            item = regular if regular is not None and r.random() < P_REFILL_FIRST else by_class[cls].draw(r, t)
            length = max(2, _poisson(r, s.events_per_session))
            seen: set[int] = set()
            for step in range(length):
                if item is None:
                    break
                seen.add(item)
                p_cart = P_CART_REGULAR if item == regular else P_CART
                kinds = ["view"]
                if r.random() < p_cart:
                    kinds.append("add_to_cart")
                    if r.random() < P_PURCHASE_GIVEN_CART:
                        kinds.append("purchase")
                for kind in kinds:
                    users_col.append(user + 1)
                    sessions_col.append(session_id)
                    items_col.append(item + 1)
                    types_col.append(kind)
                    ts_col.append(t)
                    t += 1 + r.expovariate(1 / 40)
                item = _next_item(r, item, cls, t, seen, lists, u.loyal_manufacturer[user], by_class,
                                  by_composition, complements, everything, sources, source_cum)
    events = pd.DataFrame(
        {
            "user_id": np.array(users_col, dtype=np.int64),
            "session_id": np.array(sessions_col, dtype=np.int64),
            "item_id": np.array(items_col, dtype=np.int64),
            "event_type": pd.array(types_col, dtype="str"),
            "timestamp": (START + pd.to_timedelta(np.array(ts_col), unit="s")).astype("datetime64[us]"),
        }
    )
    return events.sort_values(["timestamp", "session_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class _ItemLists:
    class_idx: list[int]
    composition_idx: list[int]
    manufacturer_idx: list[int]


def _next_item(r, item, cls, t, seen, p: _ItemLists, loyal, by_class, by_composition, complements, everything,
               sources, source_cum) -> int | None:
    """One step of the ground-truth browsing model (NEXT_ITEM_SOURCES)."""
    for _ in range(4):
        source = sources[bisect.bisect_left(source_cum, r.random() * source_cum[-1])]
        if source == "stop_repeat":
            return None
        if source == "substitute" and p.composition_idx[item] >= 0:
            candidate = by_composition[p.composition_idx[item]].draw(r, t)
            if loyal >= 0 and candidate is not None and p.manufacturer_idx[candidate] != loyal:
                candidate = by_composition[p.composition_idx[item]].draw(r, t)
        elif source == "complement" and complements[cls]:
            candidate = by_class[r.choice(complements[cls])].draw(r, t)
        elif source == "popular":
            candidate = everything.draw(r, t)
        else:
            candidate = by_class[p.class_idx[item]].draw(r, t)
        if candidate is not None and candidate not in seen:
            return candidate
    return None


def _poisson(r: random.Random, lam: float) -> int:
    """Knuth's method; lam is small here."""
    if lam <= 0:
        return 0
    limit, k, prod = math.exp(-lam), 0, r.random()
    while prod > limit:
        k += 1
        prod *= r.random()
    return k
