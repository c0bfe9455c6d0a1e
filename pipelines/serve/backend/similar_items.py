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

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "item_id"
OUTPUT_IDS = "item_ids"
OUTPUT_SCORES = "scores"


def _error(message: str) -> pb_utils.TritonError:
    """An INVALID_ARG error where this Triton supports error codes, a plain one otherwise."""
    try:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):
        return pb_utils.TritonError(message)


class TritonPythonModel:
    """One ONNX Runtime session per instance; all valid requests of a batch share one call."""

    def initialize(self, args: dict) -> None:
        """Open model.onnx and known.npy of this version folder."""
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = f"{args.get('model_name', '?')}:{args.get('model_version', '?')}"
        folder = Path(args["model_repository"]) / str(args["model_version"])
        if not (folder / "model.onnx").is_file():
            folder = Path(__file__).resolve().parent
        onnx_path, known_path = folder / "model.onnx", folder / "known.npy"
        for path in (onnx_path, known_path):
            if not path.is_file():
                raise pb_utils.TritonModelException(f"{self.name}: {path.name} not found in {folder}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(params.get("intra_op_num_threads") or 1))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.known = np.load(known_path, allow_pickle=False).astype(bool)
        self.n_items = len(self.known) - 1
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("n_items") and int(meta["n_items"]) != self.n_items:
            raise pb_utils.TritonModelException(
                f"{self.name}: model.onnx covers n_items={meta['n_items']} but known.npy covers {self.n_items}"
            )
        self.method = meta.get("method", "?")
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {onnx_path} (mode={meta.get('mode', '?')}, table={self.method}, "
            f"n_items={self.n_items}, items with a vector={int(self.known.sum())}, top_k={meta.get('top_k', '?')})"
        )

    def _validate(self, x: np.ndarray) -> str | None:
        """Why a request's item_id is unusable, or None if every id is a product with a vector."""
        if x.dtype != np.int64:
            return f"{INPUT_NAME} must be int64, got {x.dtype}"
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
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
            if tensor is None:
                responses[i] = pb_utils.InferenceResponse(error=_error(f"missing input {INPUT_NAME!r}"))
                continue
            x = tensor.as_numpy()
            problem = self._validate(x)
            if problem is not None:
                responses[i] = pb_utils.InferenceResponse(error=_error(problem))
                continue
            valid.append((i, x))
        if not valid:
            return responses
        batch = np.concatenate([x for _, x in valid]) if len(valid) > 1 else valid[0][1]
        try:
            ids, scores = self.session.run([OUTPUT_IDS, OUTPUT_SCORES], {INPUT_NAME: batch})
        except Exception as exc:  # noqa: BLE001 - reported to the callers, the model stays up
            for i, _ in valid:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.name}: onnxruntime failed: {exc}"))
            return responses
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        start = 0
        for i, x in valid:
            stop = start + x.shape[0]
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(OUTPUT_IDS, ids[start:stop]), pb_utils.Tensor(OUTPUT_SCORES, scores[start:stop])])
            start = stop
        return responses

    def finalize(self) -> None:
        """Drop the session so its memory is returned before the stub exits."""
        self.session = None
