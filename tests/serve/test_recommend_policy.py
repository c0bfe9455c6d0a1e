"""The safety policy as served: 10,000 simulated requests through `recommend` on the real tritonserver.

A generated world's catalogue (rx flags, restricted and out-of-stock products, compositions with their
spelling variants) and the shipped interaction table, a real GPT4Rec export (untrained: it proposes
prescription-only and interacting products freely, which is what the policy must stop), popularity from
the world's events. Requests are the world's own sessions with random carts and purchase or
prescription records. Every answer is checked by an independent reading of the catalogue text and the
CSV (not the policy's code): no prescription-only product without a record of its molecules, no
interacting pair with the session or cart, nothing restricted or out of stock, no molecule twice in the
cart, and every list full or saying why not.
"""

from __future__ import annotations

import csv
import re
import time

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import DataSettings
from pipelines.data.generate import generate_world
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

K, N_REQUESTS, BATCH = 10, 10_000, 100
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
    return generate_world(DataSettings(seed=5, n_products=400, n_users=400), progress=False)


@pytest.fixture(scope="module")
def served(triton: TritonServer, world, tmp_path_factory):
    from pipelines.export.onnx import export_onnx
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

    n = len(world.catalogue)
    torch.manual_seed(0)
    model = GPT4Rec(GPT4RecConfig(n_items=n, dim=16, layers=1, heads=2, max_len=20, dropout=0.0)).eval()
    onnx_path = export_onnx(model, tmp_path_factory.mktemp("policy_gpt4rec"), k=K, opset=18)
    repo = triton.repo
    write_config(repo, "gpt4rec_policy", max_batch_size=BATCH, top_k=K, n_items=n)
    write_version(repo, "gpt4rec_policy", onnx_path, metadata={})
    counts = np.bincount(world.events["item_id"].to_numpy(), minlength=n + 1)
    tables = FallbackTables(counts.astype(np.float32), counts.astype(np.int64), np.r_[False, np.ones(n, bool)], None,
                            build_safety_tables(world.catalogue, n, read_interactions(DEFAULT_INTERACTIONS)))
    write_recommend_config(repo, top_k=K, n_items=n, max_batch_size=BATCH, gpt4rec_model="gpt4rec_policy",
                           gpt4rec_max_len=20, gpt4rec_max_batch_size=BATCH, model_name="recommend_policy")
    write_recommend_version(repo, tables, metadata={}, model_name="recommend_policy")
    with loaded(triton, "gpt4rec_policy", "recommend_policy") as server:
        yield server


def simulated_requests(world, rng: np.random.Generator) -> list[dict]:
    """The world's sessions, each with a random cart and, for some users, purchase or prescription records."""
    sessions = world.events.groupby("session_id")["item_id"].agg(list).tolist()
    catalogue = world.catalogue
    rx_items = catalogue.loc[catalogue["rx_required"], "item_id"].to_numpy()
    items = catalogue["item_id"].to_numpy()
    requests = []
    for r in range(N_REQUESTS):
        session = sessions[r % len(sessions)][-int(rng.integers(1, 8)):]
        cart = rng.choice(items, size=int(rng.integers(0, 5)), replace=False).tolist()
        purchased = rng.choice(rx_items, size=int(rng.integers(1, 4))).tolist() if rng.random() < 0.3 else []
        prescribed = rng.choice(rx_items, size=int(rng.integers(1, 3))).tolist() if rng.random() < 0.2 else []
        requests.append({"session": session, "cart": cart, "purchased": purchased, "prescribed": prescribed})
    return requests


def test_ten_thousand_served_lists_break_no_pharmacy_rule(served, world):
    catalogue = world.catalogue.set_index("item_id")
    mol = {int(i): molecules(c) for i, c in catalogue["composition"].items()}
    rx = catalogue["rx_required"].to_dict()
    restricted = catalogue["restricted"].fillna(False).astype(bool).to_dict()
    out_of_stock = (~catalogue["in_stock"].fillna(True).astype(bool)).to_dict()
    pairs = interacting_pairs()
    requests = simulated_requests(world, np.random.default_rng(11))
    violations: dict[str, list] = {k: [] for k in ("rx", "interacts", "restricted", "out_of_stock", "duplicate_molecule",
                                                   "short_without_reason", "repeated_or_in_cart")}
    removed_total: dict[str, int] = {}
    short_lists = rx_shown = 0
    started = time.perf_counter()
    for lo in range(0, N_REQUESTS, BATCH):
        chunk = requests[lo:lo + BATCH]
        answers = recommend_session([q["session"] for q in chunk], cart=[q["cart"] for q in chunk],
                                    purchased=[q["purchased"] for q in chunk],
                                    prescribed=[q["prescribed"] for q in chunk], url=served.url,
                                    model_name="recommend_policy", timeout_s=60)
        for q, answer in zip(chunk, answers, strict=True):
            for reason, n in answer.policy_removed.items():
                removed_total[reason] = removed_total.get(reason, 0) + n
            shown = [i for i in answer.item_ids if i > 0]
            if len(shown) < K:
                short_lists += 1
                if not answer.short_reason:
                    violations["short_without_reason"].append(q)
            if len(set(shown)) < len(shown) or set(shown) & set(q["cart"]):
                violations["repeated_or_in_cart"].append(q)
            records = {m for i in q["purchased"] + q["prescribed"] for m in mol[i]}
            record_items = set(q["purchased"] + q["prescribed"])
            context = {m for i in q["session"] + q["cart"] for m in mol.get(i, ())}
            in_cart = {m for i in q["cart"] for m in mol[i]}
            for item in shown:
                ms = mol[item]
                if rx[item] and (not ms <= records if ms else item not in record_items):
                    violations["rx"].append((q, item))
                rx_shown += bool(rx[item])
                if any(frozenset((a, b)) in pairs for a in ms for b in context):
                    violations["interacts"].append((q, item))
                if restricted[item]:
                    violations["restricted"].append((q, item))
                if out_of_stock[item]:
                    violations["out_of_stock"].append((q, item))
                if ms & in_cart:
                    violations["duplicate_molecule"].append((q, item))
    elapsed = time.perf_counter() - started
    print(f"{N_REQUESTS} requests in {elapsed:.1f}s; removed by the policy: {removed_total}; short lists: "
          f"{short_lists}; prescription-only items shown to requests with a record: {rx_shown}")
    assert {k: len(v) for k, v in violations.items()} == dict.fromkeys(violations, 0), \
        {k: v[:3] for k, v in violations.items() if v}
    # the requests did exercise every rule (a policy that removed nothing would pass the checks above trivially)
    assert set(removed_total) == {"restricted", "unavailable", "rx_without_record", "interacts", "duplicate_molecule"}
    assert rx_shown > 0, "a record of the molecule must let prescription-only products through, not block them all"


def test_a_cart_beyond_the_limit_is_refused_and_says_the_limit(served):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"cart_ids row 0 holds 600 items; a cart holds at most 500"):
        recommend_session([[1]], cart=[list(range(1, 601))], url=served.url, model_name="recommend_policy")


def test_catalogue_frame_has_the_flags(world):
    assert isinstance(world.catalogue["restricted"].dtype, pd.BooleanDtype)
    assert world.catalogue["restricted"].fillna(False).any() and (world.catalogue["in_stock"] == False).any()
