"""The served model's tensor contract, shared by export, the Triton repository writer and the client.

numpy is its only dependency: the TensorRT build Job ships this file beside gpu/tensorrt.py.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

INPUT_NAME = "input_ids"  # int64 (batch, length), sessions left-padded with 0
# int64 (batch, length) aligned with input_ids: event kind codes (1 view, 2 click, 3 add_to_cart,
# 4 purchase; 0 unknown/padding). Only models trained with event kinds have it; optional when served.
EVENT_TYPES_NAME = "event_types"
OUTPUT_IDS = "item_ids"  # int64 (batch, k), best first
OUTPUT_SCORES = "scores"  # float32 (batch, k)
MODEL_FILE = "model.onnx"
PADDING = 0  # the item id (and event kind code) that fills the left of short sessions
#: Relative score difference below which two items are a tie (runtimes may order them either way).
TIE_TOLERANCE = 1e-5

# ONNX metadata_props keys written by pipelines/export/onnx.py (values are strings).
N_ITEMS = "n_items"  # item ids are 1..n_items
MAX_LEN = "max_len"  # longest session the model reads (longer ones keep their last max_len items)
TOP_K = "top_k"  # columns of item_ids and scores
MASK_SEEN = "mask_seen"  # "true": the session's own items are never recommended
EVENT_KINDS = "event_kinds"  # number of event kind codes; 0 = the graph has no event_types input


def left_pad(histories: Sequence[Sequence[int] | np.ndarray], length: int | None = None, *,
             width: int | None = None) -> np.ndarray:
    """The last `length` items of each history (all when None), left-padded with 0 into int64 rows.

    Rows are as wide as the longest kept history (at least 1), or exactly `width` when given, so
    callers that need a fixed shape (training, an optimisation profile) get it from the same rule.
    Raises ValueError for a length or width below 1 or a width narrower than a kept history, and
    OverflowError for an id that does not fit int64.
    """
    if length is not None and length < 1:
        raise ValueError(f"length must be a positive integer or None, got {length!r}")
    kept = [history[-length:] if length is not None else history for history in histories]
    longest = max((len(row) for row in kept), default=0)
    if width is None:
        width = max(1, longest)
    elif width < max(1, longest):
        raise ValueError(f"width {width} is narrower than the longest kept history ({longest} items)")
    out = np.full((len(kept), width), PADDING, dtype=np.int64)
    for row, items in enumerate(kept):
        if len(items):
            out[row, width - len(items):] = items
    return out


@dataclass(frozen=True)
class ModelMetadata:
    """What a served recommendation model says about itself in its ONNX metadata_props."""

    n_items: int
    max_len: int
    top_k: int
    mask_seen: bool = True
    event_kinds: int = 0  # models exported before event kinds existed lack the key

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "the ONNX model") -> ModelMetadata:
        """Parse metadata_props; ValueError naming `source` and the key for anything missing or invalid."""
        def integer(key: str, lowest: int, default: int | None = None) -> int:
            raw = props.get(key)
            if raw is None and default is not None:
                return default
            if raw is None:
                raise ValueError(f"{source} lacks ONNX metadata {key!r}: export it with pipelines/export/onnx.py")
            if not str(raw).strip().isdigit() or int(raw) < lowest:
                raise ValueError(f"{source} has ONNX metadata {key}={raw!r}: expected an integer >= {lowest}")
            return int(raw)

        mask = str(props.get(MASK_SEEN, "true")).lower()
        if mask not in ("true", "false"):
            raise ValueError(f"{source} has ONNX metadata {MASK_SEEN}={mask!r}: expected 'true' or 'false'")
        return cls(n_items=integer(N_ITEMS, 1), max_len=integer(MAX_LEN, 1), top_k=integer(TOP_K, 1),
                   mask_seen=mask == "true", event_kinds=integer(EVENT_KINDS, 0, default=0))

    def to_props(self) -> dict[str, str]:
        """The metadata_props entries export writes (the inverse of from_props)."""
        return {N_ITEMS: str(self.n_items), MAX_LEN: str(self.max_len), TOP_K: str(self.top_k),
                MASK_SEEN: str(self.mask_seen).lower(), EVENT_KINDS: str(self.event_kinds)}


Shape = tuple[int, ...]


def profile_shapes(dims: Sequence[int | str | None], *, max_batch: int, opt_batch: int, max_len: int | None,
                   name: str = "input") -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) shapes of one batch-first input for a GPU optimisation profile.

    Dimension 0 is the batch (1..max_batch, tuned for opt_batch) unless fixed; every other dynamic
    dimension (-1, None or a symbolic name) is a session length 1..max_len, tuned for the longest.
    Both TensorRT builds (the plan Job, ONNX Runtime's TensorRT accelerator) use these shapes.
    """
    if not dims:
        raise ValueError(f"{name!r} is a scalar: the first dimension must be the batch")
    lo: list[int] = []
    opt: list[int] = []
    hi: list[int] = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and dim > 0:
            lo.append(dim), opt.append(dim), hi.append(dim)
        elif axis == 0:
            lo.append(1), opt.append(min(opt_batch, max_batch)), hi.append(max_batch)
        elif max_len is None:
            raise ValueError(f"input {name!r} has a dynamic length but the ONNX model has no {MAX_LEN} "
                             "metadata: the optimization profile needs its upper bound")
        else:
            lo.append(1), opt.append(max_len), hi.append(max_len)
    return tuple(lo), tuple(opt), tuple(hi)


def disagreeing_rows(ref_ids: np.ndarray, ref_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray,
                     tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Rows (bool mask) where a top-k list is not the reference's, allowing near-ties to swap.

    Both lists are sorted best first. Per rank, the score must equal the reference's score at that
    rank within `tolerance` (relative, absolute below 1); an item in both lists must carry the same
    score; an item only in `ids` must score within tolerance of the reference's k-th (it traded the
    last slots in a near-tie). Used by export parity (torch vs ONNX), the TensorRT engine check and
    the served-model check (Triton vs ONNX Runtime).
    """
    def close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b) <= tolerance * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))

    ref_ids, ref_scores = np.asarray(ref_ids), np.asarray(ref_scores, dtype=np.float64)
    ids, scores = np.asarray(ids), np.asarray(scores, dtype=np.float64)
    if ids.shape != ref_ids.shape or scores.shape != ref_scores.shape:
        return np.ones(len(ref_ids), dtype=bool)
    bad = ~close(scores, ref_scores).all(axis=1)
    for row in np.flatnonzero(~bad):
        ref = dict(zip(ref_ids[row].tolist(), ref_scores[row].tolist()))
        kth = float(ref_scores[row, -1])
        for item, score in zip(ids[row].tolist(), scores[row].tolist()):
            other = ref.get(item)
            if not bool(close(np.float64(score), np.float64(other if other is not None else kth))):
                bad[row] = True
                break
    return bad
