"""Triton Python-backend model `recommend`: the entry point callers use (GPT4Rec in process, or BLS over gpt4rec).

Copied as model.py into every recommend version folder (pipelines/repository/models.py) beside
its fallback tables: popularity.npy, interactions.npy, catalogue.npy, the safety policy's tables
policy.npz and placements.npz (read by rxrec_pharmacy.py, a copy of pipelines/pharmacy/served.py), the search
index search.npz (read by rxrec_search.py, a copy of pipelines/pharmacy/search.py), when association
rules were trained rules.npz (CSR arrays indptr/indices/data) and, when the champion's training run stored
them, the user vectors users.npz (read by rxrec_users.py, a copy of pipelines/models/user_vectors.py).
Runs inside Triton's Python-backend stub in the serving venv: only the standard library, numpy,
triton_python_backend_utils, onnxruntime (scoring in process) and (for user retrieval above
users_faiss_above_items items) faiss.

Inputs (batch dimension first; 0 is padding everywhere):
  session_ids    int64 [batch, seq]  the session's item ids, oldest first. An empty session is
                                     sent as [[0]] (all padding).
  purchased_ids  int64 [batch, n]    optional: items never to recommend (already bought); used
                                     when the config parameter filter_purchased is "true".
  event_types    int64 [batch, seq]  optional: the event kind of each session item (same shape as
                                     session_ids; 0 unknown, 1 view, 2 click, 3 add_to_cart,
                                     4 purchase). The kinds of the items kept are passed to gpt4rec;
                                     a gpt4rec without the event_types input is asked without them.
  cart_ids       int64 [batch, n]    optional: what is in the cart now (at most max_cart_items):
                                     never recommended again, and the policy checks against it
  prescribed_ids int64 [batch, n]    optional: products the user holds a prescription for; with
                                     purchased_ids they are the records that allow a prescription-
                                     only product of the same molecules
  placement      bytes [batch, 1]    optional: home (default), product (the viewed product is the
                                     session's latest item), cart or search; each blends its own sources
                                     (config parameters placement_<name>, from params.yaml placements)
  purchased_days_ago int64 [batch, n] optional, shape of purchased_ids: days since each purchase (>= 0);
                                     with them the home page offers refills of chronic medicines whose
                                     last pack runs out soon (placements.npz supply_days; config
                                     parameters refill_due_within_days, refill_overdue_days)
  location       bytes [batch, 1]    optional: the delivery postcode ("110017"; b"" unknown): products whose
                                     catalogue deliverable_to lists no prefix of it are dropped (unavailable)
  query          bytes [batch, 1]    the search placement's free text (UTF-8, at most max_query_bytes,
                                     with a letter or digit); b"" on the rows of other placements
  user_id        int64 [batch, 1]    optional: the request's user (0 = anonymous: popular and safe). A user the
                                     stored vectors hold gets their best items as the `history` source (exact,
                                     or faiss HNSW from users_faiss_above_items catalogue items on), and on
                                     search, without a session to re-rank by, the query's products re-ranked
                                     by that vector. A user they do not hold (new since training, or an id
                                     from another system) is refused when users_unknown is "refuse" (the
                                     default: send 0 for them) and served as anonymous when "anonymous"
Outputs:
  item_ids    int64 [batch, k]   best first; -1 pads when fewer than k items can be offered
  scores      float32 [batch, k] the answering source's own score (comparable within a source)
  source      bytes [batch, 1]   who placed the first item: b"gpt4rec", b"user_vectors", b"rules", b"search",
                                 b"substitutes", b"refills" or b"popularity"
  unknown_ids int64 [batch, m]   session ids dropped as unknown (> n_items or not in the
                                 catalogue), 0-padded; [0] when none were dropped
  policy_removed int64 [batch, 5] distinct candidates the safety policy removed ahead of the last
                                 item shown (what would have been shown without it), per reason
                                 in the order of rxrec_pharmacy.REASONS (restricted, unavailable,
                                 rx_without_record, interacts, duplicate_molecule)
  short_reason bytes [batch, 1]  b"" for a full list; why it is shorter than k otherwise
  reason_codes bytes [batch, k]  per item the source that placed it: refills, personal, history, complements,
                                 substitutes, matches or popular (b"" on padding)
  reasons      bytes [batch, k]  per item, why in words: "bought together with X", "same
                                 composition as X, 38% cheaper, generic", ...

How a row is answered: unknown ids are dropped (reported, not an error). If a remaining item is
warm (>= warm_min_interactions training interactions), GPT4Rec scores the latest gpt4rec_max_len
known items: with config parameter gpt4rec_scoring "in_process", the version's own copy of the
deployed model (gpt4rec.onnx, run by onnxruntime in this process); with "bls", the gpt4rec model
through BLS. Otherwise the session is cold and association rules fired by its latest items answer;
with no rule, popularity does. The session's items, (optionally) purchased_ids and ids outside the
catalogue are filtered out everywhere; a source that leaves fewer than k items is topped up by the
next one. Every source's candidates pass the safety policy (rxrec_pharmacy: restricted,
unavailable, prescription-only without a record, interacting with the session or cart, a molecule
already in the cart); what it removes is refilled from the next candidates, popularity walking the
whole catalogue if it must. If the gpt4rec call fails, the row falls back the same way and the log says why.
Negative ids are caller bugs (padding is 0) and get an INVALID_ARG error.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from rxrec_backend import (
    EVENT_KINDS,
    N_ITEMS,
    OUTPUT_IDS,
    OUTPUT_SCORES,
    TOP_K,
    ModelArgs,
    OnnxTopK,
    input_array,
    not_int64,
    refusal,
)
from rxrec_backend import EVENT_TYPES_NAME as EVENT_TYPES_INPUT
from rxrec_backend import INPUT_NAME as GPT4REC_INPUT
from rxrec_pharmacy import (
    MAX_CART_ITEMS,
    PLACEMENTS,
    PLACEMENTS_FILE,
    POLICY_FILE,
    REASONS,
    Candidates,
    PlacementTables,
    PolicyRules,
    SafetyPolicy,
    SafetyTables,
    ServedList,
    due_refills,
    fill_blend,
    location_problem,
    parse_blend,
    refill_reason,
    substitute_reason,
)
from rxrec_search import SEARCH_FILE, SearchIndex, query_problem
from rxrec_users import USERS_FILE, UserRetrieval, UserVectors

SESSION_INPUT = "session_ids"
PURCHASED_INPUT = "purchased_ids"
CART_INPUT = "cart_ids"
PRESCRIBED_INPUT = "prescribed_ids"
PURCHASED_DAYS_INPUT = "purchased_days_ago"
USER_INPUT = "user_id"
SCORER_FILE = "gpt4rec.onnx"  # gpt4rec's model.onnx, copied in at deploy when recommend scores in process
POPULAR_CHUNK = 64  # popularity is walked in chunks from this long, doubling, until the list is full
MAX_EVENT_KIND = 4  # purchase; config parameter "event_kinds" overrides
KINDS_RETRY_S = 60.0  # after gpt4rec refused event_types, ask without them this long
OUTPUT_SOURCE = "source"
OUTPUT_UNKNOWN = "unknown_ids"
OUTPUT_REMOVED = "policy_removed"
OUTPUT_SHORT = "short_reason"
OUTPUT_REASON_CODES = "reason_codes"
OUTPUT_REASONS = "reasons"
PLACEMENT_INPUT = "placement"
QUERY_INPUT = "query"
LOCATION_INPUT = "location"
DEFAULT_PLACEMENT = "home"
ADD_TO_CART_KIND = 3  # the event kind gpt4rec reads for cart items on the cart page
PERSONAL_TEXT = "picked for this session by the personal model"
HISTORY_TEXT = "picked for you from your history with us"
POPULAR_TEXT = "popular now"


def _ids(request: object, name: str, required: bool) -> tuple[np.ndarray | None, str | None]:
    """(ids, problem) of one int64 [batch, n] input; negative ids are a problem."""
    x = input_array(request, name)
    if x is None:
        return None, (f"missing input {name!r}; send [[0]] for an empty session" if required else None)
    if (problem := not_int64(x, name)) is not None:
        return None, problem
    if x.ndim != 2 or x.shape[0] == 0:
        return None, f"{name} must be 2-D [batch, n] with batch >= 1, got shape {list(x.shape)}"
    if x.size and int(x.min()) < 0:
        row = int(np.argwhere(x < 0)[0][0])
        if name == EVENT_TYPES_INPUT:
            return None, f"{name} row {row} contains kind {int(x.min())}; kinds are >= 0 (0 unknown)"
        if name == PURCHASED_DAYS_INPUT:
            return None, f"{name} row {row} contains {int(x.min())} days; a purchase lies in the past (>= 0)"
        return None, f"{name} row {row} contains negative id {int(x.min())}: item ids are >= 1 and 0 is padding"
    return x, None


def _text(value: object) -> str:
    """A BYTES element as text (undecodable bytes replaced: the caller's check then names it)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Row(ServedList):
    """One session being answered: what is known about it, and the list being built (ServedList)."""

    __slots__ = ("bought", "bought_days", "cart", "history", "kinds", "known", "model_items", "personal", "placement",
                 "query", "unknown", "user_row", "warm")

    def __init__(self, known: np.ndarray, unknown: np.ndarray, exclude: np.ndarray,
                 kinds: np.ndarray | None = None, policy: SafetyPolicy | None = None, context: object = None,
                 placement: str = "home", cart: np.ndarray | None = None, query: str = "") -> None:
        super().__init__(exclude, policy, context)
        self.known, self.unknown = known, unknown
        self.query = query  # the search placement's text ("" elsewhere)
        self.bought = self.bought_days = np.zeros(0, np.int64)  # purchases and their days ago (refills)
        self.kinds = kinds  # event kind of each known item (None: the caller sent none)
        self.placement = placement
        self.cart = np.zeros(0, np.int64) if cart is None else cart  # known cart items, in the order sent
        # What gpt4rec reads: the session, and on the cart page the cart after it (added to cart last).
        self.model_items = np.concatenate([known, self.cart]) if placement == "cart" else known
        self.personal: tuple[np.ndarray, np.ndarray] | None = None  # gpt4rec's offerable top-k, once asked
        self.warm = False  # gpt4rec has learned at least one of model_items (set by the model, which knows)
        self.user_row = -1  # the request's user in the stored vectors (-1: anonymous, or not held)
        self.history: tuple[np.ndarray, np.ndarray] | None = None  # that user's best items, once retrieved


class TritonPythonModel:
    """Drops unknown ids, asks gpt4rec for warm sessions (one BLS batch per execute), falls back."""

    def initialize(self, args: dict) -> None:
        """Read the config parameters and the fallback tables of this version folder."""
        model = ModelArgs(args)
        self.name, param = model.name, model.param
        self.k = param(TOP_K, int)
        self.gpt4rec = param("gpt4rec_model", str, "gpt4rec")
        self.max_len = param("gpt4rec_max_len", int)
        self.max_batch = max(1, param("gpt4rec_max_batch_size", int, 64))
        self.filter_purchased = str(param("filter_purchased", str, "true")).lower() in ("true", "1", "yes")
        self.warm_min = param("warm_min_interactions", int, 1)
        self.recent = param("rules_recent_items", int, 3)
        self.decay = param("rules_decay", float, 0.5)
        self.max_kind = param(EVENT_KINDS, int, MAX_EVENT_KIND)
        self.max_cart = param("max_cart_items", int, MAX_CART_ITEMS)
        self.search_candidates = param("search_candidates", int, 50)
        self.search_personal_weight = param("search_personal_weight", float, 0.5)
        self.max_query_bytes = param("max_query_bytes", int, 256)
        self.refill_due_within = param("refill_due_within_days", int, 7)
        self.refill_overdue = param("refill_overdue_days", int, 30)
        self.user_candidates = param("users_candidates", int, 100)
        self.refuse_unknown_users = param("users_unknown", str, "refuse") == "refuse"
        try:  # unset: every check (a pharmacy keeps them all on)
            self.rules_of_policy = PolicyRules.from_checks(param("policy_checks", str, PolicyRules().checks()))
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        self.kinds_refused_until = 0.0  # monotonic time until which gpt4rec is asked without kinds

        folder = model.folder("popularity.npy")

        def table(name: str, load: Any = None) -> Any:
            """A table file of this version folder (np.load, or a tables class's load); a clear error if absent
            or unusable, so a version without its safety tables never serves."""
            path = folder / name
            if not path.is_file():
                raise pb_utils.TritonModelException(f"{self.name}: {name} not found in {folder}")
            try:
                return load(path) if load else np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc

        self.popularity = table("popularity.npy").astype(np.float32)
        self.interactions = table("interactions.npy").astype(np.int64)
        self.catalogue = table("catalogue.npy").astype(bool)
        self.n_items = len(self.popularity) - 1
        expected = param("n_items", int)
        for label, array in (("interactions", self.interactions), ("catalogue", self.catalogue)):
            if len(array) != self.n_items + 1:
                raise pb_utils.TritonModelException(
                    f"{self.name}: {label}.npy has {len(array)} rows, popularity.npy has {self.n_items + 1}")
        if expected != self.n_items:
            raise pb_utils.TritonModelException(
                f"{self.name}: config n_items={expected} but the tables cover {self.n_items} items")
        self.catalogue[0] = False
        self.rules = None
        if (folder / "rules.npz").is_file():
            with np.load(folder / "rules.npz", allow_pickle=False) as z:
                self.rules = (z["indptr"].astype(np.int64), z["indices"].astype(np.int64),
                              z["data"].astype(np.float32))
            if len(self.rules[0]) != self.n_items + 2:
                raise pb_utils.TritonModelException(f"{self.name}: rules.npz does not cover n_items={self.n_items}")
        tables = table(POLICY_FILE, SafetyTables.load)
        if tables.n_items != self.n_items:
            raise pb_utils.TritonModelException(
                f"{self.name}: {POLICY_FILE} covers {tables.n_items} items, the tables {self.n_items}")
        self.policy = SafetyPolicy(tables, self.rules_of_policy)
        self.placement_tables = table(PLACEMENTS_FILE, PlacementTables.load)
        try:
            self.blends = {name: parse_blend(param(f"placement_{name}", str)) for name in PLACEMENTS}
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        if len(self.placement_tables.names) != self.n_items + 1:
            raise pb_utils.TritonModelException(
                f"{self.name}: {PLACEMENTS_FILE} covers {len(self.placement_tables.names) - 1} items, not {self.n_items}")
        self.search = table(SEARCH_FILE, SearchIndex.load)
        if int(self.search.n_items) != self.n_items:
            raise pb_utils.TritonModelException(
                f"{self.name}: {SEARCH_FILE} covers {int(self.search.n_items)} items, not {self.n_items}")
        self.users, self.user_retrieval = None, None
        if (folder / USERS_FILE).is_file():
            self.users = table(USERS_FILE, UserVectors.load)
            if self.users.n_items != self.n_items:
                raise pb_utils.TritonModelException(
                    f"{self.name}: {USERS_FILE} scores {self.users.n_items} items, not {self.n_items}")
            self.user_retrieval = UserRetrieval(self.users, self.catalogue, param("users_faiss_above_items", int, 50000),
                                                param("users_hnsw_m", int, 32), param("users_hnsw_ef_search", int, 128))
        self.scorer = self._scorer(model, param("gpt4rec_scoring", str, "bls"))
        items = np.flatnonzero(self.catalogue)
        self.popular_order = items[np.lexsort((items, -self.popularity[items]))]
        pb_utils.Logger.log_info(
            f"{self.name}: loaded (n_items={self.n_items}, k={self.k}, "
            + (f"scores with its copy of gpt4rec ({SCORER_FILE}) in process" if self.scorer else f"calls {self.gpt4rec!r}")
            + f" with up to {self.max_len} items, "
            f"rules={'yes' if self.rules is not None else 'no'}, "
            f"filter_purchased={self.filter_purchased}, warm_min_interactions={self.warm_min}, policy: "
            f"{self.rules_of_policy}, {tables.n_molecules} molecules, {len(tables.interacting_pairs)} interacting pairs, "
            f"blends {self.blends}, search over {len(self.search.words)} words, "
            + ("no stored user vectors)" if self.users is None else f"{len(self.users.user_ids)} stored user vectors, "
               f"{'faiss HNSW' if self.user_retrieval.approximate else 'exact'} retrieval)")
        )

    def _scorer(self, model: ModelArgs, scoring: str) -> OnnxTopK | None:
        """gpt4rec's exported model in this process ("in_process": the version folder's copy of it), or None
        to call the gpt4rec model through BLS ("bls": a GPU node's TensorRT engine, or a shared instance)."""
        if scoring == "bls":
            return None
        if scoring != "in_process":
            raise pb_utils.TritonModelException(f"{self.name}: config parameter gpt4rec_scoring={scoring!r}; "
                                                "use in_process or bls")
        path = model.folder(SCORER_FILE) / SCORER_FILE
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{self.name}: gpt4rec_scoring=in_process but {SCORER_FILE} is not in "
                                                f"{path.parent}: redeploy (it copies gpt4rec's model.onnx in)")
        scorer = OnnxTopK(path, model.param("scorer_threads", int, 1))
        if (problem := scorer.contract_problem()) is not None:
            raise pb_utils.TritonModelException(f"{self.name}: {SCORER_FILE}: {problem}")
        scored = scorer.metadata.get(N_ITEMS, "")
        if scored != str(self.n_items):
            raise pb_utils.TritonModelException(f"{self.name}: {SCORER_FILE} scores n_items={scored or '?'} but the "
                                                f"tables cover {self.n_items}: the two were not deployed together")
        kinds = scorer.metadata.get(EVENT_KINDS, "")
        self.scorer_kinds = int(kinds) if kinds.isdigit() else 0
        return scorer

    # ------------------------------------------------------------------ sources

    def _complements(self, row: _Row) -> Candidates | None:
        """Rules fired by the cart (cart placement) or the latest known items, newest weighted most; each item
        says which of them it is bought together with (the one that contributed most)."""
        fired_by = row.cart if row.placement == "cart" and len(row.cart) else row.known
        if self.rules is None or len(fired_by) == 0:
            return None
        indptr, indices, data = self.rules
        cols, vals, firing = [], [], []
        for age, item in enumerate(fired_by[-self.recent:][::-1]):
            lo, hi = indptr[item], indptr[item + 1]
            cols.append(indices[lo:hi])
            vals.append(data[lo:hi] * (self.decay ** age))
            firing.append(np.full(hi - lo, item, dtype=np.int64))
        cols_all = np.concatenate(cols)
        if len(cols_all) == 0:
            return None
        vals_all, firing_all = np.concatenate(vals), np.concatenate(firing)
        ids, inverse = np.unique(cols_all, return_inverse=True)
        scores = np.bincount(inverse, weights=vals_all).astype(np.float32)
        strongest = np.lexsort((-vals_all, inverse))  # per candidate, its largest contribution first
        first = np.unique(inverse[strongest], return_index=True)[1]
        source_of = firing_all[strongest[first]]
        ok = (scores > 0) & self.catalogue[ids]
        ids, scores, source_of = ids[ok], scores[ok], source_of[ok]
        order = np.lexsort((ids, -scores))
        names, source_of = self.placement_tables.names, source_of[order]
        return Candidates(ids[order], scores[order], "rules", "complements",
                          lambda j: f"bought together with {names[source_of[j]] or f'item {source_of[j]}'}")

    def _substitutes(self, row: _Row) -> Candidates | None:
        """The viewed product's (the session's latest item) substitutes, cheapest first."""
        if row.placement != "product" or len(row.known) == 0:
            return None
        viewed = int(row.known[-1])
        ids = self.placement_tables.substitutes(viewed)
        if not len(ids):
            return None
        tables = self.placement_tables
        return Candidates(ids, tables.price[ids], "substitutes", "substitutes",
                          lambda j: substitute_reason(tables, int(ids[j]), viewed))

    def _matches(self, row: _Row) -> Candidates | None:
        """The search query's products, re-ranked: relevance (the best match is 1) plus a bonus for those the
        personal model picks for this session, larger the higher it ranks them."""
        if row.placement != "search" or not row.query:
            return None
        ids, scores = self.search.search(row.query, self.search_candidates)
        if len(ids) == 0:
            return None
        picks, why = None, ", and the personal model picks it for this session"
        if self.search_personal_weight > 0 and row.personal is not None and len(row.personal[0]):
            picks = row.personal[0]
        elif self.search_personal_weight > 0 and row.user_row >= 0:  # no session to go by: the user's vector
            picks = ids[np.argsort(-self.users.scores(row.user_row, ids), kind="stable")][:self.k]
            why = ", and it suits your history with us"
        rank = np.zeros(len(ids))
        if picks is not None:
            position = {int(item): p for p, item in enumerate(picks.tolist())}
            rank = np.array([1.0 - position[i] / len(picks) if i in position else 0.0 for i in ids.tolist()])
        final = scores / scores[0] + self.search_personal_weight * rank
        order = np.lexsort((ids, -final))
        said, picked = f'matches "{row.query.strip()[:40]}"', rank[order] > 0
        return Candidates(ids[order], final[order], "search", "matches",
                          lambda j: said + (why if picked[j] else ""))

    def _refills(self, row: _Row) -> Candidates | None:
        """The request's chronic medicines whose latest pack runs out soon, most overdue first: a product already
        bought, so only what is in the session or the cart is excluded."""
        if len(row.bought_days) == 0:
            return None
        ids, due_in = due_refills(self.placement_tables, row.bought, row.bought_days, self.refill_due_within,
                                  self.refill_overdue)
        if not len(ids):
            return None
        return Candidates(ids, due_in, "refills", "refills", lambda j: refill_reason(float(due_in[j])),
                          exclude=np.union1d(row.known, row.cart))

    def _history(self, row: _Row) -> Candidates | None:
        """A known user's best items by their stored vector (retrieved for the batch in _user_histories)."""
        if row.history is None:
            return None
        return Candidates(row.history[0], row.history[1], "user_vectors", "history", HISTORY_TEXT)

    def _personal(self, row: _Row) -> Candidates | None:
        if row.personal is None:
            return None
        ids, scores = row.personal
        return Candidates(ids, scores, "gpt4rec", "personal", PERSONAL_TEXT)

    def _blend(self, row: _Row) -> None:
        """Each source of the row's placement up to its slots, then each again without limit, then popularity."""
        fill_blend(row, self.blends[row.placement], {
            "personal": self._personal, "history": self._history, "complements": self._complements,
            "substitutes": self._substitutes, "matches": self._matches, "refills": self._refills},
            self._popularity, self.k)

    def _popularity(self, row: _Row, limit: int | None) -> None:
        """Top up from the most popular products, walking on while the policy or exclusions refuse them."""
        k = self.k if limit is None else min(self.k, len(row.ids) + limit)
        start, size = 0, max(POPULAR_CHUNK, 2 * (self.k + len(row.exclude)))
        while len(row.ids) < k and start < len(self.popular_order):
            ids = self.popular_order[start:start + size]
            row.take(ids, self.popularity[ids], "popularity", k, texts=POPULAR_TEXT, code="popular")
            start, size = start + size, 2 * size

    def _gpt4rec(self, rows: list[_Row]) -> None:
        """One BLS call per max_batch warm sessions; failed calls leave the rows to the fallbacks."""
        for lo in range(0, len(rows), self.max_batch):
            chunk = rows[lo:lo + self.max_batch]
            latest = [row.model_items[-self.max_len:] for row in chunk]
            batch = np.zeros((len(chunk), max(len(x) for x in latest)), dtype=np.int64)
            kinds = None
            if any(row.kinds is not None for row in chunk):
                kinds = np.zeros_like(batch)
            for r, items in enumerate(latest):
                batch[r, batch.shape[1] - len(items):] = items
                if kinds is not None and chunk[r].kinds is not None:
                    kinds[r, batch.shape[1] - len(items):] = self._model_kinds(chunk[r])[-self.max_len:]
            try:
                ids, scores = self._call_gpt4rec(batch, kinds)
            except Exception as exc:  # noqa: BLE001 - the fallbacks answer, the log says why
                pb_utils.Logger.log_warn(f"{self.name}: {self.gpt4rec} failed for {len(chunk)} session(s), "
                                         f"answering from rules/popularity: {exc}")
                continue
            offerable = (ids > 0) & (ids <= self.n_items)
            offerable[offerable] = self.catalogue[ids[offerable]]  # never a product no longer sold
            for r, row in enumerate(chunk):
                row.personal = (ids[r][offerable[r]], scores[r][offerable[r]])

    def _user_histories(self, rows: list[_Row]) -> None:
        """Each known user's best catalogue items, one retrieval (matrix product or faiss search) for the batch."""
        if not rows:
            return
        vectors = self.users.vectors[np.array([row.user_row for row in rows], dtype=np.int64)]
        ids, scores = self.user_retrieval.top(vectors, self.user_candidates)
        for r, row in enumerate(rows):
            keep = ids[r] > 0
            row.history = (ids[r][keep], scores[r][keep])

    @staticmethod
    def _model_kinds(row: _Row) -> np.ndarray:
        if row.placement != "cart":
            return row.kinds
        return np.concatenate([row.kinds, np.full(len(row.cart), ADD_TO_CART_KIND, dtype=np.int64)])

    def _call_gpt4rec(self, batch: np.ndarray, kinds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """gpt4rec's top-k; kinds go along when given, and again without them if this gpt4rec takes none."""
        if kinds is not None and time.monotonic() >= self.kinds_refused_until:
            try:
                return self._call_gpt4rec_once(batch, kinds)
            except RuntimeError as exc:  # Triton: "expected 1 inputs but got 2 ... ['event_types', ...]"
                if EVENT_TYPES_INPUT not in str(exc) or "expected" not in str(exc):
                    raise
                # Do not pay a refused call per batch; look again later (a new gpt4rec version may take them).
                self.kinds_refused_until = time.monotonic() + KINDS_RETRY_S
                pb_utils.Logger.log_warn(f"{self.name}: {self.gpt4rec} takes no {EVENT_TYPES_INPUT}; asking it "
                                         f"without event kinds for the next {KINDS_RETRY_S:.0f}s")
        return self._call_gpt4rec_once(batch, None)

    def _call_gpt4rec_once(self, batch: np.ndarray, kinds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.scorer is not None:
            return self._score_in_process(batch, kinds)
        inputs = [pb_utils.Tensor(GPT4REC_INPUT, batch)]
        if kinds is not None:
            inputs.append(pb_utils.Tensor(EVENT_TYPES_INPUT, kinds))
        kwargs = {"model_name": self.gpt4rec, "inputs": inputs,
                  "requested_output_names": [OUTPUT_IDS, OUTPUT_SCORES]}
        try:  # outputs in CPU memory even when gpt4rec runs on a GPU
            request = pb_utils.InferenceRequest(
                **kwargs, preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
        except (AttributeError, TypeError):
            request = pb_utils.InferenceRequest(**kwargs)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(response.error().message())
        ids = pb_utils.get_output_tensor_by_name(response, OUTPUT_IDS).as_numpy()
        scores = pb_utils.get_output_tensor_by_name(response, OUTPUT_SCORES).as_numpy()
        return ids.astype(np.int64), scores.astype(np.float32)

    def _score_in_process(self, batch: np.ndarray, kinds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The scorer's top-k; kinds go along when it reads them (kinds it does not know are unknown, 0)."""
        if self.scorer.takes_kinds:
            kinds = np.zeros_like(batch) if kinds is None else np.where(kinds <= self.scorer_kinds, kinds, 0)
        ids, scores = self.scorer.top_k(batch, kinds if self.scorer.takes_kinds else None)
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ requests

    def _rows(self, sessions: np.ndarray, purchased: np.ndarray | None, kinds: np.ndarray | None = None,
              cart: np.ndarray | None = None, prescribed: np.ndarray | None = None,
              placements: list[str] | None = None, queries: list[str] | None = None,
              days_ago: np.ndarray | None = None, locations: list[str] | None = None,
              user_rows: np.ndarray | None = None) -> list[_Row]:
        rows = []
        for r, session in enumerate(sessions):
            present = session > 0
            items = session[present]
            unknown_mask = items > self.n_items
            unknown_mask[~unknown_mask] = ~self.catalogue[items[~unknown_mask]]
            known = items[~unknown_mask]
            known_kinds = None if kinds is None else kinds[r][present][~unknown_mask]
            cart_items = np.zeros(0, np.int64) if cart is None else cart[r][cart[r] > 0]
            cart_items = cart_items[(cart_items <= self.n_items)]
            cart_items = cart_items[self.catalogue[cart_items]]
            placement = placements[r] if placements else DEFAULT_PLACEMENT
            bought = np.zeros(0, np.int64) if purchased is None else purchased[r][purchased[r] > 0]
            records = bought if prescribed is None else np.union1d(bought, prescribed[r][prescribed[r] > 0])
            exclude = np.union1d(known, cart_items)
            if self.filter_purchased:
                exclude = np.union1d(exclude, bought)
            if placement == "product" and len(known):  # the product page of an rx medicine: its molecules count
                records = np.union1d(records, known[-1:])  # (substitutes may show; other rx products may not)
            context = self.policy.context(session=known, cart=cart_items, records=records,
                                          location=locations[r] if locations else "")
            row = _Row(known, items[unknown_mask], exclude, known_kinds, self.policy, context, placement, cart_items,
                       queries[r] if queries else "")
            if days_ago is not None and purchased is not None:
                row.bought, row.bought_days = bought, days_ago[r][purchased[r] > 0]
            if user_rows is not None:
                row.user_row = int(user_rows[r])
            row.warm = bool(len(row.model_items)) and bool((self.interactions[row.model_items] >= self.warm_min).any())
            rows.append(row)
        return rows

    def _response(self, rows: list[_Row]) -> object:
        ids = np.full((len(rows), self.k), -1, dtype=np.int64)
        scores = np.zeros((len(rows), self.k), dtype=np.float32)
        width = max(1, max(len(row.unknown) for row in rows))
        unknown = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            ids[r, :len(row.ids)] = row.ids
            scores[r, :len(row.scores)] = row.scores
            unknown[r, :len(row.unknown)] = row.unknown
        source = np.array([[(row.source or "popularity").encode()] for row in rows], dtype=np.object_)
        removed = np.zeros((len(rows), len(REASONS)), dtype=np.int64)
        for r, row in enumerate(rows):
            if row.removed:
                removed[r] = np.bincount(list(row.removed.values()), minlength=len(REASONS) + 1)[1:]
        short = np.array([[self._short_reason(row, removed[r]).encode()] for r, row in enumerate(rows)],
                         dtype=np.object_)
        codes = np.full((len(rows), self.k), b"", dtype=np.object_)
        texts = np.full((len(rows), self.k), b"", dtype=np.object_)
        for r, row in enumerate(rows):
            codes[r, :len(row.codes)] = [c.encode() for c in row.codes]
            texts[r, :len(row.texts)] = [t.encode() for t in row.texts]
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(OUTPUT_IDS, ids), pb_utils.Tensor(OUTPUT_SCORES, scores),
            pb_utils.Tensor(OUTPUT_SOURCE, source), pb_utils.Tensor(OUTPUT_UNKNOWN, unknown),
            pb_utils.Tensor(OUTPUT_REMOVED, removed), pb_utils.Tensor(OUTPUT_SHORT, short),
            pb_utils.Tensor(OUTPUT_REASON_CODES, codes), pb_utils.Tensor(OUTPUT_REASONS, texts)])

    def _short_reason(self, row: _Row, removed: np.ndarray) -> str:
        """"" for a full list; otherwise what ran out (the whole catalogue was walked by then)."""
        if len(row.ids) >= self.k:
            return ""
        refused = ", ".join(f"{reason} {int(n)}" for reason, n in zip(REASONS, removed, strict=True) if n)
        return (f"{len(row.ids)} of {self.k}: no further product of the catalogue may be offered to this request "
                f"({len(row.exclude)} excluded as seen, in the cart or bought"
                + (f"; the safety policy removed {refused})" if refused else ")"))

    def _kinds_problem(self, sessions: np.ndarray, kinds: np.ndarray) -> str | None:
        """Why event_types does not fit session_ids, or None (negatives were already caught)."""
        if kinds.shape != sessions.shape:
            return (f"{EVENT_TYPES_INPUT} must have the shape of {SESSION_INPUT} {list(sessions.shape)} "
                    f"(one kind per session item), got {list(kinds.shape)}")
        if kinds.size and int(kinds.max()) > self.max_kind:
            return (f"{EVENT_TYPES_INPUT} contains kind {int(kinds.max())}; kinds are 0..{self.max_kind} "
                    "(0 unknown, 1 view, 2 click, 3 add_to_cart, 4 purchase)")
        return None

    def _users(self, request: object, batch: int | None) -> tuple[np.ndarray | None, str | None]:
        """(each row's user in the stored vectors, -1 for none; problem): absent means every row is anonymous.
        Without stored vectors (a champion that stored none) the ids are read and not used."""
        x = input_array(request, USER_INPUT)
        if x is None or batch is None:
            return None, None
        if (problem := not_int64(x, USER_INPUT)) is not None:
            return None, problem
        if x.shape != (batch, 1):
            return None, f"{USER_INPUT} must be [batch, 1] with one user id per session, got {list(x.shape)}"
        if int(x.min()) < 0:
            row = int(np.argmin(x[:, 0]))
            return None, f"{USER_INPUT} row {row} is {int(x[row, 0])}: user ids are >= 1, and 0 is an anonymous user"
        if self.users is None:
            return None, None
        rows = self.users.rows(x[:, 0])
        unknown = np.flatnonzero((rows < 0) & (x[:, 0] > 0))
        if len(unknown) and self.refuse_unknown_users:
            r = int(unknown[0])
            return None, (f"{USER_INPUT} row {r} is user {int(x[r, 0])}, who has no stored vector (the served model "
                          f"holds {len(self.users.user_ids)} users); send 0 for a user the model has not seen, who gets "
                          "the popular, safe lists (or deploy with users.unknown: anonymous)")
        return rows, None

    @staticmethod
    def _column(request: object, name: str, batch: int | None, each: str) -> tuple[np.ndarray | None, str | None]:
        """(one raw value per row, problem) of an optional BYTES [batch, 1] input; (None, None) when absent."""
        x = input_array(request, name)
        if x is None or batch is None:
            return None, None
        if x.ndim != 2 or x.shape[0] != batch or x.shape[1] != 1:
            return None, f"{name} must be [batch, 1] with one {each} per session, got {list(x.shape)}"
        return x[:, 0], None

    def _placements(self, request: object, batch: int | None) -> tuple[list[str] | None, str | None]:
        """(placement per row, problem): absent means every row is home."""
        values, problem = self._column(request, PLACEMENT_INPUT, batch, "placement")
        if values is None:
            return None, problem
        names = [_text(v) for v in values]
        bad = [n for n in names if n not in PLACEMENTS]
        if bad:
            return None, f"{PLACEMENT_INPUT} {bad[0][:40]!r} is not a placement; placements are {list(PLACEMENTS)}"
        return names, None

    def _locations(self, request: object, batch: int | None) -> tuple[list[str] | None, str | None]:
        """(postcode per row, problem): b"" is an unknown location."""
        values, problem = self._column(request, LOCATION_INPUT, batch, "postcode")
        if values is None:
            return None, problem
        codes = [_text(v) for v in values]
        for r, code in enumerate(codes):
            if (problem := location_problem(code)) is not None:
                return None, f"{LOCATION_INPUT} row {r} {problem}"
        return codes, None

    def _queries(self, request: object, placements: list[str] | None) -> tuple[list[str] | None, str | None]:
        """(query per row, problem): the search rows each need a query, the other rows send none (b"")."""
        rows = placements or []
        if input_array(request, QUERY_INPUT) is None:
            searching = [r for r, name in enumerate(rows) if name == "search"]
            if searching:
                return None, (f"row {searching[0]} asks the search placement but the request has no {QUERY_INPUT!r} "
                              "input: send the query text as BYTES [batch, 1]")
            return None, None
        values, problem = self._column(request, QUERY_INPUT, len(rows), 'query (b"" off the search placement)')
        if values is None:
            return None, problem
        queries = []
        for r, (raw, name) in enumerate(zip(values, rows, strict=True)):
            if name != "search":
                if len(raw if isinstance(raw, bytes) else str(raw)):
                    return None, f"{QUERY_INPUT} row {r} is read by the search placement only; row {r} is {name!r}"
                queries.append("")
                continue
            text, problem = query_problem(raw, self.max_query_bytes)
            if problem is not None:
                return None, f"{QUERY_INPUT} row {r} {problem}"
            queries.append(text)
        return queries, None

    def execute(self, requests: list) -> list:
        """Validate every request, ask gpt4rec once for all warm sessions, then fill from the fallbacks."""
        responses: list = [None] * len(requests)
        per_request: dict[int, list[_Row]] = {}
        for i, request in enumerate(requests):
            sessions, problem = _ids(request, SESSION_INPUT, required=True)
            purchased, problem2 = _ids(request, PURCHASED_INPUT, required=False)
            kinds, problem3 = _ids(request, EVENT_TYPES_INPUT, required=False)
            cart, problem4 = _ids(request, CART_INPUT, required=False)
            prescribed, problem5 = _ids(request, PRESCRIBED_INPUT, required=False)
            placements, problem6 = self._placements(request, None if sessions is None else sessions.shape[0])
            queries, problem7 = (None, None) if problem6 else self._queries(request, placements)
            days_ago, problem8 = _ids(request, PURCHASED_DAYS_INPUT, required=False)
            locations, problem9 = self._locations(request, None if sessions is None else sessions.shape[0])
            user_rows, problem10 = self._users(request, None if sessions is None else sessions.shape[0])
            problem = (problem or problem2 or problem3 or problem4 or problem5 or problem6 or problem7 or problem8
                       or problem9 or problem10)
            if problem is None and days_ago is not None and (purchased is None or days_ago.shape != purchased.shape):
                problem = (f"{PURCHASED_DAYS_INPUT} must have the shape of {PURCHASED_INPUT} "
                           f"{None if purchased is None else list(purchased.shape)} (one age per purchase), got "
                           f"{list(days_ago.shape)}")
            for name, extra in ((CART_INPUT, cart), (PRESCRIBED_INPUT, prescribed)):
                if problem is None and extra is not None and extra.shape[0] != sessions.shape[0]:
                    problem = (f"{name} has {extra.shape[0]} rows but {SESSION_INPUT} has {sessions.shape[0]}: "
                               "send one row per session")
            if problem is None and cart is not None and int((cart > 0).sum(axis=1).max()) > self.max_cart:
                row = int(np.argmax((cart > 0).sum(axis=1)))
                problem = (f"{CART_INPUT} row {row} holds {int((cart[row] > 0).sum())} items; a cart holds at most "
                           f"{self.max_cart} (config parameter max_cart_items)")
            if problem is None and purchased is not None and purchased.shape[0] != sessions.shape[0]:
                problem = (f"{PURCHASED_INPUT} has {purchased.shape[0]} rows but {SESSION_INPUT} has "
                           f"{sessions.shape[0]}: send one row per session")
            if problem is None and kinds is not None:
                problem = self._kinds_problem(sessions, kinds)
            if problem is not None:
                responses[i] = refusal(problem)
                continue
            per_request[i] = self._rows(sessions, purchased, kinds, cart, prescribed, placements, queries, days_ago,
                                        locations, user_rows)
        all_rows = [row for rows in per_request.values() for row in rows]
        self._gpt4rec([row for row in all_rows if row.warm and any(
            source in ("personal", "matches") for source, _ in self.blends[row.placement])])
        self._user_histories([row for row in all_rows if row.user_row >= 0 and any(
            source == "history" for source, _ in self.blends[row.placement])])
        for row in all_rows:
            self._blend(row)
            if len(row.unknown):
                pb_utils.Logger.log_verbose(f"{self.name}: dropped unknown item ids {row.unknown.tolist()}")
        for i, rows in per_request.items():
            responses[i] = self._response(rows)
        return responses

    def finalize(self) -> None:
        """Nothing to release: the tables go with the stub process."""
