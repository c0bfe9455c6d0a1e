"""Prod2Vec: word2vec (skip-gram, negative sampling) over DeepWalk walks of the item graph."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipelines.core.config import GraphSettings, Prod2VecSettings
from pipelines.graph.cooccurrence import cooccurrence_graph
from pipelines.graph.walks import WalkSampler

VECTORS_FILE = "vectors.npy"
SPARSE_VECTORS_FILE = "vectors.npz"
META_FILE = "meta.json"


@dataclass
class ItemEmbeddings:
    """Row i is item i's vector (row 0 = padding); `known` marks items that got one.

    `vectors` is dense, or a scipy CSR matrix for sparse methods (TF-IDF). `extra` holds named
    per-item arrays saved next to the table (e.g. Meta-Prod2Vec's field weights).
    """

    vectors: np.ndarray | sp.csr_matrix
    known: np.ndarray
    info: dict
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return self.vectors.shape[0] - 1

    def dense(self) -> np.ndarray:
        """A dense float32 table (for plots and small catalogues)."""
        return self.vectors.toarray().astype(np.float32) if sp.issparse(self.vectors) else self.vectors

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if sp.issparse(self.vectors):
            sp.save_npz(out_dir / SPARSE_VECTORS_FILE, sp.csr_matrix(self.vectors, dtype=np.float32))
        else:
            np.save(out_dir / VECTORS_FILE, self.vectors.astype(np.float32))
        np.save(out_dir / "known.npy", self.known)
        for name, array in self.extra.items():
            np.save(out_dir / f"{name}.npy", array)
        (out_dir / META_FILE).write_text(json.dumps({**self.info, "extra": sorted(self.extra)}, indent=2))

    @classmethod
    def load(cls, in_dir: Path) -> ItemEmbeddings:
        if not (in_dir / META_FILE).exists():
            raise FileNotFoundError(f"{in_dir} holds no embedding table ({META_FILE} missing): run its stage first")
        info = json.loads((in_dir / META_FILE).read_text())
        extra_names = info.pop("extra", [])
        sparse_file = in_dir / SPARSE_VECTORS_FILE
        vectors = sp.load_npz(sparse_file).tocsr() if sparse_file.exists() else np.load(in_dir / VECTORS_FILE)
        return cls(
            vectors=vectors,
            known=np.load(in_dir / "known.npy"),
            info=info,
            extra={name: np.load(in_dir / f"{name}.npy") for name in extra_names},
        )


@dataclass
class Walks:
    """The walks of the item graph, with the graph they came from and how long each step took."""

    walks: np.ndarray  # (n_walks, length) int32 item ids
    graph: sp.csr_matrix
    sampler: WalkSampler
    timings: dict[str, float]


def make_walks(
    histories: Sequence[np.ndarray],
    n_items: int,
    graph_s: GraphSettings,
    seed: int,
    token_weights: Sequence[np.ndarray] | None = None,
) -> Walks:
    """Co-occurrence graph of the training histories, then balanced DeepWalk walks over it."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    graph = cooccurrence_graph(histories, n_items, graph_s.window, token_weights)
    timings["graph_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    sampler = WalkSampler(graph)
    starts = sampler.start_nodes(graph_s.walks_per_node, graph_s.popular_share, rng)
    walks = sampler.walk(starts, graph_s.walk_length, rng)
    timings["walks_s"] = time.perf_counter() - t
    if len(walks) == 0:
        raise ValueError("the item graph has no edges: the training histories hold no two items within "
                         f"graph.window={graph_s.window} of each other")
    return Walks(walks=walks, graph=graph, sampler=sampler, timings=timings)


def item_tokens(n_items: int) -> np.ndarray:
    """Item id -> its word2vec token, one shared string per item (a corpus of millions of words holds pointers)."""
    return np.array([str(i) for i in range(n_items + 1)], dtype=object)


def skipgram(corpus: list[list[str]], *, dim: int, window: int, negative: int, min_count: int, workers: int,
             seed: int, alpha: float = 0.025, sample: float = 1e-3) -> Any:
    """A gensim skip-gram (negative sampling) with its vocabulary built from `corpus`, not yet trained."""
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=dim, window=window, sg=1, negative=negative, alpha=alpha, sample=sample,
                     min_count=min_count, workers=workers, seed=seed)
    model.build_vocab(corpus)
    return model


def train_skipgram(model: Any, corpus: list[list[str]], epochs: int, desc: str) -> None:
    """Train `model` on `corpus` with a progress bar per epoch: at a 100,000-product world one run is minutes
    of gensim work that otherwise shows nothing."""
    from gensim.models.callbacks import CallbackAny2Vec
    from tqdm import tqdm

    class EpochBar(CallbackAny2Vec):
        def __init__(self, bar: tqdm) -> None:
            self.bar = bar

        def on_epoch_end(self, model: Any) -> None:
            self.bar.update(1)

    with tqdm(total=epochs, desc=desc, unit="epoch", mininterval=0) as bar:
        model.train(corpus, total_examples=len(corpus), epochs=epochs, callbacks=[EpochBar(bar)])
    model.callbacks = ()  # the bar is closed: keep it out of anything that pickles the model


def word2vec_on_walks(walks: np.ndarray, n_items: int, w2v: Prod2VecSettings, seed: int) -> tuple[
        np.ndarray, np.ndarray, dict[str, float]]:
    """gensim skip-gram with negative sampling; (vectors, known, timings incl. words/s)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    corpus = item_tokens(n_items)[walks].tolist()
    timings["corpus_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = skipgram(corpus, dim=w2v.dim, window=w2v.window, negative=w2v.negative, min_count=w2v.min_count,
                     workers=w2v.workers, seed=seed)
    timings["vocab_s"] = time.perf_counter() - t
    t = time.perf_counter()
    train_skipgram(model, corpus, w2v.epochs, "prod2vec word2vec")
    timings["word2vec_s"] = time.perf_counter() - t
    timings["word2vec_words_per_s"] = walks.size * w2v.epochs / max(timings["word2vec_s"], 1e-9)

    vectors = np.zeros((n_items + 1, w2v.dim), dtype=np.float32)
    known = np.zeros(n_items + 1, dtype=bool)
    tokens = np.fromiter((int(k) for k in model.wv.index_to_key), dtype=np.int64, count=len(model.wv))
    vectors[tokens] = model.wv.vectors
    known[tokens] = True
    return vectors, known, timings


def train_prod2vec(
    histories: list[np.ndarray],
    n_items: int,
    graph_s: GraphSettings,
    w2v: Prod2VecSettings,
    seed: int,
    token_weights: Sequence[np.ndarray] | None = None,
    walks: Walks | None = None,
) -> ItemEmbeddings:
    """Graph -> walks -> word2vec; returns the table and the wall time of each step."""
    walks = walks or make_walks(histories, n_items, graph_s, seed, token_weights)
    vectors, known, w2v_timings = word2vec_on_walks(walks.walks, n_items, w2v, seed)
    timings = {**walks.timings, **w2v_timings}
    info = {
        "method": "prod2vec",
        "n_nodes": len(walks.sampler.nodes),
        "n_edges": int(walks.graph.nnz),
        "n_walks": len(walks.walks),
        "n_known_items": int(known.sum()),
        **{k: round(v, 3) for k, v in timings.items()},
    }
    return ItemEmbeddings(vectors=vectors, known=known, info=info)
