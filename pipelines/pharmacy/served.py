"""The part of the pharmacy layer the server runs: the safety policy, placement blends, reasons.

numpy and the standard library only: the repository writer copies this file as rxrec_pharmacy.py beside
the `recommend` backend (with its tables, policy.npz and placements.npz, built at deploy by
pipelines/pharmacy/tables.py and catalogue.py), so the server runs the code this package and its tests
run.

The safety policy removes a candidate item with the first reason that applies (codes are REASONS'
order + 1):
  restricted               the catalogue marks the product restricted (never recommended)
  unavailable              out of stock, or not deliverable to the request's location (catalogue fields
                           in_stock and deliverable_to; absent = allowed)
  rx_without_record        prescription-only, and the request holds no purchase or prescription
                           record for every one of its molecules (an rx product whose molecules
                           are unknown needs a record of the product itself)
  interacts                one of its molecules interacts with a molecule of a session or cart item
  duplicate_molecule       it shares a molecule with an item already in the cart
Everything is per request: `context()` turns the request's session, cart and record item ids into
molecule masks once, `reasons()` checks a whole array of candidates against them.

A placement's blend (params.yaml `placements`, the config parameter `placement_<name>`) is an ordered
list of sources with the most slots each may fill: "substitutes:4,personal:6". Each source fills up to
its slots in order; what is left is filled from the same sources in order without limits, then by
popularity.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class NpzTables:
    """A frozen dataclass of arrays saved as one .npz (no pickle); `check` says what is wrong with one."""

    KIND = "tables"

    def check(self) -> None:
        """Subclasses raise ValueError naming the array that is wrong."""

    def to_bytes(self) -> bytes:
        """.npz content (uncompressed, deterministic for the same arrays)."""
        self.check()
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(self, name) for name in self.__dataclass_fields__})
        return buffer.getvalue()

    @classmethod
    def load(cls, path: object):
        with np.load(path, allow_pickle=False) as z:
            missing = sorted(set(cls.__dataclass_fields__) - set(z.files))
            if missing:
                raise ValueError(f"{path}: {cls.KIND} lack {', '.join(missing)}")
            tables = cls(**{name: z[name] for name in cls.__dataclass_fields__})
        tables.check()
        return tables


def csr_rows(rows: dict[int, list[int]], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [n_rows + 1], indices) of the lists in `rows` (row id -> values, in order); other rows empty."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    for row, values in rows.items():
        lengths[row] = len(values)
    indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    indices = np.zeros(int(indptr[-1]), dtype=np.int64)
    for row, values in rows.items():
        indices[indptr[row]:indptr[row + 1]] = values
    return indptr, indices

POLICY_FILE = "policy.npz"
REASONS = ("restricted", "unavailable", "rx_without_record", "interacts", "duplicate_molecule")
ALLOWED = 0  # reason code of an allowed candidate; a removed one has REASONS.index(reason) + 1


#: PolicyRules field (the params.yaml `policy` key) -> the reason it removes candidates for.
CHECK_REASONS = {"drop_restricted": "restricted", "drop_unavailable": "unavailable",
                 "rx_requires_record": "rx_without_record", "interactions": "interacts",
                 "duplicate_molecules_in_cart": "duplicate_molecule"}
MAX_CART_ITEMS = 500  # a longer cart is refused as a bad request
NO_CHECKS = "none"  # policy_checks when every check is off (an empty parameter means the default: all)


@dataclass(frozen=True)
class PolicyRules:
    """Which checks apply (params.yaml `policy:`); a pharmacy keeps them all on."""

    drop_restricted: bool = True
    drop_unavailable: bool = True
    rx_requires_record: bool = True
    interactions: bool = True
    duplicate_molecules_in_cart: bool = True

    def checks(self) -> str:
        """The reasons checked, comma-separated (the recommend config parameter `policy_checks`)."""
        return ",".join(reason for key, reason in CHECK_REASONS.items() if getattr(self, key)) or NO_CHECKS

    @classmethod
    def from_checks(cls, text: str) -> PolicyRules:
        """The rules whose reasons `text` lists; ValueError naming an unknown one."""
        names = {name.strip() for name in text.split(",") if name.strip()} - {NO_CHECKS}
        unknown = sorted(names - set(CHECK_REASONS.values()))
        if unknown:
            raise ValueError(f"policy_checks names {unknown}; known checks are {list(CHECK_REASONS.values())}")
        return cls(**{key: reason in names for key, reason in CHECK_REASONS.items()})


@dataclass(frozen=True)
class SafetyTables(NpzTables):
    """What the policy knows about each item id 0..n_items (0 = padding) and each molecule."""

    KIND = "policy tables"

    rx_required: np.ndarray  # bool [n + 1]
    restricted: np.ndarray  # bool [n + 1]
    unavailable: np.ndarray  # bool [n + 1]: out of stock or not deliverable
    molecule_indptr: np.ndarray  # int64 [n + 2]: item i's molecules are indices[indptr[i]:indptr[i + 1]]
    molecule_indices: np.ndarray  # int64: molecule ids 0..n_molecules - 1
    molecule_names: np.ndarray  # str [n_molecules]
    interacting_pairs: np.ndarray  # int64 [p, 2]: molecule ids that must not be combined
    delivery_limited: np.ndarray  # bool [n + 1]: ships only to the regions that list it
    region_codes: np.ndarray  # str [r], sorted: postcode prefixes ("110", "40")
    region_indptr: np.ndarray  # int64 [r + 1]: region j ships region_items[indptr[j]:indptr[j + 1]]
    region_items: np.ndarray  # int64 item ids

    @property
    def n_items(self) -> int:
        return len(self.rx_required) - 1

    @property
    def n_molecules(self) -> int:
        return len(self.molecule_names)

    @classmethod
    def permissive(cls, n_items: int) -> SafetyTables:
        """Tables that know nothing (no catalogue): every check passes. Say so wherever it is used."""
        none = np.zeros(n_items + 1, dtype=bool)
        return cls(none, none.copy(), none.copy(), np.zeros(n_items + 2, dtype=np.int64), np.zeros(0, np.int64),
                   np.zeros(0, dtype="<U1"), np.zeros((0, 2), dtype=np.int64), none.copy(), np.zeros(0, dtype="<U1"),
                   np.zeros(1, np.int64), np.zeros(0, np.int64))

    def check(self) -> None:
        """Shapes and ranges the policy relies on; ValueError naming the table that is wrong."""
        n = len(self.rx_required)
        for name in ("restricted", "unavailable", "delivery_limited"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"policy table {name} has {len(getattr(self, name))} rows, rx_required has {n}")
        if len(self.molecule_indptr) != n + 1 or int(self.molecule_indptr[-1]) != len(self.molecule_indices):
            raise ValueError(f"policy molecule_indptr must have {n + 1} entries ending at {len(self.molecule_indices)}")
        for name, ids in (("molecule_indices", self.molecule_indices), ("interacting_pairs", self.interacting_pairs)):
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.n_molecules):
                raise ValueError(f"policy {name} names a molecule outside 0..{self.n_molecules - 1}")
        if len(self.region_indptr) != len(self.region_codes) + 1 or int(self.region_indptr[-1]) != len(self.region_items):
            raise ValueError(f"policy region_indptr must have {len(self.region_codes) + 1} entries ending at "
                             f"{len(self.region_items)}")
        if self.region_items.size and (int(self.region_items.min()) < 1 or int(self.region_items.max()) >= n):
            raise ValueError(f"policy region_items names an item outside 1..{n - 1}")

    def deliverable(self, location: str) -> np.ndarray:
        """bool [n + 1]: the items that ship to `location` (a postcode: a region is any prefix of it)."""
        out = ~self.delivery_limited
        code = normalise_location(location)
        if not code or not len(self.region_codes):
            return out
        prefixes = np.array([code[:i] for i in range(1, len(code) + 1)], dtype=self.region_codes.dtype)
        at = np.minimum(np.searchsorted(self.region_codes, prefixes), len(self.region_codes) - 1)
        for j in at[self.region_codes[at] == prefixes].tolist():
            out[self.region_items[self.region_indptr[j]:self.region_indptr[j + 1]]] = True
        return out


MAX_LOCATION_CHARS = 16


def normalise_location(text: str) -> str:
    """"110 017" -> "110017": a postcode with its spaces and dashes dropped, upper case."""
    return "".join(ch for ch in text.upper() if ch not in " -")


def location_problem(text: str) -> str | None:
    """Why a request's location is not a postcode, or None ("" = unknown location: nothing is dropped for it)."""
    code = normalise_location(text)
    if code and (len(code) > MAX_LOCATION_CHARS or not (code.isascii() and code.isalnum())):
        return (f"is {text[:40]!r}: a location is a postcode of at most {MAX_LOCATION_CHARS} letters or digits "
                "(spaces and dashes allowed), or empty when unknown")
    return None



@dataclass
class RequestContext:
    """One request's molecule masks: what it may interact with, what is in its cart, what it holds a record for."""

    # bool [n_molecules + 1] each; the last entry is the padding molecule (SafetyPolicy.item_molecules)
    interacting: np.ndarray  # interacts with a session or cart molecule
    in_cart: np.ndarray
    on_record: np.ndarray  # purchased or prescribed (the padding entry is True: it never lacks a record)
    record_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # purchased or prescribed ids
    undeliverable: np.ndarray | None = None  # bool [n + 1]: does not ship to the request's location (None: unknown)


class SafetyPolicy:
    """Per-request masks over the tables; `reasons` is vectorised over candidates."""

    def __init__(self, tables: SafetyTables, rules: PolicyRules | None = None) -> None:
        self.tables, self.rules = tables, rules or PolicyRules()
        m = tables.n_molecules
        self.interacts = np.zeros((m, m), dtype=bool)  # a real formulary's few thousand molecules fit
        pairs = tables.interacting_pairs
        if len(pairs):
            self.interacts[pairs[:, 0], pairs[:, 1]] = True
            self.interacts[pairs[:, 1], pairs[:, 0]] = True
        # Each item's molecules as one padded row (the pad is molecule id m, whose mask entries are set so that
        # it never counts): a request's masks are looked up for a whole candidate array in one indexing.
        indptr = tables.molecule_indptr[:tables.n_items + 2]
        self.molecule_counts = np.diff(indptr)  # molecules per item
        width = max(1, int(self.molecule_counts.max()) if len(self.molecule_counts) else 1)
        self.item_molecules = np.full((tables.n_items + 1, width), m, dtype=np.int64)
        rows = np.repeat(np.arange(tables.n_items + 1), self.molecule_counts)
        self.item_molecules[rows, np.arange(len(rows)) - indptr[rows]] = tables.molecule_indices[:len(rows)]
        # The per-item reason that needs no request: restricted first, then unavailable.
        self.static = np.zeros(tables.n_items + 1, dtype=np.uint8)
        if self.rules.drop_unavailable:
            self.static[tables.unavailable] = REASONS.index("unavailable") + 1
        if self.rules.drop_restricted:
            self.static[tables.restricted] = REASONS.index("restricted") + 1

    def _valid(self, ids: np.ndarray | None) -> np.ndarray:
        if ids is None:
            return np.zeros(0, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64).ravel()
        return np.unique(ids[(ids > 0) & (ids <= self.tables.n_items)])

    def _mask(self, items: np.ndarray, pad: bool = False) -> np.ndarray:
        """bool [n_molecules + 1]: the molecules of these items; the padding entry set to `pad`."""
        mask = np.zeros(self.tables.n_molecules + 1, dtype=bool)
        mask[self.item_molecules[items].ravel()] = True
        mask[-1] = pad
        return mask

    def context(self, session: np.ndarray | None = None, cart: np.ndarray | None = None,
                records: np.ndarray | None = None, location: str = "") -> RequestContext:
        """Masks of one request: its session and cart items, the items it holds a record for, and what does not
        ship to its location (a postcode; "" when unknown: then nothing is dropped for delivery)."""
        session_items, cart_items, record_items = self._valid(session), self._valid(cart), self._valid(records)
        seen = self._mask(np.union1d(session_items, cart_items))[:-1]
        interacting = np.zeros(len(seen) + 1, dtype=bool)
        if seen.any():
            interacting[:-1] = self.interacts[seen].any(axis=0)
        undeliverable = None
        if location and self.tables.delivery_limited.any():
            undeliverable = ~self.tables.deliverable(location)
        return RequestContext(interacting, self._mask(cart_items), self._mask(record_items, pad=True), record_items,
                              undeliverable)

    def reasons(self, candidates: np.ndarray, ctx: RequestContext) -> np.ndarray:
        """uint8 per candidate: ALLOWED, or the code of the first reason it is removed for."""
        ids = np.asarray(candidates, dtype=np.int64)
        out = np.zeros(len(ids), dtype=np.uint8)
        valid = (ids > 0) & (ids <= self.tables.n_items)
        items = ids[valid]
        if not len(items):
            return out
        codes = self.static[items].copy()
        if self.rules.drop_unavailable and ctx.undeliverable is not None:
            codes[(codes == ALLOWED) & ctx.undeliverable[items]] = REASONS.index("unavailable") + 1
        rx = self.tables.rx_required[items] & (codes == ALLOWED) if self.rules.rx_requires_record else None
        check_rx = rx is not None and bool(rx.any())
        check_interactions = self.rules.interactions and bool(ctx.interacting.any())
        check_cart = self.rules.duplicate_molecules_in_cart and bool(ctx.in_cart.any())
        if not (check_rx or check_interactions or check_cart):  # nothing needs the molecules of this request
            out[valid] = codes
            return out
        molecules = self.item_molecules[items]  # [n, width], padded
        if check_rx:
            no_record = (~ctx.on_record[molecules]).any(axis=1)
            unknown = rx & (self.molecule_counts[items] == 0)  # an rx product of unknown composition
            if unknown.any():
                no_record[unknown] = ~np.isin(items[unknown], ctx.record_items)
            codes[rx & no_record] = REASONS.index("rx_without_record") + 1
        if check_interactions:
            hit = ctx.interacting[molecules].any(axis=1)
            codes[(codes == ALLOWED) & hit] = REASONS.index("interacts") + 1
        if check_cart:
            dup = ctx.in_cart[molecules].any(axis=1)
            codes[(codes == ALLOWED) & dup] = REASONS.index("duplicate_molecule") + 1
        out[valid] = codes
        return out

    def allowed(self, candidates: np.ndarray, ctx: RequestContext) -> np.ndarray:
        """bool per candidate: may be shown to this request."""
        return self.reasons(candidates, ctx) == ALLOWED


PLACEMENTS_FILE = "placements.npz"
PLACEMENTS = ("home", "product", "cart", "search")
#: The sources a placement can blend (params.yaml `placements`; the items' reason codes). `matches` are the
#: search query's products (rxrec_search, pipelines/pharmacy/search.py), re-ranked by the personal model;
#: `refills` the request's chronic medicines whose last pack runs out soon (`due_refills`); `history` the best
#: items for the request's user by their stored vector (pipelines/models/user_vectors.py).
SOURCES = ("refills", "personal", "history", "complements", "substitutes", "matches", "popular")
MAX_SUBSTITUTES = 20  # per product, cheapest first


@dataclass(frozen=True)
class PlacementTables(NpzTables):
    """Per item id 0..n_items: display name, price, generic flag, days one pack lasts; the substitutes CSR,
    cheapest first."""

    KIND = "placement tables"

    names: np.ndarray  # str [n + 1] ("" for ids outside the catalogue)
    price: np.ndarray  # float32 [n + 1] (0 when unknown)
    generic: np.ndarray  # bool [n + 1]: tagged generic
    substitute_indptr: np.ndarray  # int64 [n + 2]
    substitute_indices: np.ndarray  # int64
    supply_days: np.ndarray  # float32 [n + 1]: days one pack of a chronic medicine lasts; 0 = not refilled

    def substitutes(self, item: int) -> np.ndarray:
        return self.substitute_indices[self.substitute_indptr[item]:self.substitute_indptr[item + 1]]

    def check(self) -> None:
        if (len(self.substitute_indptr) != len(self.names) + 1 or len(self.price) != len(self.names)
                or len(self.supply_days) != len(self.names)):
            raise ValueError(f"placement tables do not cover the {len(self.names)} item rows alike")

    @classmethod
    def empty(cls, n_items: int) -> PlacementTables:
        """No catalogue: no names, prices or substitutes (the placements still serve the other sources)."""
        return cls(np.full(n_items + 1, "", dtype="<U1"), np.zeros(n_items + 1, np.float32),
                   np.zeros(n_items + 1, bool), np.zeros(n_items + 2, np.int64), np.zeros(0, np.int64),
                   np.zeros(n_items + 1, np.float32))


def parse_blend(text: str) -> list[tuple[str, int]]:
    """"substitutes:4,personal:6" -> [("substitutes", 4), ("personal", 6)]; ValueError naming what is wrong."""
    blend = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        source, _, slots = entry.partition(":")
        if source not in SOURCES:
            raise ValueError(f"placement source {source!r} is not one of {list(SOURCES)}")
        if not slots.isdigit() or int(slots) < 1:
            raise ValueError(f"placement source {source}: slots must be a whole number >= 1, got {slots!r}")
        blend.append((source, int(slots)))
    return blend


def due_refills(tables: PlacementTables, purchased: np.ndarray, days_ago: np.ndarray, due_within: float,
                overdue: float) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, days until due; negative = overdue), most overdue first: the purchased chronic medicines whose
    latest pack runs out within `due_within` days or ran out at most `overdue` days ago (later, the therapy is
    taken to have stopped). `days_ago[i]` is how long ago `purchased[i]` was bought."""
    valid = (purchased > 0) & (purchased < len(tables.supply_days))
    items, ago = purchased[valid], days_ago[valid].astype(np.float64)
    if len(items) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    order = np.lexsort((ago, items))  # per item, its latest purchase first
    items, ago = items[order], ago[order]
    first = np.r_[True, items[1:] != items[:-1]]
    items, ago = items[first], ago[first]
    supply = tables.supply_days[items].astype(np.float64)
    due_in = supply - ago
    keep = (supply > 0) & (due_in <= due_within) & (due_in >= -overdue)
    items, due_in = items[keep], due_in[keep]
    order = np.lexsort((items, due_in))
    return items[order].astype(np.int64), due_in[order]


def refill_reason(due_in: float) -> str:
    """"refill due in 3 days", "refill due today", "refill 2 days overdue"."""
    days = round(due_in)
    if days == 0:
        return "refill due today"
    if days > 0:
        return f"refill due in {days} day{'s' if days != 1 else ''}"
    return f"refill {-days} day{'s' if days != -1 else ''} overdue"


def substitute_reason(tables: PlacementTables, item: int, viewed: int) -> str:
    """"same composition as Glucofast 500mg Tablet, 38% cheaper" (+ ", generic")."""
    text = f"same composition as {tables.names[viewed] or f'item {viewed}'}"
    was, now = float(tables.price[viewed]), float(tables.price[item])
    if was > 0 and now > 0:
        change = round(100 * (was - now) / was)
        text += f", {change}% cheaper" if change > 0 else f", {-change}% dearer" if change < 0 else ", same price"
    return text + (", generic" if tables.generic[item] else "")


class Candidates:
    """One source's offer to one list, best first. Built once per list and taken from in slices (fill_blend);
    the policy's verdict on each candidate is computed on the first take and kept."""

    __slots__ = ("code", "exclude", "ids", "reason_codes", "scores", "source", "text")

    def __init__(self, ids: np.ndarray, scores: np.ndarray, source: str, code: str = "",
                 text: str | Callable[[int], str] = "", exclude: np.ndarray | None = None) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.source, self.code = source, code or source  # who answered; the reason code shown
        self.text = text  # one reason for all, or candidate index -> reason (built for the chosen only)
        self.exclude = exclude  # replaces the list's exclusions (a refill is a product already bought)
        self.reason_codes: np.ndarray | None = None


class ServedList:
    """One request's list as it is built: what it excludes, the policy and its masks, what was chosen and why."""

    __slots__ = ("_chosen", "_excluded", "codes", "context", "exclude", "ids", "policy", "removed", "scores",
                 "source", "texts")

    def __init__(self, exclude: np.ndarray, policy: SafetyPolicy | None = None,
                 context: RequestContext | None = None) -> None:
        self.exclude = exclude  # ids never to show: seen, in the cart, bought
        self.policy, self.context = policy, context  # the safety policy and this request's masks
        self.removed: dict[int, int] = {}  # item id -> policy reason code, each candidate counted once
        self.ids: list[int] = []
        self.scores: list[float] = []
        self.codes: list[str] = []  # per chosen item: the placement source that put it there
        self.texts: list[str] = []  # per chosen item: why, in words
        self.source = ""  # who placed the first item
        exclude = np.asarray(exclude, dtype=np.int64)
        # By item id: excluded, chosen (an id lookup per candidate instead of a set operation per take), sized
        # for the catalogue when the policy knows it: a caller's id beyond it (a purchase of 2**62) can never be
        # a candidate, and must not size the mask.
        if policy is not None:
            size = policy.tables.n_items + 1
            exclude = exclude[(exclude >= 0) & (exclude < size)]
        else:
            exclude = exclude[exclude >= 0]
            size = int(exclude.max()) + 1 if len(exclude) else 1
        self._excluded = np.zeros(size, dtype=bool)
        self._excluded[exclude] = True
        self._chosen = np.zeros_like(self._excluded)

    def _cover(self, top: int) -> None:
        """Grow the id masks to hold id `top`."""
        if top >= len(self._excluded):
            extra = max(top + 1, 2 * len(self._excluded)) - len(self._excluded)
            self._excluded, self._chosen = np.pad(self._excluded, (0, extra)), np.pad(self._chosen, (0, extra))

    def offer(self, candidates: Candidates, k: int, limit: int | None = None) -> None:
        """Append candidates that are not excluded, already chosen or refused by the policy, up to k in all and
        `limit` from this call; count what the policy refused ahead of the last one taken."""
        if limit is not None:
            k = min(k, len(self.ids) + limit)
        need, ids = k - len(self.ids), candidates.ids
        if need <= 0 or len(ids) == 0:
            return
        if self.policy is None:
            self._cover(int(ids.max()))
        positive = (ids > 0) & (ids < len(self._excluded))  # with a policy: a catalogue id, nothing else
        safe = np.where(positive, ids, 0)
        if candidates.exclude is None:
            keep = positive & ~self._excluded[safe] & ~self._chosen[safe]
        else:
            keep = positive & ~np.isin(ids, candidates.exclude) & ~self._chosen[safe]
        refused = None
        if self.policy is not None:
            if candidates.reason_codes is None:
                candidates.reason_codes = self.policy.reasons(ids, self.context)
            codes = candidates.reason_codes
            refused = keep & (codes != ALLOWED)
            keep &= codes == ALLOWED
        chosen = np.flatnonzero(keep)[:need]
        if refused is not None and refused.any():  # count what the policy took out of the part actually used
            used = chosen[-1] + 1 if len(chosen) == need else len(ids)
            hit = np.flatnonzero(refused[:used])
            for item, reason in zip(ids[hit].tolist(), candidates.reason_codes[hit].tolist(), strict=True):
                self.removed.setdefault(item, reason)
        if not len(chosen):
            return
        if not self.source:
            self.source = candidates.source
        self._chosen[ids[chosen]] = True
        self.ids.extend(ids[chosen].tolist())
        self.scores.extend(candidates.scores[chosen].tolist())
        self.codes.extend([candidates.code] * len(chosen))
        text = candidates.text
        self.texts.extend([text] * len(chosen) if isinstance(text, str) else [text(i) for i in chosen.tolist()])

    def take(self, ids: np.ndarray, scores: np.ndarray, source: str, k: int, *, limit: int | None = None,
             texts: list[str] | str = "", code: str = "", exclude: np.ndarray | None = None) -> None:
        """offer() of a one-off candidate list; `texts` is the reason of each candidate (or one for all)."""
        text = texts if isinstance(texts, str) else texts.__getitem__
        self.offer(Candidates(ids, scores, source, code, text, exclude), k, limit)


def fill_blend(row: ServedList, blend: list[tuple[str, int]], offers: dict[str, Callable[[ServedList], Candidates | None]],
               popular: Callable[[ServedList, int | None], None], k: int) -> None:
    """Each source of the blend up to its slots, then each again without a limit, then popularity.

    `offers[source](row)` builds a source's candidates (once per list; None: it has nothing for this request);
    `popular(row, limit)` walks the popularity list itself (it may be long: taken in chunks).
    """
    made: dict[str, Candidates | None] = {}
    for limited in (True, False):
        for source, slots in blend:
            if len(row.ids) >= k:
                return
            limit = slots if limited else None
            if source == "popular":
                popular(row, limit)
                continue
            if source not in made:
                made[source] = offers[source](row)
            if made[source] is not None:
                row.offer(made[source], k, limit)
    if len(row.ids) < k:
        popular(row, None)
