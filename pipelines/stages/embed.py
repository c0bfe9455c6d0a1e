"""Embedding stages: each item-embedding method, then all of them on the similar-products protocol."""

from __future__ import annotations

from typing import Any

from pipelines.core.config import Paths, Settings


def prod2vec(s: Settings, p: Paths) -> dict[str, Any]:
    """Event-weighted co-occurrence graph of training histories, DeepWalk walks, gensim word2vec."""
    from pipelines.embed.pipeline import run_prod2vec

    return run_prod2vec(s, p)


def tfidf(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.pipeline import run_tfidf

    return run_tfidf(s, p)


def text_encoder(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.pipeline import run_text_encoder

    return run_text_encoder(s, p)


def meta_prod2vec(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.embed.pipeline import run_meta_prod2vec

    return run_meta_prod2vec(s, p)


def similar_products(s: Settings, p: Paths) -> dict[str, Any]:
    """Every embedding method on one similar-products protocol, plus the top-k neighbour table."""
    from pipelines.embed.pipeline import run_similar_products

    return run_similar_products(s, p)
