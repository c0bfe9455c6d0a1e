"""Prod2Vec: word2vec (skip-gram, negative sampling) over DeepWalk walks of the item graph."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gensim.models import Word2Vec

from pipelines.config import GraphSettings, Prod2VecSettings
from pipelines.graph.cooccurrence import cooccurrence_graph
from pipelines.graph.walks import WalkSampler

VECTORS_FILE = "vectors.npy"
META_FILE = "meta.json"


@dataclass
class ItemEmbeddings:
    """Row i is item i's vector (row 0 = padding); `known` marks items that got one."""

    vectors: np.ndarray
    known: np.ndarray
    info: dict

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / VECTORS_FILE, self.vectors.astype(np.float32))
        np.save(out_dir / "known.npy", self.known)
        (out_dir / META_FILE).write_text(json.dumps(self.info, indent=2))

    @classmethod
    def load(cls, in_dir: Path) -> ItemEmbeddings:
        return cls(
            vectors=np.load(in_dir / VECTORS_FILE),
            known=np.load(in_dir / "known.npy"),
            info=json.loads((in_dir / META_FILE).read_text()),
        )


def train_prod2vec(
    histories: list[np.ndarray], n_items: int, graph_s: GraphSettings, w2v: Prod2VecSettings, seed: int
) -> ItemEmbeddings:
    """Graph -> walks -> word2vec; returns the table and the wall time of each step."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    graph = cooccurrence_graph(histories, n_items, graph_s.window)
    timings["graph_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    sampler = WalkSampler(graph)
    starts = sampler.start_nodes(graph_s.walks_per_node, graph_s.popular_share, rng)
    walks = sampler.walk(starts, graph_s.walk_length, rng)
    timings["walks_s"] = time.perf_counter() - t

    t = time.perf_counter()
    corpus = [[str(i) for i in w] for w in walks.tolist()]
    model = Word2Vec(
        sentences=corpus,
        vector_size=w2v.dim,
        window=w2v.window,
        sg=1,
        negative=w2v.negative,
        min_count=w2v.min_count,
        epochs=w2v.epochs,
        workers=w2v.workers,
        seed=seed,
    )
    timings["word2vec_s"] = time.perf_counter() - t

    vectors = np.zeros((n_items + 1, w2v.dim), dtype=np.float32)
    known = np.zeros(n_items + 1, dtype=bool)
    for token, index in model.wv.key_to_index.items():
        vectors[int(token)] = model.wv.vectors[index]
        known[int(token)] = True
    info = {
        "method": "prod2vec",
        "n_nodes": int(len(sampler.nodes)),
        "n_edges": int(graph.nnz),
        "n_walks": int(len(walks)),
        "n_known_items": int(known.sum()),
        **{k: round(v, 3) for k, v in timings.items()},
    }
    return ItemEmbeddings(vectors=vectors, known=known, info=info)
