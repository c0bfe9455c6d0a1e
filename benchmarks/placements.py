"""`rxrec bench placements`: each placement's lists as served, per family and blended, shown to simulated users.

On the generated world (it alone has a ground-truth user model): the families the seed compares
(static popularity list, MF, association rules, NCF, GPT4Rec) are trained once, then for each test user
and placement a request is made from the user's history (home: the history; product: the latest item is
the product viewed; cart: the latest items are in the cart) and answered
- by each family alone: its full-sort scores, best first, through the served safety policy, then the
  static list for what it cannot fill;
- by the blend `recommend` serves (params.yaml `placements`), with the same ServedList and fill_blend
  code the Triton backend runs (pipelines/pharmacy/served.py).
The simulated users (pipelines/data/ground_truth.py, whose add-to-cart and purchase depend on price and
prescription) give CTR, add-to-cart and purchase per shown item, relative to the static list. Coverage
is the share of requests a family can answer from what it learned: rules when at least half a list of
rules fire, the learned models when the request holds a warm item (the served routing,
WARM_MIN_INTERACTIONS), the static list always; for the blend, when its sources other than the
static list fill at least half the list.
The test split's target is never read: requests are built from the histories before it.
The search placement is not simulated: the world's users browse and buy but type no queries (its
retrieval is measured in tests/pharmacy/test_search.py and through the server). Nor are refills: the
simulated users' purchases carry no pack-by-pack timing, so the home blend's `refills` source offers
nothing here (it is checked through the server, tests/serve/test_recommend_placements.py).
The home blend's `history` (a known user's best items by their stored vector) is GPT4Rec's state after the
user's history before the test target, which train would store; here the request already holds that whole
history, so it is the personal list without the served warm-session gate (a returning user with an empty
session, where it matters most, is checked through the server).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

PLACEMENT_FAMILIES = ("popularity", "mf", "rules", "ncf", "gpt4rec")
BLENDED = "blended (served)"
CART_ITEMS = 2  # the cart page: the history's latest items are in the cart
SIMULATED_PLACEMENTS = ("home", "product", "cart")  # the simulated users browse; none types a search query
CANDIDATES = 200  # per family and request: best-scored items the policy and exclusions choose from


def _requests(seqs: Any, users: int, rng: Any) -> list[dict[str, Any]]:
    """One request per evaluated test user (at most `users`): history, records (bought items), row index."""
    import numpy as np

    from pipelines.data.sequences import EVENT_KIND_CODES

    histories, _, rows = seqs.evaluation("test")
    kinds = seqs.evaluation_kinds("test") if seqs.kinds is not None else None
    order = rng.permutation(len(rows))[:users]
    out = []
    for i in order:
        history = np.asarray(histories[i], dtype=np.int64)
        bought = history[kinds[i] == EVENT_KIND_CODES["purchase"]] if kinds is not None else history[:0]
        out.append({"row": int(rows[i]), "user": int(seqs.user_ids[rows[i]]), "history": history,
                    "records": np.unique(bought)})
    return out


def _shape(request: dict[str, Any], placement: str) -> tuple[Any, Any]:
    """(session, cart) of a request on a placement."""
    history = request["history"]
    if placement == "cart" and len(history) > CART_ITEMS:
        return history[:-CART_ITEMS], history[-CART_ITEMS:]
    return history, history[:0]


class _Sources:
    """One request's candidate sources, offline, as fill_blend takes them."""

    def __init__(self, scored: dict, covers: dict, i: int, popular_order: Any, tables: Any, k: int,
                 viewed: int | None) -> None:
        self.scored, self.covers, self.i, self.popular_order = scored, covers, i, popular_order
        self.tables, self.k, self.viewed = tables, k, viewed

    @staticmethod
    def _offer(ids: Any, source: str, code: str) -> Any:
        import numpy as np

        from pipelines.pharmacy.served import Candidates

        return Candidates(ids, np.zeros(len(ids), np.float32), source, code)

    def family(self, row: Any, family: str) -> None:
        row.offer(self._offer(self.scored[family][self.i], family, family), self.k)

    def personal(self, row: Any) -> Any:
        if self.covers["gpt4rec"][self.i]:  # served: GPT4Rec is asked for warm sessions only
            return self._offer(self.scored["gpt4rec"][self.i], "gpt4rec", "personal")
        return None

    def history(self, row: Any) -> Any:
        """The user's stored vector's list: GPT4Rec after the same history, asked for every user (module note)."""
        return self._offer(self.scored["gpt4rec"][self.i], "user_vectors", "history")

    def complements(self, row: Any) -> Any:
        return self._offer(self.scored["rules"][self.i], "rules", "complements")

    def substitutes(self, row: Any) -> Any:
        if self.viewed is None:
            return None
        return self._offer(self.tables.substitutes(self.viewed), "substitutes", "substitutes")

    def popular(self, row: Any, limit: int | None) -> None:
        row.offer(self._offer(self.popular_order, "popularity", "popular"), self.k, limit)

    def refills(self, row: Any) -> None:
        """Nothing: a refill needs purchase dates, which the simulated histories do not model (module note)."""

    def offers(self) -> dict[str, Any]:
        return {"personal": self.personal, "history": self.history, "complements": self.complements,
                "substitutes": self.substitutes, "refills": self.refills}


def run_placements(users: int, overrides: list[str], out_dir: Path | None = None) -> Path:
    import numpy as np

    from benchmarks.common import REPORTS, load_dataset, write_report
    from benchmarks.quality import fit_families
    from pipelines.core.config import Paths, load_settings
    from pipelines.data.sequences import build_sequences
    from pipelines.evaluate import metrics
    from pipelines.evaluate.slices import training_interactions
    from pipelines.pharmacy.catalogue import build_placement_tables
    from pipelines.pharmacy.served import SafetyPolicy, ServedList, fill_blend, parse_blend
    from pipelines.repository.companions import policy_rules, safety_tables
    from pipelines.repository.models import WARM_MIN_INTERACTIONS

    settings = load_settings(overrides=overrides)
    name, world, truth = load_dataset("synthetic", settings)
    n = len(world.catalogue)
    seqs = build_sequences(world.events, n)
    k = settings.evaluate.k
    # the tables and rules deploy builds for the served recommend (params.yaml policy, its interaction table)
    policy = SafetyPolicy(safety_tables(settings.policy, Paths(), world.catalogue, n), policy_rules(settings.policy))
    placement_tables = build_placement_tables(world.catalogue, n, settings.refills)
    blends = {p: parse_blend(text) for p, text in settings.placements.blends().items()}
    requests = _requests(seqs, users, np.random.default_rng(settings.data.seed))
    models = {family: model for family, model, _ in fit_families(PLACEMENT_FAMILIES, seqs, world.catalogue, settings)}
    popular_order = np.argsort(-models["popularity"].score([np.zeros(0, np.int64)])[0][1:], kind="stable") + 1

    interactions = training_interactions(seqs)

    def candidates(family: str, sessions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(best CANDIDATES ids per session by the family's full-sort scores, seen items masked; whether the
        family covers the session)."""
        out, covers = [], []
        for lo in range(0, len(sessions), 1024):
            batch = sessions[lo:lo + 1024]
            raw = models[family].score(batch)
            out.append(metrics.top_k(metrics.mask_scores(raw, batch, True), CANDIDATES))
            if family == "rules":
                covers.append((raw - models[family].fallback > 0).sum(axis=1) >= k // 2)
            elif family == "popularity":
                covers.append(np.ones(len(batch), dtype=bool))
            else:
                covers.append(np.array([bool((interactions[h] >= WARM_MIN_INTERACTIONS).any()) for h in batch]))
        return np.concatenate(out), np.concatenate(covers)

    rows: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    for placement in SIMULATED_PLACEMENTS:
        shaped = [_shape(q, placement) for q in requests]
        model_inputs = [np.concatenate([s, c]) for s, c in shaped]  # the cart page reads the cart last
        lists: dict[str, dict[int, list[int]]] = {}
        covered: dict[str, int] = {}
        started = time.perf_counter()
        scored, covers = {}, {}
        for f in PLACEMENT_FAMILIES:
            scored[f], covers[f] = candidates(f, model_inputs)
        for f in PLACEMENT_FAMILIES:
            lists[f], covered[f] = {}, 0
        lists[BLENDED], covered[BLENDED] = {}, 0
        for i, (q, (session, cart)) in enumerate(zip(requests, shaped, strict=True)):
            records = np.union1d(q["records"], session[-1:]) if placement == "product" else q["records"]
            context = policy.context(session=session, cart=cart, records=records)
            exclude = np.union1d(np.union1d(session, cart), q["records"])
            sources = _Sources(scored, covers, i, popular_order, placement_tables, k,
                               viewed=int(session[-1]) if placement == "product" and len(session) else None)
            for f in PLACEMENT_FAMILIES:
                row = ServedList(exclude, policy, context)
                sources.family(row, f)
                covered[f] += bool(covers[f][i])
                sources.popular(row, None)
                lists[f][q["user"]] = row.ids
            row = ServedList(exclude, policy, context)
            fill_blend(row, blends[placement], sources.offers(), sources.popular, k)
            covered[BLENDED] += sum(code != "popular" for code in row.codes) >= k // 2
            lists[BLENDED][q["user"]] = row.ids
        timings[placement] = time.perf_counter() - started
        base = truth.estimate(lists["popularity"], seed=settings.data.seed)
        rows[placement] = {}
        for f, per_user in lists.items():
            b = truth.estimate(per_user, seed=settings.data.seed)
            rows[placement][f] = {
                "ctr": b["ctr"], "add_to_cart_rate": b["add_to_cart_rate"], "purchase_rate": b["purchase_rate"],
                "ctr_vs_static": b["ctr"] / base["ctr"] - 1 if base["ctr"] else 0.0,
                "add_to_cart_vs_static": b["add_to_cart_rate"] / base["add_to_cart_rate"] - 1
                if base["add_to_cart_rate"] else 0.0,
                "purchase_vs_static": b["purchase_rate"] / base["purchase_rate"] - 1 if base["purchase_rate"] else 0.0,
                "coverage": covered[f] / len(requests), "lists": b["lists"]}
        typer.echo(f"  {placement}: {len(requests)} requests, {timings[placement]:.1f}s")
    out_dir = out_dir or REPORTS
    payload = {"dataset": name, "users": len(requests), "k": k, "candidates_per_family": CANDIDATES,
               "blends": {p: b for p, b in settings.placements.blends().items() if p in SIMULATED_PLACEMENTS}, "policy": policy.rules.checks(),
               "seconds_per_placement": timings, "placements": rows}
    path = write_report("placements", payload, _markdown(payload), out_dir)
    _plot(rows, out_dir / "placements.png")  # after the report: it records the commit of a clean tree
    return path


def _markdown(payload: dict[str, Any]) -> str:
    lines = ["# Placements: lists as served, shown to the generated world's simulated users", "",
             (f"{payload['users']} test users per placement, top-{payload['k']} lists through the safety policy "
              f"({payload['policy']}); rates per shown item, lifts relative to the static popularity list of the "
              "same placement. Coverage: requests a family can answer from what it learned (rules: half a list of "
              "rules fire; learned models: a warm item; blend: its non-static sources fill half the list)."), "",
             f"Blends: {payload['blends']}", ""]
    for placement, rows in payload["placements"].items():
        lines += [f"## {placement}", "", ("| family | CTR | add-to-cart | purchase | CTR vs static | ATC vs static | "
                  "purchase vs static | coverage |"), "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {f} | {m['ctr']:.4f} | {m['add_to_cart_rate']:.4f} | {m['purchase_rate']:.4f} | "
                  f"{m['ctr_vs_static']:+.0%} | {m['add_to_cart_vs_static']:+.0%} | {m['purchase_vs_static']:+.0%} | "
                  f"{m['coverage']:.0%} |" for f, m in rows.items()]
        lines.append("")
    return "\n".join(lines)


def _plot(rows: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Per placement, CTR and purchase lift over the static list for each family (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipelines.track.plots import save_figure

    placements = list(rows)
    fig, axes = plt.subplots(1, len(placements), figsize=(5 * len(placements), 4), sharey=True)
    for ax, placement in zip(np.atleast_1d(axes), placements, strict=True):
        families = list(rows[placement])
        x = np.arange(len(families))
        ax.bar(x - 0.2, [100 * rows[placement][f]["ctr_vs_static"] for f in families], 0.4, label="CTR")
        ax.bar(x + 0.2, [100 * rows[placement][f]["purchase_vs_static"] for f in families], 0.4, label="purchase")
        ax.set_xticks(x, families, rotation=35, ha="right")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(placement)
    np.atleast_1d(axes)[0].set_ylabel("% vs the static list")
    np.atleast_1d(axes)[0].legend()
    save_figure(fig, path)


def register(bench: typer.Typer) -> None:
    @bench.command("placements")
    def placements(
        users: Annotated[int, typer.Option(min=10, help="test users (one request each) per placement")] = 3000,
        set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="param override section.key=value")] = None,
    ) -> None:
        """Each placement per family and blended, through the safety policy, to simulated users: reports/placements.*"""
        path = run_placements(users, set_ or [])
        typer.echo(path.with_suffix(".md").read_text())
        typer.echo(f"written: {path}")
