"""Meta-Prod2Vec: Prod2Vec's skip-gram over walks in which product meta-info joins the items.

The corpus is every walk as items (exactly Prod2Vec's sentences) plus a copy of each walk in which
every item is replaced, with probability `meta_share`, by one of its meta tokens ("field=value",
drawn per position). A meta token then stands where its products stand: its vector learns to
predict the products around them, in the same space as the item vectors, and the items' vectors
learn from the meta tokens around them (Vasile et al.'s item->meta and meta->item terms), all in
gensim's word2vec.

A product's meta vector is, over the fields it has, the mean vector of each field's values, weighted
by the field's importance: how well the field's vector agrees with the id vectors of the products
that have it (mean cosine), read off like 1mg's ranking. A product's vector mixes its own id vector
and its meta vector by evidence: the id's share is n / (n + meta_prior) for n training
interactions, so a product bought once leans on its class and uses, a best-seller is its own
vector, and a product nobody has touched yet is its meta vector alone.

Why not a learned per-item mix of id and fields (this module's first version): measured on the
generated world's validation split, meta-composed vectors are hubs under cosine (a class centroid
sits close to every product of its class), so mixing them into products that have interactions
pushed the true next product out of the top 10 for warm targets. So the meta part of a vector is
held back: the vector is scaled by id share + (1 - id share) * `meta_confidence` and the
remainder put on one shared extra axis, so a product known by its meta alone scores that factor
times its cosine to any product with interactions; 1.0 turns it off.
"""

from __future__ import annotations

import time

import numpy as np

from pipelines.core.config import MetaProd2VecSettings
from pipelines.embed.evaluate import normalise
from pipelines.embed.meta import ItemFields
from pipelines.embed.prod2vec import ItemEmbeddings, item_tokens, skipgram, train_skipgram

META_PREFIX = "m:"  # meta tokens are "m:<field>=<value>"; item tokens are the item id


def meta_sentences(walks: np.ndarray, fields: ItemFields, share: float, rng: np.random.Generator) -> list[list[str]]:
    """Each walk with every item replaced, with probability `share`, by one of its meta tokens."""
    counts = np.diff(fields.indptr)[walks]  # meta tokens per walk position
    replace = (counts > 0) & (rng.random(walks.shape) < share)
    pick = fields.indptr[walks] + (rng.random(walks.shape) * np.maximum(counts, 1)).astype(np.int64)
    meta_tokens = np.array([META_PREFIX + v for v in fields.vocab] or [""], dtype=object)
    out = item_tokens(fields.n_items)[walks]
    out[replace] = meta_tokens[fields.value_ids[pick[replace]]]
    return out.tolist()


def _field_vectors(fields: ItemFields, value_vectors: np.ndarray, has_value: np.ndarray) -> np.ndarray:
    """(n_items + 1, n_fields, dim): per item and meta field, the unit mean of its value vectors (0 if none)."""
    n_fields, dim = len(fields.fields), value_vectors.shape[1]
    out = np.zeros((fields.n_items + 1, n_fields, dim), dtype=np.float32)
    rows = np.repeat(np.arange(fields.n_items + 1), np.diff(fields.indptr))
    keep = has_value[fields.value_ids]
    np.add.at(out, (rows[keep], fields.field_ids[keep]), value_vectors[fields.value_ids[keep]])
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def compose(ids: np.ndarray, meta: np.ndarray, id_share: np.ndarray, known: np.ndarray, confidence: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each known item's unit vector: `id_share` of its id direction, the rest its meta direction, held back in
    proportion to the meta part (scaled by id_share + (1 - id_share) * confidence, the remainder on one shared
    extra axis, so a product known by its meta alone scores `confidence` times its cosine). (vectors, known)."""
    known = known.copy()
    known[0] = False
    share = id_share[:, None]
    direction = normalise(share * normalise(ids) + (1 - share) * normalise(meta))
    scale = (id_share + (1 - id_share) * confidence)[:, None]
    vectors = np.concatenate([scale * direction, np.sqrt(np.maximum(1 - scale**2, 0))], axis=1).astype(np.float32)
    vectors[~known] = 0.0
    return vectors, known


def train_meta_prod2vec(walks: np.ndarray, fields: ItemFields, s: MetaProd2VecSettings, seed: int,
                        interactions: np.ndarray | None = None) -> ItemEmbeddings:
    """Learn item and meta-token vectors from `walks` and their meta copies; compose products without interactions.

    Returns every item that has an id vector or any meta field, each meta field's share of the importance
    in `info["field_importance"]` and, per item, the weight of each field (column 0: the id) in its vector in
    `extra["field_weights"]`: the id's share and the fields' shares of the rest. With `meta_prior` > 0 an
    item's id share is n / (n + meta_prior), n its training `interactions` (then required): rare products
    lean on their meta.
    """
    n_items = fields.n_items
    if walks.ndim != 2 or walks.shape[1] < 2:
        raise ValueError(f"walks must be a (n_walks, length >= 2) array, got shape {walks.shape}")
    if len(walks) and (walks.min() < 1 or walks.max() > n_items):
        raise ValueError(f"walks hold item ids outside 1..{n_items}: the walks and the catalogue disagree")
    walks = np.ascontiguousarray(walks, dtype=np.int64)
    started = time.perf_counter()
    corpus = item_tokens(n_items)[walks].tolist() + meta_sentences(walks, fields, s.meta_share, np.random.default_rng(seed))
    model = skipgram(corpus, dim=s.dim, window=s.window, negative=s.negative, min_count=1, workers=s.workers,
                     seed=seed, alpha=s.lr, sample=s.sample)
    train_skipgram(model, corpus, s.epochs, "meta_prod2vec word2vec")
    train_s = time.perf_counter() - started

    dim = s.dim
    ids = np.zeros((n_items + 1, dim), dtype=np.float32)
    warm = np.zeros(n_items + 1, dtype=bool)
    values = np.zeros((max(len(fields.vocab), 1), dim), dtype=np.float32)
    has_value = np.zeros(len(values), dtype=bool)
    value_index = {v: i for i, v in enumerate(fields.vocab)}
    for token, row in model.wv.key_to_index.items():
        if token.startswith(META_PREFIX):
            has_value[value_index[token[len(META_PREFIX):]]] = True
            values[value_index[token[len(META_PREFIX):]]] = model.wv.vectors[row]
        else:
            ids[int(token)] = model.wv.vectors[row]
            warm[int(token)] = True

    per_field = _field_vectors(fields, values, has_value)  # (items, fields, dim); field 0 (the id) stays 0
    present = np.linalg.norm(per_field, axis=2) > 0
    unit_ids = normalise(ids)
    agreement = np.einsum("ifd,id->if", per_field[warm], unit_ids[warm])  # cosine of each field to the id
    used = present[warm]
    importance = np.zeros(len(fields.fields))
    importance[1:] = np.maximum(
        np.where(used, agreement, 0).sum(axis=0)[1:] / np.maximum(used.sum(axis=0)[1:], 1), 0.0)

    weights = np.where(present, importance[None, :], 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    meta = np.einsum("if,ifd->id", weights, per_field)
    has_meta = total[:, 0] > 0
    has_meta[0] = False
    id_share = np.zeros(n_items + 1)
    if s.meta_prior > 0:
        if interactions is None or len(interactions) != n_items + 1:
            raise ValueError(f"meta_prior={s.meta_prior} needs each item's training interactions (n_items + 1 "
                             "counts): pass `interactions`")
        counts = np.asarray(interactions, dtype=np.float64)
        id_share[warm] = counts[warm] / (counts[warm] + s.meta_prior)
    else:
        id_share[warm] = 1.0
    id_share[warm & ~has_meta] = 1.0
    vectors, known = compose(unit_ids, meta, id_share, warm | has_meta, s.meta_confidence)
    field_weights = ((1 - id_share)[:, None] * weights).astype(np.float32)
    field_weights[:, 0] = id_share
    meta_only = known & ~warm

    info = {
        "method": "meta_prod2vec",
        "fields": fields.fields,
        "field_importance": {f: round(float(x), 4)
                             for f, x in zip(fields.fields[1:], importance[1:] / max(importance.sum(), 1e-12))},
        "n_values": int(has_value.sum()),
        "n_known_items": int(known.sum()),
        "n_warm_items": int(warm[1:].sum()),
        "n_meta_only_items": int(meta_only.sum()),
        "train_s": round(train_s, 3),
        "words": int(2 * walks.size * s.epochs),
        "words_per_s": round(2 * walks.size * s.epochs / max(train_s, 1e-9), 1),
    }
    emb = ItemEmbeddings(vectors=vectors, known=known, info=info)
    emb.extra["field_weights"] = field_weights
    return emb
