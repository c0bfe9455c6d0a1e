"""Item-item association rules: "people who looked at A next looked at B".

Cheap, explainable, and it covers any user with at least one item in the session. A rule A → B
is kept when the pair occurs in at least `min_support` training histories (B within `window`
steps after A); it is scored by confidence P(B | A), optionally multiplied by lift. A history is
scored by summing the rules fired by its most recent items, newest weighted most.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from pipelines.core.config import ParamsSection
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext

RULES_FILE = "rules.npz"


class RulesSettings(ParamsSection):
    """The `rules:` section of params.yaml."""

    window: int = Field(3, ge=1)
    min_support: int = Field(2, ge=1)
    use_lift: bool = False
    recent_items: int = Field(3, ge=1)
    decay: float = Field(0.5, gt=0, le=1)


class AssociationRules(Family):
    family = "rules"
    settings_type = RulesSettings

    def __init__(self, rules: sp.csr_matrix, fallback: np.ndarray, s: RulesSettings) -> None:
        self.rules = rules
        self.fallback = fallback.astype(np.float32)  # popularity, far below any rule's score
        self.settings = s

    @classmethod
    def fit(cls, seqs: Sequences, s: RulesSettings, ctx: FitContext) -> tuple[AssociationRules, dict[str, Any]]:
        model = cls.from_histories(seqs.train(), seqs.n_items, s)
        return model, {"n_rules": int(model.rules.nnz)}

    @classmethod
    def from_histories(cls, histories: list[np.ndarray], n_items: int, s: RulesSettings) -> AssociationRules:
        """The rules mined from these histories (all of each: pass training histories only)."""
        n = n_items + 1
        heads, tails = [], []
        for d in range(1, s.window + 1):
            for h in histories:
                if len(h) > d:
                    heads.append(h[:-d])
                    tails.append(h[d:])
        head = np.concatenate(heads) if heads else np.array([], dtype=np.int64)
        tail = np.concatenate(tails) if tails else np.array([], dtype=np.int64)
        pairs = sp.csr_matrix((np.ones(len(head), np.float32), (head, tail)), shape=(n, n))
        pairs.sum_duplicates()
        pairs.data[pairs.data < s.min_support] = 0
        pairs.eliminate_zeros()
        item_count = np.zeros(n, dtype=np.float64)
        for h in histories:
            np.add.at(item_count, h, 1.0)
        rows = np.repeat(np.arange(n), np.diff(pairs.indptr))
        confidence = pairs.data / np.maximum(item_count[rows], 1.0)
        if s.use_lift:
            p_tail = item_count[pairs.indices] / max(len(histories), 1)
            confidence = confidence / np.maximum(p_tail, 1e-12)
        rules = sp.csr_matrix((confidence.astype(np.float32), pairs.indices, pairs.indptr), shape=(n, n))
        fallback = item_count / (item_count.max() + 1.0) * 1e-3
        fallback[0] = 0.0
        return cls(rules, fallback, s)

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        rows, cols, weights = [], [], []
        for r, h in enumerate(histories):
            recent = h[-self.settings.recent_items:][::-1]
            rows.append(np.full(len(recent), r))
            cols.append(recent)
            weights.append(self.settings.decay ** np.arange(len(recent)))
        n = self.rules.shape[0]
        fired = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(len(histories), n)
        ) if histories else sp.csr_matrix((0, n))
        return np.asarray((fired @ self.rules).todense(), dtype=np.float32) + self.fallback

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        sp.save_npz(out_dir / RULES_FILE, self.rules)
        np.save(out_dir / "fallback.npy", self.fallback)
        (out_dir / "meta.json").write_text(json.dumps({"model": self.family, "n_rules": int(self.rules.nnz),
                                                        **self.settings.model_dump()}))

    @classmethod
    def load(cls, in_dir: Path) -> AssociationRules:
        meta = json.loads((in_dir / "meta.json").read_text())
        settings = RulesSettings(**{k: meta[k] for k in RulesSettings.model_fields})
        return cls(sp.load_npz(in_dir / RULES_FILE).tocsr(), np.load(in_dir / "fallback.npy"), settings)
