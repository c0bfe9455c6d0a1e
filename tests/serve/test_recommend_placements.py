"""Placements and the safety policy as served: 10,000 simulated requests per placement through `recommend`.

A generated world's catalogue (rx flags, restricted, out-of-stock and regionally shipped products,
compositions with their spelling variants) and the shipped interaction table, a real GPT4Rec export
(untrained: it proposes prescription-only and interacting products freely, which is what the policy must
stop), association rules and popularity from the world's events, on the real tritonserver. Requests are the
world's own sessions with random carts, purchase (with ages) or prescription records and delivery
postcodes. Every answer is checked by an independent reading of the catalogue text and the CSV (not the
policy's code): no prescription-only product without a record of its molecules (on a product page, the
viewed product's molecules count), no interacting pair with the session or cart, nothing restricted, out
of stock or not shipping to the request's postcode, no molecule twice in the cart, every list full or
saying why not, every item with a reason. Substitutes are checked against the world's ground truth (same
molecules and strengths), cheapest first. Search queries are the world's brands (some with a typo),
molecules and uses: the same rules hold, and a misspelt brand finds its product.
"""

from __future__ import annotations

import csv
import re
import time

import numpy as np
import pytest

from pipelines.core.config import DataSettings, UsersSettings
from pipelines.data.generate import generate_world
from pipelines.data.sequences import build_sequences
from pipelines.models.rules import AssociationRules, RulesSettings
from pipelines.pharmacy.catalogue import build_placement_tables, build_search
from pipelines.pharmacy.served import PolicyRules
from pipelines.pharmacy.tables import DEFAULT_INTERACTIONS, build_safety_tables, read_interactions
from pipelines.repository.models import FallbackTables, write_recommend_config, write_recommend_version
from pipelines.repository.versions import write_config, write_version
from pipelines.serve.client import recommend_session
from pipelines.serve.triton_server import TritonServer, default_venv
from tests.serve.toy_triton import loaded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="Triton serving venv missing: run `make setup` (infra/triton/setup.sh)"),
]
torch = pytest.importorskip("torch")

K, N_REQUESTS, BATCH, N_USERS = 10, 10_000, 100, 400
CHRONIC_CLASSES = ("Antidiabetic", "Antihypertensive", "Lipid lowering", "Thyroid")  # params.yaml refills
POSTCODES = ("110017", "400 001", "560034", "600-001", "302001", "")  # "" = location unknown
_STRENGTH = re.compile(r"^\d[\d.,]*(mg|mcg|µg|iu|%|ml|gm|g)?$", re.IGNORECASE)


def molecules(composition: object) -> frozenset[str]:
    """The checker's own reading of a composition: parts split on '+', strength tokens dropped."""
    if not isinstance(composition, str) or not composition.strip():
        return frozenset()
    parts = []
    for part in composition.lower().split("+"):
        words = part.split()
        while words and _STRENGTH.match(words[-1]):
            words.pop()
        if words and words[-1].isdigit():
            words.pop()
        if words:
            parts.append(" ".join(words))
    return frozenset(parts)


def interacting_pairs() -> set[frozenset[str]]:
    with DEFAULT_INTERACTIONS.open(newline="") as handle:
        return {frozenset((row["molecule_a"].lower(), row["molecule_b"].lower())) for row in csv.DictReader(handle)
                if row["severity"] in ("major", "moderate")}


@pytest.fixture(scope="module")
def world():
    return generate_world(DataSettings(seed=5, n_products=400, n_users=N_USERS), progress=False)


@pytest.fixture(scope="module")
def policy_model(world):
    """An untrained GPT4Rec: it proposes prescription-only and interacting products freely."""
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

    torch.manual_seed(0)
    return GPT4Rec(GPT4RecConfig(n_items=len(world.catalogue), dim=16, layers=1, heads=2, max_len=20,
                                 dropout=0.0)).eval()


@pytest.fixture(scope="module")
def stored_users(policy_model, world):
    """The stored user vectors, as the train stage writes them."""
    return policy_model.user_embeddings(build_sequences(world.events, len(world.catalogue)))


@pytest.fixture(scope="module")
def served(triton: TritonServer, world, policy_model, stored_users, tmp_path_factory):
    from pipelines.export.onnx import export_onnx

    n = len(world.catalogue)
    model = policy_model
    onnx_path = export_onnx(model, tmp_path_factory.mktemp("policy_gpt4rec"), k=K, opset=18)
    repo = triton.repo
    write_config(repo, "gpt4rec_policy", max_batch_size=BATCH, top_k=K, n_items=n)
    write_version(repo, "gpt4rec_policy", onnx_path, metadata={})
    counts = np.bincount(world.events["item_id"].to_numpy(), minlength=n + 1)
    histories = [g.to_numpy() for _, g in world.events.sort_values("timestamp").groupby("user_id")["item_id"]]
    rules = AssociationRules.from_histories(histories, n, RulesSettings()).rules
    tables = FallbackTables(counts.astype(np.float32), counts.astype(np.int64), np.r_[False, np.ones(n, bool)], rules,
                            build_safety_tables(world.catalogue, n, read_interactions(DEFAULT_INTERACTIONS)),
                            build_placement_tables(world.catalogue, n), build_search(world.catalogue, n), stored_users)
    write_recommend_config(repo, top_k=K, n_items=n, max_batch_size=BATCH, gpt4rec_model="gpt4rec_policy",
                           gpt4rec_max_len=20, gpt4rec_max_batch_size=BATCH, model_name="recommend_policy")
    write_recommend_version(repo, tables, metadata={}, model_name="recommend_policy")
    write_recommend_config(repo, top_k=K, n_items=n, max_batch_size=BATCH, gpt4rec_model="gpt4rec_policy",
                           gpt4rec_max_len=20, gpt4rec_max_batch_size=BATCH, model_name="recommend_open",
                           policy=PolicyRules(False, False, False, False, False))
    write_recommend_version(repo, tables, metadata={}, model_name="recommend_open")
    write_recommend_config(repo, top_k=K, n_items=n, max_batch_size=BATCH, gpt4rec_model="gpt4rec_policy",
                           gpt4rec_max_len=20, gpt4rec_max_batch_size=BATCH, model_name="recommend_faiss",
                           users=UsersSettings(faiss_above_items=1, unknown="anonymous"))  # faiss HNSW in the server
    write_recommend_version(repo, tables, metadata={}, model_name="recommend_faiss")
    with loaded(triton, "gpt4rec_policy", "recommend_policy", "recommend_open", "recommend_faiss") as server:
        yield server


def with_typo(word: str, rng: np.random.Generator) -> str:
    """The word with one letter dropped, changed or swapped with its neighbour."""
    i = int(rng.integers(0, len(word) - 1))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + ("z" if word[i] != "z" else "y") + word[i + 1:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def search_queries(world, rng: np.random.Generator, n: int) -> list[str]:
    """What customers type: a brand (half of them with a typo) and its strength, a molecule, or a use."""
    catalogue = world.catalogue
    brands = catalogue["name"].str.split().tolist()
    molecule_names = sorted({m for c in catalogue["composition"].dropna() for m in molecules(c)})
    uses = sorted({u for text in catalogue["uses"].dropna() for u in text.split("|")})
    queries = []
    for _ in range(n):
        kind = rng.integers(0, 3)
        if kind == 0:
            brand, *rest = brands[int(rng.integers(0, len(brands)))]
            word = with_typo(brand.lower(), rng) if rng.random() < 0.5 and len(brand) > 3 else brand
            queries.append(" ".join([word, *rest[:-1]]))
        else:
            pool = molecule_names if kind == 1 else uses
            queries.append(pool[int(rng.integers(0, len(pool)))])
    return queries


def simulated_requests(world, rng: np.random.Generator) -> list[dict]:
    """The world's sessions, each with a random cart and, for some users, purchase or prescription records;
    each with a search query (read on the search placement only)."""
    sessions = world.events.groupby("session_id")["item_id"].agg(list).tolist()
    catalogue = world.catalogue
    rx_items = catalogue.loc[catalogue["rx_required"], "item_id"].to_numpy()
    items = catalogue["item_id"].to_numpy()
    chronic = catalogue.loc[catalogue["therapeutic_class"].isin(CHRONIC_CLASSES), "item_id"].to_numpy()
    requests = []
    for r in range(N_REQUESTS):
        session = sessions[r % len(sessions)][-int(rng.integers(1, 8)):]
        cart = rng.choice(items, size=int(rng.integers(0, 5)), replace=False).tolist()
        purchased = rng.choice(rx_items, size=int(rng.integers(1, 4))).tolist() if rng.random() < 0.3 else []
        if rng.random() < 0.3:  # a chronic patient: what they bought, and when
            purchased += rng.choice(chronic, size=int(rng.integers(1, 3))).tolist()
        prescribed = rng.choice(rx_items, size=int(rng.integers(1, 3))).tolist() if rng.random() < 0.2 else []
        user = int(rng.integers(1, N_USERS + 1)) if rng.random() < 0.6 else 0  # a known user, or anonymous
        requests.append({"session": session, "cart": cart, "purchased": purchased, "prescribed": prescribed, "user": user,
                         "days_ago": rng.integers(0, 60, size=len(purchased)).tolist(),
                         "location": POSTCODES[int(rng.integers(0, len(POSTCODES)))]})
    for q, query in zip(requests, search_queries(world, rng, len(requests)), strict=True):
        q["query"] = query
    return requests


class Checker:
    """The rules read independently: catalogue text and the CSV, not pipelines.pharmacy."""

    def __init__(self, world) -> None:
        catalogue = world.catalogue.set_index("item_id")
        self.mol = {int(i): molecules(c) for i, c in catalogue["composition"].items()}
        self.rx = catalogue["rx_required"].to_dict()
        self.restricted = catalogue["restricted"].fillna(False).astype(bool).to_dict()
        self.out_of_stock = (~catalogue["in_stock"].fillna(True).astype(bool)).to_dict()
        self.ships_to = {int(i): v.split("|") for i, v in catalogue["deliverable_to"].dropna().items()}
        self.pairs = interacting_pairs()
        self.violations: dict[str, list] = {k: [] for k in (
            "rx", "interacts", "restricted", "out_of_stock", "undeliverable", "duplicate_molecule", "short_without_reason",
            "repeated_or_in_cart", "without_reason")}
        self.codes: set[str] = set()
        self.removed: dict[str, int] = {}
        self.short_lists = self.rx_shown = 0

    def check(self, q: dict, answer, placement: str) -> None:
        mol, found = self.mol, self.violations
        for reason, n in answer.policy_removed.items():
            self.removed[reason] = self.removed.get(reason, 0) + n
        shown = [i for i in answer.item_ids if i > 0]
        if len(shown) < K:
            self.short_lists += 1
            if not answer.short_reason:
                found["short_without_reason"].append(q)
        if len(set(shown)) < len(shown) or set(shown) & set(q["cart"]):
            found["repeated_or_in_cart"].append(q)
        if len(answer.reasons) != len(shown) or not all(answer.reasons) or not all(answer.reason_codes):
            found["without_reason"].append(q)
        self.codes.update(answer.reason_codes)
        viewed = [q["session"][-1]] if placement == "product" else []  # its molecules count on its own page
        records = {m for i in q["purchased"] + q["prescribed"] + viewed for m in mol[i]}
        record_items = set(q["purchased"] + q["prescribed"] + viewed)
        context = {m for i in q["session"] + q["cart"] for m in mol.get(i, ())}
        in_cart = {m for i in q["cart"] for m in mol[i]}
        for item in shown:
            ms = mol[item]
            if self.rx[item] and (not ms <= records if ms else item not in record_items):
                found["rx"].append((q, item))
            self.rx_shown += bool(self.rx[item])
            if any(frozenset((a, b)) in self.pairs for a in ms for b in context):
                found["interacts"].append((q, item))
            if self.restricted[item]:
                found["restricted"].append((q, item))
            if self.out_of_stock[item]:
                found["out_of_stock"].append((q, item))
            postcode = q["location"].replace(" ", "").replace("-", "")
            if postcode and item in self.ships_to and not any(postcode.startswith(c) for c in self.ships_to[item]):
                found["undeliverable"].append((q, item))
            if ms & in_cart:
                found["duplicate_molecule"].append((q, item))

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.violations.items()}


def serve_requests(server, requests: list[dict], placement: str, checker: Checker, model: str) -> float:
    """Send the requests in batches of BATCH, check every answer; seconds taken."""
    started = time.perf_counter()
    for lo in range(0, len(requests), BATCH):
        chunk = requests[lo:lo + BATCH]
        answers = recommend_session([q["session"] for q in chunk], cart=[q["cart"] for q in chunk],
                                    purchased=[q["purchased"] for q in chunk],
                                    prescribed=[q["prescribed"] for q in chunk], placement=placement,
                                    query=[q["query"] for q in chunk] if placement == "search" else None,
                                    purchased_days_ago=[q["days_ago"] for q in chunk],
                                    location=[q["location"] for q in chunk], user=[q["user"] for q in chunk],
                                    url=server.url, model_name=model, timeout_s=60)
        for q, answer in zip(chunk, answers, strict=True):
            checker.check(q, answer, placement)
    return time.perf_counter() - started


@pytest.mark.parametrize("placement", ["home", "product", "cart", "search"])
def test_ten_thousand_served_lists_per_placement_break_no_pharmacy_rule(served, world, placement):
    checker = Checker(world)
    elapsed = serve_requests(served, simulated_requests(world, np.random.default_rng(11)), placement, checker,
                             "recommend_policy")
    print(f"{placement}: {N_REQUESTS} requests in {elapsed:.1f}s; removed by the policy: {checker.removed}; short "
          f"lists: {checker.short_lists}; prescription-only items shown to requests with a record: {checker.rx_shown}")
    assert checker.counts() == dict.fromkeys(checker.violations, 0), \
        {k: v[:3] for k, v in checker.violations.items() if v}
    # the requests did exercise every rule (a policy that removed nothing would pass the checks above trivially)
    assert set(checker.removed) == {"restricted", "unavailable", "rx_without_record", "interacts", "duplicate_molecule"}
    assert checker.rx_shown > 0, "a record of the molecule must let prescription-only products through"
    assert checker.codes >= {"product": {"substitutes", "personal"}, "cart": {"complements", "personal"},
                             "home": {"refills", "personal", "history", "complements"}, "search": {"matches"}}[placement], \
        checker.codes


def test_the_checker_finds_what_a_recommend_without_the_policy_shows(served, world):
    """The same requests to a recommend with every check off: the independent checker must catch it."""
    checker = Checker(world)
    serve_requests(served, simulated_requests(world, np.random.default_rng(11))[:1000], "cart", checker, "recommend_open")
    counts = checker.counts()
    print(f"policy off, 1,000 cart requests: {counts}")
    assert all(counts[k] > 0 for k in ("rx", "interacts", "restricted", "out_of_stock", "undeliverable",
                                       "duplicate_molecule")), counts


def test_product_page_substitutes_match_the_ground_truth_and_the_cheapest_comes_first(served, world):
    """On a product page: items placed as substitutes share the viewed product's molecules and strengths
    (the generator's own composition ids), and the first is the cheapest one a pharmacy could offer."""
    catalogue = world.catalogue.set_index("item_id")
    truth = np.r_[-1, world.ground_truth["item_composition"]]
    maker = catalogue["manufacturer"].fillna("").str.lower().str.replace(r"\s+(ltd|limited)$", "", regex=True)
    blocked = catalogue["restricted"].fillna(False).astype(bool) | ~catalogue["in_stock"].fillna(True).astype(bool)
    composition_known = catalogue["composition"].notna()
    viewed_items = [int(i) for i in catalogue.index if truth[i] >= 0 and composition_known[i]][:400]
    hits = placed = checked_first = 0
    for lo in range(0, len(viewed_items), BATCH):
        chunk = viewed_items[lo:lo + BATCH]
        answers = recommend_session([[i] for i in chunk], placement="product", url=served.url,
                                    model_name="recommend_policy")
        for viewed, answer in zip(chunk, answers, strict=True):
            subs = [i for i, code in zip(answer.item_ids, answer.reason_codes, strict=False) if code == "substitutes"]
            placed += min(len(subs), 5)
            hits += sum(truth[i] == truth[viewed] for i in subs[:5])
            valid = [j for j in catalogue.index if j != viewed and truth[j] == truth[viewed] and composition_known[j]
                     and not blocked[j] and (not maker[viewed] or maker[j] != maker[viewed])]
            if subs and valid:
                cheapest = min(catalogue.loc[valid, "price"])
                assert catalogue.loc[subs[0], "price"] == cheapest, (viewed, subs, valid)
                assert "same composition as" in answer.reasons[answer.item_ids.index(subs[0])]
                checked_first += 1
    print(f"substitutes: precision@5 {hits / placed:.3f} over {placed} placed for {len(viewed_items)} viewed products; "
          f"cheapest first checked on {checked_first}")
    assert placed > 200 and hits / placed >= 0.95 and checked_first > 50


def test_an_unknown_placement_is_refused_and_names_the_placements(served):
    from tritonclient.utils import InferenceServerException

    from pipelines.serve.client import session_inputs

    with pytest.raises(ValueError, match=r"placement 'checkout' is not one of \['home', 'product', 'cart', 'search'\]"):
        recommend_session([[1]], placement="checkout", url=served.url, model_name="recommend_policy")
    inputs = session_inputs([[1]])  # a raw request that skips the client's check reaches the server's
    inputs["placement"] = np.array([[b"checkout"]], dtype=np.object_)
    from pipelines.serve.client import _infer

    with pytest.raises(InferenceServerException, match=r"placement 'checkout' is not a placement"):
        _infer("recommend_policy", inputs, ["item_ids"], url=served.url, protocol="http", timeout_s=10)


def test_a_cart_beyond_the_limit_is_refused_and_says_the_limit(served):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"cart_ids row 0 holds 600 items; a cart holds at most 500"):
        recommend_session([[1]], cart=[list(range(1, 601))], url=served.url, model_name="recommend_policy")


def test_a_misspelt_brand_finds_its_product_through_the_server(served, world):
    """Products any visitor may be shown (not prescription-only, restricted or out of stock), asked for by
    brand with one typo and the strength from an empty session: the product is among the first 5 matches."""
    catalogue = world.catalogue
    open_to_all = catalogue[~catalogue["rx_required"] & ~catalogue["restricted"].fillna(False).astype(bool)
                            & catalogue["in_stock"].fillna(True).astype(bool)]
    rng = np.random.default_rng(5)
    names = catalogue.set_index("item_id")["name"]
    queries, wanted = [], []
    for item, name in zip(open_to_all["item_id"], open_to_all["name"], strict=True):
        brand, *rest = name.split()
        queries.append(" ".join([with_typo(brand.lower(), rng) if len(brand) > 3 else brand, *rest[:-1]]))
        wanted.append((int(item), [brand, *rest[:-1]]))
    hits = 0
    for lo in range(0, len(queries), BATCH):
        answers = recommend_session([[] for _ in queries[lo:lo + BATCH]], placement="search",
                                    query=queries[lo:lo + BATCH], url=served.url, model_name="recommend_policy")
        for (item, brand_strength), answer, query in zip(wanted[lo:lo + BATCH], answers, queries[lo:lo + BATCH],
                                                         strict=True):
            found = [i for i, code in zip(answer.item_ids, answer.reason_codes, strict=False) if code == "matches"][:5]
            hits += any(i == item or names[i].split()[:-1] == brand_strength for i in found)
            assert all(answer.reasons[r].startswith(f'matches "{query}"') for r, code in
                       enumerate(answer.reason_codes) if code == "matches")
    print(f"search through the server: a misspelt brand found its product in the top 5 for {hits / len(queries):.3f} "
          f"of {len(queries)} queries")
    assert len(queries) > 150 and hits / len(queries) >= 0.9


@pytest.mark.parametrize(("query", "placement", "said"), [
    (b"", "search", r"query row 0 is empty"),
    (b"x" * 10_240, "search", r"query row 0 is 10,240 bytes; a query holds at most 256"),
    (b"metformin", "home", r"query row 0 is read by the search placement only; row 0 is 'home'"),
    (None, "search", r"row 0 asks the search placement but the request has no 'query' input"),
])
def test_a_bad_query_is_refused_and_says_what_is_wrong(served, query, placement, said):
    from tritonclient.utils import InferenceServerException

    from pipelines.serve.client import _infer, session_inputs

    inputs = session_inputs([[1]], placement=placement)
    if query is not None:
        inputs["query"] = np.array([[query]], dtype=np.object_)
    with pytest.raises(InferenceServerException, match=said):
        _infer("recommend_policy", inputs, ["item_ids"], url=served.url, protocol="http", timeout_s=10)


def pack_days(pack: str) -> int:
    """The test's own reading of a pack: 'strip of 10 tablets' lasts 10 days at one a day."""
    match = re.search(r"(\d+) (tablets|capsules)", pack)
    return int(match[1]) if match else 0


def test_home_offers_a_chronic_refill_when_its_pack_runs_out_and_not_before_or_long_after(served, world):
    """A patient who bought a chronic medicine (prescription-only ones too: the purchase is the record; nothing
    restricted or out of stock, so the policy has no say): three days before the pack runs out it is the first
    item on home, saying so; bought today (every pack lasts 10 days or more), or two months after it ran out,
    it is not offered at all."""
    catalogue = world.catalogue
    chronic = catalogue[catalogue["therapeutic_class"].isin(CHRONIC_CLASSES)
                        & ~catalogue["restricted"].fillna(False).astype(bool)
                        & catalogue["in_stock"].fillna(True).astype(bool)]
    chronic = chronic[chronic["pack_size"].map(pack_days) > 0]
    assert len(chronic) > 5
    items, days = chronic["item_id"].tolist(), chronic["pack_size"].map(pack_days).tolist()
    assert min(days) >= 10
    for ages, expect in (([d - 3 for d in days], "refill due in 3 days"), ([0 for _ in days], None),
                         ([d + 60 for d in days], None)):
        answers = recommend_session([[] for _ in items], purchased=[[i] for i in items],
                                    purchased_days_ago=[[a] for a in ages], placement="home", url=served.url,
                                    model_name="recommend_policy")
        for item, answer in zip(items, answers, strict=True):
            if expect:
                assert answer.item_ids[0] == item and answer.reason_codes[0] == "refills", answer
                assert answer.reasons[0] == expect
            else:
                assert "refills" not in answer.reason_codes and item not in answer.item_ids, answer


def test_a_bad_location_is_refused_and_says_what_a_location_is(served):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"location row 1 is '11;0': a location is a postcode"):
        recommend_session([[1], [2]], location=["110017", "11;0"], url=served.url, model_name="recommend_policy")


@pytest.mark.parametrize(("days", "said"), [
    ([[-2]], r"purchased_days_ago row 0 contains -2 days; a purchase lies in the past"),
    ([[3, 4]], r"purchased_days_ago must have the shape of purchased_ids \[1, 1\]"),
])
def test_bad_purchase_ages_are_refused(served, days, said):
    from tritonclient.utils import InferenceServerException

    from pipelines.serve.client import _infer, session_inputs

    inputs = session_inputs([[1]], purchased=[[2]])
    inputs["purchased_days_ago"] = np.array(days, dtype=np.int64)
    with pytest.raises(InferenceServerException, match=said):
        _infer("recommend_policy", inputs, ["item_ids"], url=served.url, protocol="http", timeout_s=10)


def test_a_known_user_gets_their_stored_vectors_best_items_on_home_and_a_stranger_gets_popular(served, world,
                                                                                               stored_users):
    """An empty session on home: a user the stored vectors hold is led by their best items (reason code history),
    best first by the vector's own scores, each among their users.candidates best. An anonymous request gets the
    popular list; a user id the vectors do not hold is refused by default (users.unknown: refuse) and gets the
    popular list where the deployment says users.unknown: anonymous."""
    n = len(world.catalogue)
    users = build_sequences(world.events, n).user_ids[:60].tolist()
    table = stored_users
    answers = recommend_session([[] for _ in users], user=users, placement="home", url=served.url,
                                model_name="recommend_policy")
    led = 0
    for user, answer in zip(users, answers, strict=True):
        picked = [i for i, code in zip(answer.item_ids, answer.reason_codes, strict=False) if code == "history"]
        assert picked, answer
        led += answer.reason_codes[0] == "history"
        row = int(table.rows(np.array([user]))[0])
        scores = table.item_vectors @ table.vectors[row]
        scores[0] = -np.inf
        best = set(np.argsort(-scores, kind="stable")[:100].tolist())
        assert set(picked) <= best and [scores[i] for i in picked] == sorted((scores[i] for i in picked), reverse=True)
        assert all(r == "picked for you from your history with us"
                   for r, c in zip(answer.reasons, answer.reason_codes, strict=True) if c == "history")
    assert led == len(users)  # nothing comes before them: no session, no purchases
    from tritonclient.utils import InferenceServerException

    plain = recommend_session([[]], placement="home", url=served.url, model_name="recommend_policy")[0]
    anonymous = recommend_session([[]], user=0, url=served.url, model_name="recommend_policy")[0]
    strangers = recommend_session([[], []], user=[10**9, 0], url=served.url, model_name="recommend_faiss")
    for answer in [anonymous, *strangers]:
        assert set(answer.reason_codes) == {"popular"} and answer.item_ids == plain.item_ids
    with pytest.raises(InferenceServerException, match=r"user_id row 1 is user 1000000000, who has no stored vector "
                                                       r"\(the served model holds \d+ users\); send 0 for a user"):
        recommend_session([[], []], user=[users[0], 10**9], url=served.url, model_name="recommend_policy")


def test_the_faiss_index_a_large_catalogue_takes_serves_the_exact_lists(served, world):
    """The same users' home pages from a recommend whose retrieval is faiss HNSW (users.faiss_above_items=1):
    the serving venv's faiss answers, and on this catalogue the approximate index finds the exact lists."""
    users = build_sequences(world.events, len(world.catalogue)).user_ids[:60].tolist()
    exact, approximate = (recommend_session([[] for _ in users], user=users, url=served.url, model_name=name)
                          for name in ("recommend_policy", "recommend_faiss"))
    same = sum(a.item_ids == b.item_ids for a, b in zip(exact, approximate, strict=True))
    assert all("history" in a.reason_codes for a in approximate)
    assert same >= 0.95 * len(users), f"{same} of {len(users)} home lists equal"


def test_a_search_without_a_session_is_reranked_by_the_users_stored_vector(served, world):
    """Same query, no session: a known user's list is the query's products re-ranked by their vector (some say
    so); an anonymous request gets them by text relevance alone."""
    user = int(build_sequences(world.events, len(world.catalogue)).user_ids[3])
    query = "tablet"
    mine, anyone = recommend_session([[], []], user=[user, 0], placement="search", query=query, url=served.url,
                                     model_name="recommend_policy")
    assert set(mine.reason_codes) <= {"matches", "popular"} and set(anyone.reason_codes) <= {"matches", "popular"}
    assert any("suits your history" in r for r in mine.reasons)
    assert not any("suits your history" in r for r in anyone.reasons)
    assert mine.item_ids != anyone.item_ids


@pytest.mark.parametrize(("user", "said"), [
    (np.array([[3], [-4]], dtype=np.int64), r"user_id row 1 is -4: user ids are >= 1, and 0 is an anonymous user"),
    (np.array([[3, 4], [5, 6]], dtype=np.int64), r"unexpected shape for input 'user_id'.*Expected \[-1,1\], got \[2,2\]"),
    (np.array([[3]], dtype=np.int64), r"input 'session_ids' batch size does not match other inputs"),  # Triton's check
])
def test_a_bad_user_id_is_refused_and_says_what_a_user_id_is(served, user, said):
    from tritonclient.utils import InferenceServerException

    from pipelines.serve.client import _infer, session_inputs

    inputs = session_inputs([[1], [2]])
    inputs["user_id"] = user
    with pytest.raises(InferenceServerException, match=said):
        _infer("recommend_policy", inputs, ["item_ids"], url=served.url, protocol="http", timeout_s=10)
