"""Matrix factorization for implicit feedback: alternating least squares (Hu, Koren, Volinsky 2008).

Why ALS: with binary interactions every update is a small closed-form ridge regression, so it
converges in a few sweeps on a CPU and needs no learning rate. A history is scored by folding it
in (the same closed form as a user update), so users unseen at training time and a live session
are scored exactly like training users.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from tqdm import tqdm

from pipelines.core.config import ParamsSection
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext

FACTORS_FILE = "item_factors.npy"


def interaction_matrix(histories: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary user × item matrix (column 0 = padding, always empty)."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.array([], dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), n_items + 1))
    m.data[:] = 1.0  # duplicates count once
    return m


def _solve_rows(matrix: sp.csr_matrix, other: np.ndarray, alpha: float, reg: float,
                max_cells: int = 2_000_000) -> np.ndarray:
    """Closed-form ALS update of every row of `matrix` against fixed factors `other`.

    Rows go shortest first in chunks of zero-padded (rows, longest, f) blocks, so each row's Gram
    matrix is one batched matmul rather than a sum of per-interaction outer products. A chunk holds
    at most `max_cells` padded entries: a best-selling item with hundreds of thousands of buyers gets
    a chunk of its own instead of padding a thousand rows to its length (memory stays bounded).
    """
    f = other.shape[1]
    padded_other = np.vstack([other, np.zeros((1, f), dtype=other.dtype)]).astype(np.float32)
    pad = len(other)
    gram = (other.T.astype(np.float64) @ other + reg * np.eye(f)).astype(np.float32)
    out = np.zeros((matrix.shape[0], f), dtype=np.float32)
    counts = np.diff(matrix.indptr)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    sorted_counts = counts[order]
    start = 0
    while start < len(order):
        # Sorted by length, a chunk's width is its last row's count: the longest chunk whose rows x width fits.
        stop = max(start + 1, bisect.bisect_right(range(start + 1, len(order) + 1), max_cells,
                                                  key=lambda end: (end - start) * int(sorted_counts[end - 1])) + start)
        rows = order[start:stop]
        width = int(counts[rows[-1]])
        lengths = counts[rows]
        slot = np.repeat(np.arange(len(rows)), lengths)
        offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        index = np.full((len(rows), width), pad, dtype=np.int64)
        index[slot, offset] = matrix.indices[np.repeat(matrix.indptr[rows], lengths) + offset]
        vecs = padded_other[index]  # (rows, width, f); padding rows are zero
        a = gram + alpha * np.matmul(vecs.transpose(0, 2, 1), vecs)
        b = (1.0 + alpha) * vecs.sum(axis=1)
        out[rows] = np.linalg.solve(a, b[..., None])[..., 0]
        start = stop
    return out


class MFSettings(ParamsSection):
    """The `mf:` section of params.yaml."""

    factors: int = Field(32, ge=2)
    iterations: int = Field(8, ge=1)
    alpha: float = Field(40.0, gt=0)
    reg: float = Field(50.0, gt=0)


class MatrixFactorization(Family):
    family = "mf"
    settings_type = MFSettings

    def __init__(self, item_factors: np.ndarray, alpha: float, reg: float) -> None:
        self.item_factors = item_factors.astype(np.float32)
        self.alpha = alpha
        self.reg = reg

    @classmethod
    def fit(cls, seqs: Sequences, s: MFSettings, ctx: FitContext) -> tuple[MatrixFactorization, dict[str, Any]]:
        rng = np.random.default_rng(ctx.seed)
        users = interaction_matrix(seqs.train(), seqs.n_items)
        items = users.T.tocsr()
        item_factors = (rng.standard_normal((seqs.n_items + 1, s.factors)) * 0.01).astype(np.float32)
        for _ in tqdm(range(s.iterations), desc="mf als", disable=not ctx.progress, leave=False):
            user_factors = _solve_rows(users, item_factors, s.alpha, s.reg)
            item_factors = _solve_rows(items, user_factors, s.alpha, s.reg)
        item_factors[0] = 0.0
        return cls(item_factors, s.alpha, s.reg), {}

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        folded = _solve_rows(interaction_matrix(histories, len(self.item_factors) - 1), self.item_factors,
                             self.alpha, self.reg)
        return folded @ self.item_factors.T

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / FACTORS_FILE, self.item_factors)
        (out_dir / "meta.json").write_text(json.dumps({"model": self.family, "alpha": self.alpha, "reg": self.reg}))

    @classmethod
    def load(cls, in_dir: Path) -> MatrixFactorization:
        meta = json.loads((in_dir / "meta.json").read_text())
        return cls(np.load(in_dir / FACTORS_FILE), meta["alpha"], meta["reg"])

