"""Triton Python-backend model `similar_items`: item id -> top-k similar products (ONNX Runtime).

Copied as model.py into every similar_items version folder (pipelines/repository/models.py),
beside model.onnx (pipelines/export/similar_onnx.py) and known.npy. Runs inside Triton's
Python-backend stub in the serving venv: only the standard library, numpy, onnxruntime and
triton_python_backend_utils.

Contract: input "item_id" int64 [batch, 1]; outputs "item_ids" int64 [batch, k] and "scores"
float32 [batch, k] (cosine similarity, best first, the item itself excluded).
An id that is not a product with a vector (<= 0, > n_items, or no vector in the embedding table)
gets an INVALID_ARG error naming the id; other requests of the same batch are still answered.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from rxrec_backend import (
    MODEL_FILE,
    N_ITEMS,
    OUTPUT_IDS,
    OUTPUT_SCORES,
    TOP_K,
    ModelArgs,
    answer,
    failed,
    input_array,
    not_int64,
    onnx_session,
    refusal,
)

INPUT_NAME = "item_id"


class TritonPythonModel:
    """One ONNX Runtime session per instance; all valid requests of a batch share one call."""

    def initialize(self, args: dict) -> None:
        """Open model.onnx and known.npy of this version folder."""
        model = ModelArgs(args)
        self.name = model.name
        folder = model.folder(MODEL_FILE)
        onnx_path, known_path = folder / MODEL_FILE, folder / "known.npy"
        for path in (onnx_path, known_path):
            if not path.is_file():
                raise pb_utils.TritonModelException(f"{self.name}: {path.name} not found in {folder}")
        self.session = onnx_session(onnx_path, model.param("intra_op_num_threads", int, 1),
                                    spinning=bool(model.param("allow_spinning", int, 0)))
        self.known = np.load(known_path, allow_pickle=False).astype(bool)
        self.n_items = len(self.known) - 1
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(N_ITEMS) and int(meta[N_ITEMS]) != self.n_items:
            raise pb_utils.TritonModelException(
                f"{self.name}: model.onnx covers n_items={meta[N_ITEMS]} but known.npy covers {self.n_items}"
            )
        self.method = meta.get("method", "?")
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {onnx_path} (mode={meta.get('mode', '?')}, table={self.method}, "
            f"n_items={self.n_items}, items with a vector={int(self.known.sum())}, top_k={meta.get(TOP_K, '?')})"
        )

    def _validate(self, x: np.ndarray) -> str | None:
        """Why a request's item_id is unusable, or None if every id is a product with a vector."""
        if (problem := not_int64(x, INPUT_NAME)) is not None:
            return problem
        if x.ndim != 2 or x.shape[1] != 1 or x.shape[0] == 0:
            return f"{INPUT_NAME} must have shape [batch, 1], got {list(x.shape)}"
        ids = x[:, 0]
        bad = ids[(ids < 1) | (ids > self.n_items)]
        if len(bad):
            return f"{INPUT_NAME} {int(bad[0])} is not an item id: ids are 1..{self.n_items}"
        missing = ids[~self.known[ids]]
        if len(missing):
            return (f"{INPUT_NAME} {int(missing[0])} is unknown to the {self.method} embedding table "
                    "(no interactions and no meta-info): no similar products")
        return None

    def execute(self, requests: list) -> list:
        """Answer every request; the valid ones go through ONNX Runtime together."""
        responses: list = [None] * len(requests)
        valid: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            x = input_array(request, INPUT_NAME)
            problem = f"missing input {INPUT_NAME!r}" if x is None else self._validate(x)
            if problem is not None:
                responses[i] = refusal(problem)
                continue
            valid.append((i, x))
        if not valid:
            return responses
        batch = np.concatenate([x for _, x in valid]) if len(valid) > 1 else valid[0][1]
        try:
            ids, scores = self.session.run([OUTPUT_IDS, OUTPUT_SCORES], {INPUT_NAME: batch})
        except Exception as exc:  # noqa: BLE001 - reported to the callers, the model stays up
            failed(valid, responses, self.name, exc)
            return responses
        answer(ids, scores, valid, responses)
        return responses

    def finalize(self) -> None:
        """Drop the session so its memory is returned before the stub exits."""
        self.session = None
