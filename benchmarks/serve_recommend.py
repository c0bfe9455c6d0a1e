"""`rxrec bench serve --entry recommend`: what the pharmacy layer adds to the p50 of the `recommend` entry point.

One tritonserver serves the length-50 GPT4Rec of `rxrec bench serve` (the demo's champion when it was
exported for that length and this catalogue, else params.yaml's architecture with random weights) and two
`recommend` versions over one generated world (params.yaml `data`: its catalogue, popularity, association
rules, safety and placement tables, search index, built by the code deploy runs):

  recommend_plain  every policy check off and one source (personal: gpt4rec's top-k, topped up by
                   popularity): the entry point without the pharmacy layer;
  recommend        params.yaml `policy`, `placements`, `search`, `refills` and `users`, as deployed.

Both get gpt4rec's top-k as deploy has them (params.yaml `serve.recommend_scoring`): in process, from their
own copy of the served model.onnx, or by a BLS call to the gpt4rec model.

The stored user vectors are random, one per world user, as wide as params.yaml's GPT4Rec: what a lookup and
an exact top-N cost depends on their count and width, not on their values (their values are checked through
the server in tests/serve/test_recommend_placements.py).

Requests are full-length sessions of the world's products (the most work for gpt4rec) with what each
placement reads: home carries a known user's id, purchases with their ages (refills) and a postcode; product views the
session's latest item; cart holds two products; search types a brand, half of them misspelt. The plain
version gets the home requests. All five variants go out shuffled into one open-loop stream, so they share
every moment of the run and whatever else the machine is doing at it:
on this shared 2-core machine, variants measured one after another differed by several ms from one window
to the next, more than what is measured here. The rate is moderate, well below what one recommend instance
serves (the issue bounds the p50 added, not the capacity; near saturation a request's latency is mostly the
queue ahead of it); three rounds; the figure is the worst round's p50(placement) - p50(plain).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PLACEMENT_TARGET_MS = 1.0  # the most the policy and placements may add to the recommend p50
LENGTH = 50
PLAIN = "plain (no policy, personal only)"
POSTCODES = ("110017", "400001", "560034", "302001", "")
SESSIONS_PER_VARIANT = 64
SCORING_TEXT = {"in_process": "scoring gpt4rec in process (each version holds a copy of its model.onnx)",
                "bls": "calling gpt4rec by BLS"}


def scoring_text(report: dict[str, Any]) -> str:
    """How the report's recommend versions got gpt4rec's top-k (reports before the key ran over BLS)."""
    return SCORING_TEXT[report.get("gpt4rec_scoring", "bls")]


def _world_tables(settings: Any) -> tuple[Any, Any, int]:
    """(world, FallbackTables, n_items): the tables deploy would write for recommend, from a generated world."""
    from pipelines.core.config import Paths
    from pipelines.data.generate import generate_world
    from pipelines.models.rules import AssociationRules
    from pipelines.pharmacy.catalogue import build_placement_tables, build_search
    from pipelines.repository.companions import safety_tables
    from pipelines.repository.models import FallbackTables

    world = generate_world(settings.data, progress=False)
    n = len(world.catalogue)
    counts = np.bincount(world.events["item_id"].to_numpy(), minlength=n + 1).astype(np.float32)
    histories = [g.to_numpy() for _, g in world.events.sort_values("timestamp").groupby("user_id")["item_id"]]
    rules = AssociationRules.from_histories(histories, n, settings.rules).rules
    tables = FallbackTables(counts, counts.astype(np.int64), np.r_[False, np.ones(n, bool)], rules,
                            safety_tables(settings.policy, Paths(), world.catalogue, n),
                            build_placement_tables(world.catalogue, n, settings.refills),
                            build_search(world.catalogue, n), _random_users(settings, n))
    return world, tables, n


def _random_users(settings: Any, n_items: int) -> Any:
    """One stored vector per world user, random, as wide as params.yaml's GPT4Rec (see the module docstring)."""
    from pipelines.models.user_vectors import UserVectors

    rng = np.random.default_rng(settings.data.seed)
    dim, n_users = settings.gpt4rec.dim, settings.data.n_users
    return UserVectors.build(np.arange(1, n_users + 1), rng.normal(size=(n_users, dim)).astype(np.float32),
                             rng.normal(size=(n_items + 1, dim)).astype(np.float32))


def placement_payloads(model: str, placement: str, names: list[str], tables: Any, n: int, rng: np.random.Generator,
                       count: int = SESSIONS_PER_VARIANT) -> list[bytes]:
    """`count` serialised requests of one placement (see the module docstring); `names`: the catalogue's."""
    from benchmarks.load import build_infer_request

    chronic = np.flatnonzero(tables.placements.supply_days > 0)
    out = []
    for _ in range(count):
        session = rng.integers(1, n + 1, size=LENGTH, dtype=np.int64)
        extras: dict[str, np.ndarray] = {"placement": np.array([[placement.encode()]], dtype=object)}
        if placement == "home":
            bought = rng.choice(chronic, size=2) if len(chronic) else rng.integers(1, n + 1, size=2)
            extras["purchased_ids"] = bought.reshape(1, -1).astype(np.int64)
            extras["purchased_days_ago"] = np.array([[int(tables.placements.supply_days[bought[0]]) - 2, 3]],
                                                    dtype=np.int64).clip(0)
            extras["location"] = np.array([[POSTCODES[int(rng.integers(0, len(POSTCODES)))].encode()]], dtype=object)
            if tables.users is not None:
                user = tables.users.user_ids[int(rng.integers(0, len(tables.users.user_ids)))]
                extras["user_id"] = np.array([[int(user)]], dtype=np.int64)
        elif placement == "cart":
            extras["cart_ids"] = rng.integers(1, n + 1, size=(1, 2), dtype=np.int64)
        elif placement == "search":
            brand, *rest = names[int(rng.integers(0, len(names)))].split()
            if rng.random() < 0.5 and len(brand) > 3:
                i = int(rng.integers(0, len(brand) - 1))
                brand = brand[:i] + brand[i + 1] + brand[i] + brand[i + 2:]
            extras["query"] = np.array([[" ".join([brand, *rest[:-1]]).encode()]], dtype=object)
        out.append(build_infer_request(model, session, input_name="session_ids", extras=extras))
    return out


def run_recommend(*, rate: float, duration_s: float, warmup_s: float, rounds: int, workers: int, settings: Any,
                  work_dir: Path) -> dict[str, Any]:
    """Serve gpt4rec and both recommend versions; every variant once per round; the report's payload."""
    from benchmarks.load import LoadGenerator, LoadLevel
    from benchmarks.serve import ServerConfig, machine_busy_s, prepare_models
    from pipelines.pharmacy.served import PLACEMENTS, PolicyRules
    from pipelines.repository.companions import policy_rules
    from pipelines.repository.models import write_recommend_config, write_recommend_version
    from pipelines.serve.triton_server import TritonServer, find_free_port

    world, tables, n = _world_tables(settings)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    try:
        repo = run_dir / "triton_repo"
        server = ServerConfig(max_batch_size=settings.serve.max_batch_size, instance_count={LENGTH: 1},
                              intra_op_threads=1, max_queue_delay_us=2000, preferred_batch_sizes=())
        model = prepare_models(repo, [LENGTH], n, server, settings, work_dir, benchmark="serve-recommend")[LENGTH]
        scoring = settings.serve.recommend_scoring
        scorer = Path(model["onnx"]) if scoring == "in_process" else None
        common = {"gpt4rec_scoring": scoring, "top_k": settings.export.top_k, "n_items": n,
                  "max_batch_size": settings.serve.max_batch_size,
                  "gpt4rec_model": model["model"], "gpt4rec_max_len": LENGTH,
                  "gpt4rec_max_batch_size": settings.serve.max_batch_size,
                  "rules_recent_items": settings.rules.recent_items, "rules_decay": settings.rules.decay}
        write_recommend_config(repo, **common, policy=policy_rules(settings.policy),
                               max_cart_items=settings.policy.max_cart_items, blends=settings.placements.blends(),
                               search_candidates=settings.search.candidates,
                               search_personal_weight=settings.search.personal_weight,
                               max_query_bytes=settings.search.max_query_bytes,
                               refill_due_within_days=settings.refills.due_within_days,
                               refill_overdue_days=settings.refills.overdue_days, users=settings.users,
                               model_name="recommend")
        write_recommend_version(repo, tables, metadata={"benchmark": "serve-recommend"}, scorer=scorer,
                                model_name="recommend")
        write_recommend_config(repo, **common, policy=PolicyRules(False, False, False, False, False),
                               blends=dict.fromkeys(PLACEMENTS, "personal:10"), model_name="recommend_plain")
        write_recommend_version(repo, tables, metadata={"benchmark": "serve-recommend"}, scorer=scorer,
                                model_name="recommend_plain")
        rng = np.random.default_rng(settings.data.seed)
        names = world.catalogue["name"].tolist()
        variants = {PLAIN: placement_payloads("recommend_plain", "home", names, tables, n, rng)}
        for placement in PLACEMENTS:
            variants[placement] = placement_payloads("recommend", placement, names, tables, n, rng)
        labels = list(variants)
        # Shuffled, so no variant always follows another: requests queue behind the one before them.
        order = rng.permutation(SESSIONS_PER_VARIANT * len(labels))
        mixed = [variants[labels[i % len(labels)]][i // len(labels)] for i in order.tolist()]
        triton = TritonServer(repo, http_port=find_free_port(), grpc_port=find_free_port(),
                              metrics_port=find_free_port(), log_dir=run_dir / "logs")
        measured: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        with triton, LoadGenerator(f"127.0.0.1:{triton.grpc_port}", workers=workers) as generator:
            for name in (model["model"], "recommend_plain", "recommend"):
                triton.load(name, timeout_s=180)
            generator.run("recommend", [], LoadLevel(rate, duration_s=2.0, warmup_s=0.5), payloads=mixed)  # warm
            for _ in range(rounds):
                busy0 = machine_busy_s()
                level = LoadLevel(rate, duration_s, warmup_s=warmup_s)
                generator.run("recommend", [], level, payloads=mixed)
                busy = round((machine_busy_s() - busy0) / (duration_s + warmup_s), 2)
                for v, label in enumerate(labels):
                    measured[label].append({**per_variant(generator.last_records, generator.last_start + warmup_s,
                                                          v, order % len(labels)), "machine_busy_cores": busy})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    added = {p: [round(measured[p][r]["p50_ms"] - measured[PLAIN][r]["p50_ms"], 3) for r in range(rounds)]
             for p in PLACEMENTS}
    return {
        "entry": "recommend", "length": LENGTH, "n_items": n, "rate_per_s": rate, "duration_s": duration_s,
        "warmup_s": warmup_s, "rounds": rounds, "workers": workers, "gpt4rec": model["source"],
        "gpt4rec_scoring": scoring,
        "world": {"products": n, "users": settings.data.n_users, "seed": settings.data.seed},
        "user_vectors": {"users": len(tables.users.user_ids), "dim": tables.users.dim, "values": "random",
                         "retrieval": "exact" if n < settings.users.faiss_above_items else "faiss HNSW"},
        "blends": settings.placements.blends(), "policy": policy_rules(settings.policy).checks(),
        "target_added_p50_ms": PLACEMENT_TARGET_MS, "variants": measured, "added_p50_ms": added,
        "worst_added_p50_ms": {p: max(v) for p, v in added.items()},
        "passed": all(max(v) <= PLACEMENT_TARGET_MS for v in added.values())
        and all(lv["errors"] == 0 for levels in measured.values() for lv in levels),
    }


def per_variant(records: list[Any], window_start: float, variant: int, variant_of: np.ndarray) -> dict[str, Any]:
    """p50/p99/errors of one variant's requests of the mixed stream (variant_of[payload index]), warm-up dropped."""
    due = np.concatenate([r.due for r in records])
    done = np.concatenate([r.done for r in records])
    ok = np.concatenate([r.ok for r in records])
    mine = (variant_of[np.concatenate([r.payload_index for r in records])] == variant) & (due >= window_start)
    latency_ms = (done - due)[mine & ok] * 1e3
    return {"requests": int(mine.sum()), "errors": int((mine & ~ok).sum()),
            "p50_ms": round(float(np.percentile(latency_ms, 50)), 3) if latency_ms.size else float("nan"),
            "p99_ms": round(float(np.percentile(latency_ms, 99)), 3) if latency_ms.size else float("nan"),
            "error_messages": [f"{c}x {m}" for r in records for m, c in r.errors.items()][:3]}


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Serving benchmark: what the pharmacy layer adds to `recommend`", "",
        (f"tritonserver, one instance each: gpt4rec ({payload['gpt4rec']}), `recommend` with params.yaml policy "
         f"({payload['policy']}) and placements {payload['blends']}, and `recommend_plain` (no checks, personal "
         f"only), both {scoring_text(payload)}. {payload['n_items']:,} products (generated world seed "
         f"{payload['world']['seed']}), sessions of "
         f"{payload['length']} items; home requests name one of {payload['user_vectors']['users']:,} users with "
         f"stored vectors (random, dim {payload['user_vectors']['dim']}, {payload['user_vectors']['retrieval']} "
         f"retrieval). One open-loop gRPC stream at {payload['rate_per_s']:g} requests/s holding all "
         f"{len(payload['variants'])} variants shuffled together, "
         f"{payload['duration_s']:g} s per round after {payload['warmup_s']:g} s warm-up, {payload['rounds']} "
         "rounds. Target: the policy and placements add "
         f"at most {payload['target_added_p50_ms']:g} ms to the p50 (each round's placement p50 minus the same "
         f"round's plain p50; the worst round counts)."), "",
        f"Overall: {'PASS' if payload['passed'] else 'FAIL'}.", "",
        ("| variant | requests per round | p50 ms per round | p99 ms per round | errors | added p50 ms per round "
         "(worst) | machine busy cores |"),
        "|---|---|---|---|---:|---|---|",
    ]
    for name, levels in payload["variants"].items():
        added = payload["added_p50_ms"].get(name)
        added_text = "-" if added is None else f"{', '.join(f'{a:+.3f}' for a in added)} ({max(added):+.3f})"
        lines.append(f"| {name} | {', '.join(str(lv['requests']) for lv in levels)} "
                     f"| {', '.join(str(lv['p50_ms']) for lv in levels)} "
                     f"| {', '.join(str(lv['p99_ms']) for lv in levels)} | {sum(lv['errors'] for lv in levels)} "
                     f"| {added_text} | {', '.join(str(lv['machine_busy_cores']) for lv in levels)} |")
    errors = sorted({m for levels in payload["variants"].values() for lv in levels for m in lv["error_messages"]})
    if errors:
        lines += ["", "First errors: " + "; ".join(errors[:5])]
    return "\n".join(lines)
