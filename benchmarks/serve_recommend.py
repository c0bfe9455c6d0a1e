"""`rxrec bench serve --entry recommend`: what the pharmacy layer adds to the p50 of the `recommend` entry point.

One tritonserver serves the length-50 GPT4Rec of `rxrec bench serve` (the demo's champion when it was
exported for that length and this catalogue, else params.yaml's architecture with random weights) and two
`recommend` versions over one generated world (params.yaml `data`: its catalogue, popularity, association
rules, safety and placement tables, search index, built by the code deploy runs):

  recommend_plain  every policy check off and one source (personal: the BLS call to gpt4rec, topped up by
                   popularity): the entry point without the pharmacy layer;
  recommend        params.yaml `policy`, `placements`, `search` and `refills`, as deployed.

Requests are full-length sessions of the world's products (the most work for gpt4rec) with what each
placement reads: home carries purchases with their ages (refills) and a postcode; product views the
session's latest item; cart holds two products; search types a brand, half of them misspelt. The plain
version gets the home requests. Each is sent open loop at a moderate rate (the issue bounds the p50 added,
not the capacity), every variant once per round (each round starting one variant later), three rounds;
the figure is the worst round's p50(placement) - p50(plain) of the same round.
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
                            build_search(world.catalogue, n))
    return world, tables, n


def _payloads(model: str, placement: str, world: Any, tables: Any, n: int, rng: np.random.Generator) -> list[bytes]:
    """SESSIONS_PER_VARIANT serialised requests of one placement (see the module docstring)."""
    from benchmarks.load import build_infer_request

    chronic = np.flatnonzero(tables.placements.supply_days > 0)
    names = world.catalogue["name"].tolist()
    out = []
    for _ in range(SESSIONS_PER_VARIANT):
        session = rng.integers(1, n + 1, size=LENGTH, dtype=np.int64)
        extras: dict[str, np.ndarray] = {"placement": np.array([[placement.encode()]], dtype=object)}
        if placement == "home":
            bought = rng.choice(chronic, size=2) if len(chronic) else rng.integers(1, n + 1, size=2)
            extras["purchased_ids"] = bought.reshape(1, -1).astype(np.int64)
            extras["purchased_days_ago"] = np.array([[int(tables.placements.supply_days[bought[0]]) - 2, 3]],
                                                    dtype=np.int64).clip(0)
            extras["location"] = np.array([[POSTCODES[int(rng.integers(0, len(POSTCODES)))].encode()]], dtype=object)
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
        common = {"top_k": settings.export.top_k, "n_items": n, "max_batch_size": settings.serve.max_batch_size,
                  "gpt4rec_model": model["model"], "gpt4rec_max_len": LENGTH,
                  "gpt4rec_max_batch_size": settings.serve.max_batch_size,
                  "rules_recent_items": settings.rules.recent_items, "rules_decay": settings.rules.decay}
        write_recommend_config(repo, **common, policy=policy_rules(settings.policy),
                               max_cart_items=settings.policy.max_cart_items, blends=settings.placements.blends(),
                               search_candidates=settings.search.candidates,
                               search_personal_weight=settings.search.personal_weight,
                               max_query_bytes=settings.search.max_query_bytes,
                               refill_due_within_days=settings.refills.due_within_days,
                               refill_overdue_days=settings.refills.overdue_days, model_name="recommend")
        write_recommend_version(repo, tables, metadata={"benchmark": "serve-recommend"}, model_name="recommend")
        write_recommend_config(repo, **common, policy=PolicyRules(False, False, False, False, False),
                               blends=dict.fromkeys(PLACEMENTS, "personal:10"), model_name="recommend_plain")
        write_recommend_version(repo, tables, metadata={"benchmark": "serve-recommend"}, model_name="recommend_plain")
        rng = np.random.default_rng(settings.data.seed)
        variants = {PLAIN: ("recommend_plain", _payloads("recommend_plain", "home", world, tables, n, rng))}
        for placement in PLACEMENTS:
            variants[placement] = ("recommend", _payloads("recommend", placement, world, tables, n, rng))
        triton = TritonServer(repo, http_port=find_free_port(), grpc_port=find_free_port(),
                              metrics_port=find_free_port(), log_dir=run_dir / "logs")
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        with triton, LoadGenerator(f"127.0.0.1:{triton.grpc_port}", workers=workers) as generator:
            for name in (model["model"], "recommend_plain", "recommend"):
                triton.load(name, timeout_s=180)
            for name, (target, payloads) in variants.items():  # warm every path once
                generator.run(target, [], LoadLevel(rate, duration_s=1.0, warmup_s=0.5), payloads=payloads)
            names = list(variants)
            for r in range(rounds):  # each round starts one variant later: a drift favours none of them
                for name in names[r % len(names):] + names[:r % len(names)]:
                    target, payloads = variants[name]
                    busy0 = machine_busy_s()
                    result = generator.run(target, [], LoadLevel(rate, duration_s, warmup_s=warmup_s),
                                           payloads=payloads)
                    level = result.to_dict()
                    level["machine_busy_cores"] = round((machine_busy_s() - busy0) / (duration_s + warmup_s), 2)
                    measured[name].append(level)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    added = {p: [round(measured[p][r]["p50_ms"] - measured[PLAIN][r]["p50_ms"], 3) for r in range(rounds)]
             for p in PLACEMENTS}
    return {
        "entry": "recommend", "length": LENGTH, "n_items": n, "rate_per_s": rate, "duration_s": duration_s,
        "warmup_s": warmup_s, "rounds": rounds, "workers": workers, "gpt4rec": model["source"],
        "world": {"products": n, "users": settings.data.n_users, "seed": settings.data.seed},
        "blends": settings.placements.blends(), "policy": policy_rules(settings.policy).checks(),
        "target_added_p50_ms": PLACEMENT_TARGET_MS, "variants": measured, "added_p50_ms": added,
        "worst_added_p50_ms": {p: max(v) for p, v in added.items()},
        "passed": all(max(v) <= PLACEMENT_TARGET_MS for v in added.values())
        and all(lv["errors"] == 0 for levels in measured.values() for lv in levels),
    }


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Serving benchmark: what the pharmacy layer adds to `recommend`", "",
        (f"tritonserver, one instance each: gpt4rec ({payload['gpt4rec']}), `recommend` with params.yaml policy "
         f"({payload['policy']}) and placements {payload['blends']}, and `recommend_plain` (no checks, personal "
         f"only). {payload['n_items']:,} products (generated world seed {payload['world']['seed']}), sessions of "
         f"{payload['length']} items. Open loop at {payload['rate_per_s']:g} requests/s over gRPC, "
         f"{payload['duration_s']:g} s per variant after {payload['warmup_s']:g} s warm-up, "
         f"{payload['rounds']} rounds with every variant once per round. Target: the policy and placements add "
         f"at most {payload['target_added_p50_ms']:g} ms to the p50 (each round's placement p50 minus the same "
         f"round's plain p50; the worst round counts)."), "",
        f"Overall: {'PASS' if payload['passed'] else 'FAIL'}.", "",
        "| variant | p50 ms per round | p99 ms per round | errors | added p50 ms per round (worst) | machine busy cores |",
        "|---|---|---|---:|---|---|",
    ]
    for name, levels in payload["variants"].items():
        added = payload["added_p50_ms"].get(name)
        added_text = "-" if added is None else f"{', '.join(f'{a:+.3f}' for a in added)} ({max(added):+.3f})"
        lines.append(f"| {name} | {', '.join(str(lv['p50_ms']) for lv in levels)} "
                     f"| {', '.join(str(lv['p99_ms']) for lv in levels)} | {sum(lv['errors'] for lv in levels)} "
                     f"| {added_text} | {', '.join(str(lv['machine_busy_cores']) for lv in levels)} |")
    errors = [m for levels in payload["variants"].values() for lv in levels for m in lv["error_messages"]]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors[:5])]
    return "\n".join(lines)
