"""Per-user vectors of the sequence model: stored after training, served from the repository.

GPT4Rec scores the next item as the dot product of its last hidden state with that item's vector. The
state after a user's whole history is therefore the user's embedding: stored per user after training
(users.npz in artifacts/models/gpt4rec, logged beside the registered model to its MLflow run as
user_vectors/users.npz, copied from the champion's run into every `recommend` version at deploy), it lets the home page personalise for a
returning user whose current session is empty or short, with a lookup and a top-N over the item table
and no model call.

The top-N is one exact matrix product while the catalogue is small; from `faiss_above_items` catalogue
items on it is a faiss HNSW inner-product search, built when the backend loads (users.faiss_above_items,
hnsw_m, hnsw_ef_search in params.yaml; its recall against the exact list is measured in
tests/models/test_user_vectors.py).

numpy and the standard library only (faiss imported only above that size): the repository writer copies
this file as rxrec_users.py beside the `recommend` backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # in the server: the copy of served.py in the same version folder
    from rxrec_pharmacy import NpzTables
except ImportError:  # in the package
    from pipelines.pharmacy.served import NpzTables

USERS_FILE = "users.npz"
# The artifact path of the registered GPT4Rec run that holds them. Not under `model/`: MLflow 3 reads a run path
# named like a logged model ("model") as that model's own artifacts.
USERS_ARTIFACT = "user_vectors"
FAISS_ABOVE_ITEMS = 50_000  # params.yaml users.faiss_above_items
HNSW_M, HNSW_EF_SEARCH = 32, 128


@dataclass(frozen=True)
class UserVectors(NpzTables):
    """The model's state after each user's history, and the item table those states score against."""

    KIND = "user vectors"
    user_ids: np.ndarray  # int64 [n_users], ascending, unique, >= 1 (the data's user ids)
    vectors: np.ndarray  # float32 [n_users, dim]
    item_vectors: np.ndarray  # float32 [n_items + 1, dim]; row 0 is padding

    @property
    def n_items(self) -> int:
        return len(self.item_vectors) - 1

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def check(self) -> None:
        """ValueError naming the array that is wrong."""
        if self.user_ids.ndim != 1 or self.user_ids.dtype != np.int64:
            raise ValueError(f"user_ids must be int64 [n_users], got {self.user_ids.dtype} {list(self.user_ids.shape)}")
        if len(self.user_ids) and (int(self.user_ids[0]) < 1 or (np.diff(self.user_ids) <= 0).any()):
            raise ValueError("user_ids must be ascending, unique and >= 1")
        if self.item_vectors.ndim != 2 or len(self.item_vectors) < 1:
            raise ValueError(f"item_vectors must be [n_items + 1, dim], got {list(self.item_vectors.shape)}")
        if self.vectors.shape != (len(self.user_ids), self.dim):
            raise ValueError(f"vectors are {list(self.vectors.shape)}, expected [{len(self.user_ids)}, {self.dim}] "
                             "(one per user id, as wide as the item vectors)")
        for name in ("vectors", "item_vectors"):
            array = getattr(self, name)
            if array.dtype != np.float32 or not np.isfinite(array).all():
                raise ValueError(f"{name} must be finite float32, got {array.dtype}")

    @classmethod
    def build(cls, user_ids: np.ndarray, vectors: np.ndarray, item_vectors: np.ndarray) -> UserVectors:
        """From vectors in any user order (sorted here by id)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        order = np.argsort(user_ids, kind="stable")
        users = cls(user_ids[order], np.ascontiguousarray(vectors[order], dtype=np.float32),
                    np.ascontiguousarray(item_vectors, dtype=np.float32))
        users.check()
        return users

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """The row of each user id, -1 for a user this table does not hold (new since training, or 0 = anonymous)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if not len(self.user_ids):
            return np.full(len(user_ids), -1, dtype=np.int64)
        at = np.searchsorted(self.user_ids, user_ids).clip(max=len(self.user_ids) - 1)
        return np.where(self.user_ids[at] == user_ids, at, -1)

    def scores(self, row: int, item_ids: np.ndarray) -> np.ndarray:
        """The exact scores of given items for the user in `row` (the search re-rank reads a handful)."""
        return self.item_vectors[np.asarray(item_ids, dtype=np.int64)] @ self.vectors[row]


class UserRetrieval:
    """The best catalogue items for given user vectors: exact, or faiss HNSW from `faiss_above_items` items on."""

    def __init__(self, users: UserVectors, offerable: np.ndarray, faiss_above_items: int = FAISS_ABOVE_ITEMS,
                 hnsw_m: int = HNSW_M, hnsw_ef_search: int = HNSW_EF_SEARCH) -> None:
        """`offerable`: bool per item id 0..n_items (the catalogue); other ids are never returned."""
        if len(offerable) != users.n_items + 1:
            raise ValueError(f"offerable covers {len(offerable) - 1} items, the user vectors' item table "
                             f"{users.n_items}")
        self.ids = np.flatnonzero(np.asarray(offerable, dtype=bool))
        self.ids = self.ids[self.ids > 0]  # index row -> item id
        self.table = np.ascontiguousarray(users.item_vectors[self.ids], dtype=np.float32)
        self.approximate = len(self.ids) >= faiss_above_items
        self.index = None
        if self.approximate:
            import faiss

            self.index = faiss.IndexHNSWFlat(users.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = max(hnsw_ef_search, 1)
            self.index.add(self.table)

    def top(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, scores) [batch, n], best first, -1 / 0 padding where fewer items exist."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        n_out = max(0, min(n, len(self.ids)))
        ids = np.full((len(vectors), n), -1, dtype=np.int64)
        scores = np.zeros((len(vectors), n), dtype=np.float32)
        if n_out == 0 or len(vectors) == 0:
            return ids, scores
        if self.index is not None:
            self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, n_out)
            found, rows = self.index.search(vectors, n_out)
            ids[:, :n_out] = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
            scores[:, :n_out] = np.where(rows >= 0, found, 0.0)
            return ids, scores
        all_scores = vectors @ self.table.T
        part = np.argpartition(-all_scores, n_out - 1, axis=1)[:, :n_out]
        order = np.argsort(-np.take_along_axis(all_scores, part, axis=1), axis=1, kind="stable")
        rows = np.take_along_axis(part, order, axis=1)
        ids[:, :n_out] = self.ids[rows]
        scores[:, :n_out] = np.take_along_axis(all_scores, rows, axis=1)
        return ids, scores
