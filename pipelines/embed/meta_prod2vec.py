"""Meta-Prod2Vec: skip-gram over the Prod2Vec walks where an item's input vector mixes its id
embedding with its meta-field embeddings through a learned per-item softmax.

    h_i = sum_f a_{i,f} e_{i,f},   a_i = softmax_f(l_{i,f}) over the fields item i has,
    e_{i,0} = E_id[i],  e_{i,f} = mean of the value embeddings of field f on item i

h_i predicts the items around i in a walk (negative sampling, as word2vec). The weights a_{i,f}
say how much each field carries for item i, so the field importance can be read off (1mg found
the item id first, then therapeutic class and uses). A product without interactions has no id
embedding; its vector is the same mix over the fields it has, weighted by the average learned
importance: that is the cold-start embedding, in the same space.

Training is a numba Hogwild loop (threads over blocks of walks, lock-free updates, linearly
decaying learning rate), which is how word2vec itself trains; every walk has its own random
stream, so a single-thread run is fully reproducible.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from tqdm.auto import tqdm

from pipelines.core.config import MetaProd2VecSettings
from pipelines.embed.meta import ItemFields
from pipelines.embed.prod2vec import ItemEmbeddings
from pipelines.graph.walks import _splitmix64 as _next  # the walks' per-walker random stream

_BLOCK = 64  # walks per scheduling unit of the Hogwild loop
_CUM_RESOLUTION = 2**31 - 1


@numba.njit(cache=True, fastmath=True, inline="always")
def _compose(item, ids, values, logits, indptr, value_ids, field_ids, entry_w, known, n_fields, mix, fvec, h,
             present):
    """Fill fvec (field vectors), mix (softmax weights) and h for one item; returns False if it has none."""
    dim = h.shape[0]
    present[:] = False
    fvec[:, :] = 0.0
    if known[item]:
        present[0] = True
        fvec[0, :] = ids[item]
    for e in range(indptr[item], indptr[item + 1]):
        f = field_ids[e]
        present[f] = True
        w = entry_w[e]
        v = value_ids[e]
        for d in range(dim):
            fvec[f, d] += w * values[v, d]
    top = -1e30
    for f in range(n_fields):
        if present[f] and logits[item, f] > top:
            top = logits[item, f]
    if top == -1e30:
        return False
    total = 0.0
    for f in range(n_fields):
        mix[f] = np.exp(logits[item, f] - top) if present[f] else 0.0
        total += mix[f]
    h[:] = 0.0
    for f in range(n_fields):
        mix[f] /= total
        if mix[f] > 0.0:
            for d in range(dim):
                h[d] += mix[f] * fvec[f, d]
    return True


@numba.njit(cache=True, parallel=True, fastmath=True)
def _train_epoch(walks, ids, values, outs, logits, indptr, value_ids, field_ids, entry_w, known, cum, keep,
                 window, negative, lr_start, lr_end, words_done, words_total, seed, logit_lr_scale):
    n_walks, length = walks.shape
    n_fields = logits.shape[1]
    dim = ids.shape[1]
    n_blocks = (n_walks + _BLOCK - 1) // _BLOCK
    cum_last = cum[-1]
    for b in numba.prange(n_blocks):
        mix = np.zeros(n_fields, dtype=np.float32)
        fvec = np.zeros((n_fields, dim), dtype=np.float32)
        h = np.zeros(dim, dtype=np.float32)
        grad = np.zeros(dim, dtype=np.float32)
        present = np.zeros(n_fields, dtype=np.bool_)
        sent = np.empty(length, dtype=np.int32)
        for w in range(b * _BLOCK, min((b + 1) * _BLOCK, n_walks)):
            rng = seed ^ (np.uint64(w) * np.uint64(0xD1B54A32D192ED03))
            progress = (words_done + w * length) / words_total
            lr = lr_start - (lr_start - lr_end) * min(progress, 1.0)
            n_kept = 0  # frequent-item subsampling, as word2vec: drop tokens before windowing
            for pos in range(length):
                rng, r = _next(rng)
                if (r >> np.uint64(32)) < keep[walks[w, pos]]:
                    sent[n_kept] = walks[w, pos]
                    n_kept += 1
            for pos in range(n_kept):
                center = sent[pos]
                if not _compose(center, ids, values, logits, indptr, value_ids, field_ids, entry_w, known,
                                n_fields, mix, fvec, h, present):
                    continue
                rng, r = _next(rng)
                reach = 1 + np.int64(r % np.uint64(window))
                grad[:] = 0.0
                for ctx in range(max(0, pos - reach), min(n_kept, pos + reach + 1)):
                    if ctx == pos:
                        continue
                    target = sent[ctx]
                    for k in range(negative + 1):
                        if k == 0:
                            item = target
                            label = 1.0
                        else:
                            rng, r = _next(rng)
                            item = np.searchsorted(cum, np.int64(r % np.uint64(cum_last)), side="right")
                            if item == target:
                                continue
                            label = 0.0
                        score = 0.0
                        for d in range(dim):
                            score += h[d] * outs[item, d]
                        if score > 6.0:
                            sig = 1.0
                        elif score < -6.0:
                            sig = 0.0
                        else:
                            sig = 1.0 / (1.0 + np.exp(-score))
                        g = (label - sig) * lr
                        for d in range(dim):
                            grad[d] += g * outs[item, d]
                            outs[item, d] += g * h[d]
                # backpropagate grad (d loss / d h, already scaled by lr) into fields and weights
                hg = 0.0
                for d in range(dim):
                    hg += h[d] * grad[d]
                for f in range(n_fields):
                    if mix[f] == 0.0:
                        continue
                    fg = 0.0
                    for d in range(dim):
                        fg += fvec[f, d] * grad[d]
                    logits[center, f] += logit_lr_scale * mix[f] * (fg - hg)
                if mix[0] > 0.0:
                    for d in range(dim):
                        ids[center, d] += mix[0] * grad[d]
                for e in range(indptr[center], indptr[center + 1]):
                    scale = mix[field_ids[e]] * entry_w[e]
                    v = value_ids[e]
                    for d in range(dim):
                        values[v, d] += scale * grad[d]


@numba.njit(cache=True, parallel=True, fastmath=True)
def _compose_all(ids, values, logits, indptr, value_ids, field_ids, entry_w, known):
    n_items = ids.shape[0]
    n_fields = logits.shape[1]
    dim = ids.shape[1]
    out = np.zeros((n_items, dim), dtype=np.float32)
    weights = np.zeros((n_items, n_fields), dtype=np.float32)
    has = np.zeros(n_items, dtype=np.bool_)
    for i in numba.prange(n_items):
        mix = np.zeros(n_fields, dtype=np.float32)
        fvec = np.zeros((n_fields, dim), dtype=np.float32)
        h = np.zeros(dim, dtype=np.float32)
        present = np.zeros(n_fields, dtype=np.bool_)
        if _compose(i, ids, values, logits, indptr, value_ids, field_ids, entry_w, known, n_fields, mix, fvec, h,
                    present):
            out[i] = h
            weights[i] = mix
            has[i] = True
    return out, weights, has


def _keep_thresholds(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's keep probability of each item, (sqrt(f / t) + 1) * t / f, as a 32-bit threshold."""
    if sample <= 0:
        return np.full(len(counts), 2**32, dtype=np.uint64)
    threshold = sample * counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (np.sqrt(counts / threshold) + 1) * threshold / counts
    p = np.nan_to_num(np.minimum(p, 1.0), nan=1.0)
    return np.round(p * 2**32).astype(np.uint64)


def train_meta_prod2vec(
    walks: np.ndarray,
    fields: ItemFields,
    s: MetaProd2VecSettings,
    seed: int,
    progress: bool = True,
    logit_lr_scale: float | None = None,
    id_prior: float | None = None,
) -> ItemEmbeddings:
    """Learn id, field-value and output embeddings plus per-item field logits from `walks`.

    Returns every item that has an id embedding or any meta field (cold items included), the
    per-item field weights in `info["field_weights"]` and the average importance per field.
    """
    n_items = fields.n_items
    if walks.ndim != 2 or walks.shape[1] < 2:
        raise ValueError(f"walks must be a (n_walks, length >= 2) array, got shape {walks.shape}")
    if len(walks) and (walks.min() < 1 or walks.max() > n_items):
        raise ValueError(f"walks hold item ids outside 1..{n_items}: the walks and the catalogue disagree")
    walks = np.ascontiguousarray(walks, dtype=np.int32)
    numba.set_num_threads(max(1, min(s.workers, numba.config.NUMBA_NUM_THREADS)))
    rng = np.random.default_rng(seed)
    n_fields = len(fields.fields)
    dim = s.dim
    ids = ((rng.random((n_items + 1, dim), dtype=np.float32) - 0.5) / dim).astype(np.float32)
    values = ((rng.random((max(len(fields.vocab), 1), dim), dtype=np.float32) - 0.5) / dim).astype(np.float32)
    outs = np.zeros((n_items + 1, dim), dtype=np.float32)
    logits = np.zeros((n_items + 1, n_fields), dtype=np.float32)
    logits[:, 0] = s.id_prior if id_prior is None else id_prior  # the id's head start; training moves it
    counts = np.bincount(walks.ravel(), minlength=n_items + 1).astype(np.float64)
    known = counts > 0
    cum = np.cumsum(counts**0.75)
    cum = np.round(cum / cum[-1] * _CUM_RESOLUTION).astype(np.int64)  # negative-sampling table (unigram^0.75)
    keep = _keep_thresholds(counts, s.sample)

    words_per_epoch = walks.size
    words_total = float(words_per_epoch * s.epochs)
    started = time.perf_counter()
    for epoch in tqdm(range(s.epochs), desc="meta-prod2vec epochs", disable=not progress, leave=False):
        _train_epoch(walks, ids, values, outs, logits, fields.indptr, fields.value_ids, fields.field_ids,
                     fields.entry_weight, known, cum, keep, s.window, s.negative, s.lr, s.lr * 1e-4,
                     float(epoch * words_per_epoch), words_total, np.uint64(seed * 1_000_003 + epoch),
                     s.logit_lr if logit_lr_scale is None else logit_lr_scale)
    train_s = time.perf_counter() - started

    vectors, weights, has = _compose_all(ids, values, logits, fields.indptr, fields.value_ids, fields.field_ids,
                                         fields.entry_weight, known)
    # Cold start: items with no id embedding mix their fields by the average learned logits.
    warm = known.copy()
    warm[0] = False
    cold = ~known
    cold[0] = False
    if warm.any():
        avg = np.log(np.maximum(weights[warm].mean(axis=0), 1e-6)).astype(np.float32)
        logits[cold] = avg
        cold_vectors, cold_weights, cold_has = _compose_all(ids, values, logits, fields.indptr, fields.value_ids,
                                                            fields.field_ids, fields.entry_weight, known)
        vectors[cold], weights[cold], has[cold] = cold_vectors[cold], cold_weights[cold], cold_has[cold]
    has[0] = False
    importance = weights[warm].mean(axis=0) if warm.any() else np.zeros(n_fields)
    info = {
        "method": "meta_prod2vec",
        "fields": fields.fields,
        "field_importance": {f: round(float(x), 4) for f, x in zip(fields.fields, importance)},
        "n_values": len(fields.vocab),
        "n_known_items": int(has.sum()),
        "n_warm_items": int(warm.sum()),
        "n_cold_items": int((has & cold).sum()),
        "train_s": round(train_s, 3),
        "words": int(words_total),
        "words_per_s": round(words_total / max(train_s, 1e-9), 1),
    }
    emb = ItemEmbeddings(vectors=vectors, known=has, info=info)
    emb.extra["field_weights"] = weights
    return emb
