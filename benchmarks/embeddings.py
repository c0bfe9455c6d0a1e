"""`rxrec bench embeddings`: every item-embedding method on one similar-products protocol.

Given a user's previous item, rank the next one by cosine similarity against all items (seen
items masked, through the one evaluation protocol); HR@10, NDCG@10 over all users, on the
cold-start slice (targets with at most `evaluate.cold_max_interactions` training interactions) and
on the unseen slice (targets absent from every training history). Popularity is the reference row. `--dataset synthetic` generates the
world from params.yaml; a path reads S3-Rec files (`user item item ...` per line, plus
`<stem>_item2attributes.json` next to it, e.g. ../shared/datasets/amazon-beauty/Beauty.txt).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

SAME_WORDS = "prod2vec_2x_epochs"  # the control row: Prod2Vec on as many words as Meta-Prod2Vec trains


def run_embeddings_benchmark(seqs, catalogue, events, settings) -> dict[str, Any]:
    """Train every method on the training histories, score each on the test split; timings per step."""
    from pipelines.embed.evaluate import CosineSimilarity, Popularity, evaluate_similarity, similarity_slices
    from pipelines.embed.meta import item_fields, item_texts
    from pipelines.embed.meta_prod2vec import train_meta_prod2vec
    from pipelines.embed.prod2vec import make_walks, train_prod2vec
    from pipelines.embed.text import train_text_encoder, train_tfidf
    from pipelines.evaluate.slices import training_interactions
    from pipelines.graph.cooccurrence import token_weights

    s = settings
    train = seqs.train()
    k = s.evaluate.k
    protocol = {"k": k, "mask_seen": s.evaluate.mask_seen, "cold_max_interactions": s.evaluate.cold_max_interactions}
    methods: dict[str, dict[str, Any]] = {}

    def score(name: str, emb, seconds: float, extra: dict[str, Any] | None = None) -> None:
        t = time.perf_counter()
        m = evaluate_similarity(CosineSimilarity(name, emb.vectors, emb.known), seqs, **protocol)
        methods[name] = {**m, "train_s": round(seconds, 2), "evaluate_s": round(time.perf_counter() - t, 2),
                         "items_with_vector": int(emb.known.sum()), **(extra or {})}
        typer.echo(f"  {name:<14} hr@{k} {m[f'hr_at_{k}']:.4f}  ndcg@{k} {m[f'ndcg_at_{k}']:.4f}  "
                   f"cold_hr@{k} {m[f'cold_hr_at_{k}']:.4f}  unseen_hr@{k} {m[f'unseen_hr_at_{k}']:.4f}  "
                   f"({seconds:.1f} s)")

    methods["popularity"] = evaluate_similarity(Popularity(train, seqs.n_items), seqs, **protocol)
    typer.echo(f"  popularity     hr@{k} {methods['popularity'][f'hr_at_{k}']:.4f}  "
               f"cold_hr@{k} {methods['popularity'][f'cold_hr_at_{k}']:.4f}")
    texts = item_texts(catalogue, seqs.n_items)
    t = time.perf_counter()
    score("tfidf", train_tfidf(texts, s.tfidf), time.perf_counter() - t)
    t = time.perf_counter()
    emb = train_text_encoder(texts, s.text_encoder, s.data.seed)
    score("text_encoder", emb, time.perf_counter() - t, {"timings": {k_: v for k_, v in emb.info.items()
                                                                      if k_.endswith("_s")}})
    t = time.perf_counter()
    weights = None
    if events is not None:
        weights = token_weights(seqs.user_ids, train, events, s.graph.event_weights)
    walks = make_walks(train, seqs.n_items, s.graph, s.data.seed, weights)
    emb = train_prod2vec(train, seqs.n_items, s.graph, s.prod2vec, s.data.seed, walks=walks)
    split = {key: emb.info[key] for key in ("graph_s", "walks_s", "corpus_s", "vocab_s", "word2vec_s")}
    score("prod2vec", emb, time.perf_counter() - t, {"timings": split, "walks": len(walks.walks),
                                                     "word2vec_words_per_s": emb.info["word2vec_words_per_s"]})
    # The control Meta-Prod2Vec must be read against: it trains the walks plus their meta copies, twice
    # Prod2Vec's words, so Prod2Vec also runs with twice the epochs (same words, no meta).
    t = time.perf_counter()
    emb = train_prod2vec(train, seqs.n_items, s.graph, s.prod2vec.model_copy(update={"epochs": 2 * s.prod2vec.epochs}),
                         s.data.seed, walks=walks)
    score(SAME_WORDS, emb, time.perf_counter() - t + split["graph_s"] + split["walks_s"],
          {"epochs": 2 * s.prod2vec.epochs})
    t = time.perf_counter()
    fields = item_fields(catalogue, seqs.n_items, s.meta_prod2vec.fields, s.meta_prod2vec.text_vocab)
    fields_s = time.perf_counter() - t
    emb = train_meta_prod2vec(walks.walks, fields, s.meta_prod2vec, s.data.seed,
                              interactions=training_interactions(seqs))
    score("meta_prod2vec", emb, time.perf_counter() - t,
          {"timings": {"fields_s": round(fields_s, 2), "train_s": emb.info["train_s"],
                       "walks_s (shared with prod2vec)": split["walks_s"]},
           "words_per_s": emb.info["words_per_s"], "field_importance": emb.info["field_importance"]})
    return {"protocol": {"query": "the user's previous item", "ranking": "cosine similarity against all items",
                         "split": "test: each user's last item (leave-one-out by time)", "k": k,
                         "mask_seen": s.evaluate.mask_seen, **similarity_slices(s.evaluate.cold_max_interactions)},
            "data": {"users": len(seqs), "items": seqs.n_items,
                     "evaluated_users": int(methods["popularity"]["n_users"]),
                     "warm_users": int(methods["popularity"]["n_warm_users"]),
                     "cold_users": int(methods["popularity"]["n_cold_users"]),
                     "unseen_users": int(methods["popularity"]["n_unseen_users"])},
            "methods": methods}


def _meta_vs_prod2vec(methods: dict[str, dict[str, Any]], k: int) -> str:
    """The verdict the seed's headline embedding is judged by: at least Prod2Vec on warm targets, above it on cold;
    and the same against Prod2Vec trained on as many words, which tells the meta tokens from the extra training."""
    meta = methods["meta_prod2vec"]
    lines = []
    for label, other in (("Prod2Vec", methods["prod2vec"]), (f"{SAME_WORDS} (as many words, no meta)",
                                                             methods.get(SAME_WORDS))):
        if other is None:
            continue
        warm = meta[f"warm_hr_at_{k}"] - other[f"warm_hr_at_{k}"]
        cold = meta[f"cold_hr_at_{k}"] - other[f"cold_hr_at_{k}"]
        verdict = "holds" if warm >= 0 and cold > 0 else "does NOT hold"
        lines.append(f"Meta-Prod2Vec against {label}: warm HR@{k} {warm:+.4f}, cold HR@{k} {cold:+.4f}; "
                     f"warm >= 0 and cold > 0 {verdict}.")
    return "\n\n".join(lines)


def register(bench: typer.Typer) -> None:
    @bench.command("embeddings")
    def embeddings(
        dataset: Annotated[str, typer.Option(help="synthetic, or a path to S3-Rec data (file or folder)")] = "synthetic",
        set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a param: section.key=value")] = None,
    ) -> None:
        """HR@10 / NDCG@10 / cold-start and unseen HR@10 of TF-IDF, text encoder, Prod2Vec, Meta-Prod2Vec."""
        from benchmarks.common import write_report
        from pipelines.core.config import load_settings

        settings = load_settings(overrides=set_ or [])
        started = time.perf_counter()
        from benchmarks.common import load_dataset
        from pipelines.data.sequences import build_sequences

        name, world, _ = load_dataset(dataset, settings)
        catalogue, events = world.catalogue, world.events
        seqs = build_sequences(events, n_items=int(catalogue["item_id"].max()))
        typer.echo(f"{name}: {len(seqs)} users, {seqs.n_items} items")
        result = run_embeddings_benchmark(seqs, catalogue, events, settings)
        result["dataset"] = name
        result["wall_s"] = round(time.perf_counter() - started, 1)
        k = settings.evaluate.k
        lines = [f"# Similar products on {name} (previous item -> next, cosine, all-item ranking)\n",
                 f"| method | HR@{k} | NDCG@{k} | warm HR@{k} | cold HR@{k} | unseen HR@{k} | train s |",
                 "|---|---|---|---|---|---|---|"]
        for method, m in result["methods"].items():
            lines.append(f"| {method} | {m[f'hr_at_{k}']:.4f} | {m[f'ndcg_at_{k}']:.4f} | {m[f'warm_hr_at_{k}']:.4f} | "
                         f"{m[f'cold_hr_at_{k}']:.4f} | {m[f'unseen_hr_at_{k}']:.4f} | {m.get('train_s', 0):.1f} |")
        lines.append(f"\n{result['data']['evaluated_users']} users evaluated, "
                     f"{result['data']['warm_users']} with a warm target, "
                     f"{result['data']['cold_users']} with a cold-start target "
                     f"(<= {settings.evaluate.cold_max_interactions} training interactions), "
                     f"{result['data']['unseen_users']} with an unseen one.")
        lines += ["", _meta_vs_prod2vec(result["methods"], k)]
        path = write_report(f"embeddings-{name}", result, "\n".join(lines))
        typer.echo("\n".join(lines))
        typer.echo(f"wrote {path}")
