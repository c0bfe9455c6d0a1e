"""Triton Python-backend model: runs the exported recommender (model.onnx) with onnxruntime.

Copied into every version folder beside model.onnx (with rxrec_backend.py, the helpers every rxrec
backend shares) by pipelines/repository/versions.py, so each version carries the exact wrapper it
was exported with. It is not imported by the library: it
runs inside Triton's Python-backend stub, in the serving venv (numpy<2), and must only need the
standard library, numpy, onnxruntime and triton_python_backend_utils.

Contract: input "input_ids" int64 [batch, seq], sessions left-padded with 0 (0 = padding, item
ids 1..n_items); outputs "item_ids" int64 [batch, k] and "scores" float32 [batch, k].
When model.onnx also takes "event_types" (a model trained with event kinds; its metadata_props
"event_kinds" gives the number of kinds), requests MAY send "event_types" int64, same shape as
input_ids, values 0..event_kinds (0 = unknown); a request without it is answered as all unknown.

Where n_items comes from (first found wins):
  1. the ONNX model's metadata_props key "n_items" (per version: a retrained model with a larger
     catalogue carries its own bound), then
  2. the config.pbtxt parameter "n_items" (written by pipelines/repository/versions.py).
Loading fails with a clear error if neither is set: without it, out-of-range ids could not be
rejected and would surface as opaque onnxruntime Gather errors.

Other config parameters: "intra_op_num_threads" (default 1; the instance count multiplies it),
"top_k" (checked against the ONNX output shape when static), "max_seq_len" (optional; longer
sessions are rejected rather than crashing a positional embedding lookup), "max_tokens_per_call"
(default 2048: a dynamic batch of long sessions runs as several smaller onnxruntime calls).

Bad requests (wrong dtype, not 2-D, empty, a session with no item (all padding), negative ids,
ids > n_items, too long; event_types of another dtype or shape than input_ids or out of range) get a TritonError response; other requests in the same batch are still
answered.

Speed (measured by `rxrec bench serve`, reports/serve.md): a dynamic batch is validated with one
min/max over all of it and only re-checked request by request when that finds a problem; requests
of the same width share one ONNX call; leading columns that are padding in every row of that call
are cut off first (rxrec_backend.OnnxTopK, exact for this contract). onnxruntime threads do not
spin while idle (on a few shared cores a spinning thread takes CPU from the server and the other
instance). Config parameter "allow_spinning" = "1" turns
spinning back on.
"""

from __future__ import annotations

import gc

import numpy as np
import triton_python_backend_utils as pb_utils
from rxrec_backend import (
    EVENT_KINDS,
    EVENT_TYPES_NAME,
    INPUT_NAME,
    MAX_TOKENS_PER_CALL,
    MODEL_FILE,
    N_ITEMS,
    OUTPUT_IDS,
    ModelArgs,
    OnnxTopK,
    answer,
    failed,
    input_array,
    not_int64,
    refusal,
)


class TritonPythonModel:
    """One onnxruntime session per model instance; dynamic batches run as one ONNX call per shape."""

    def initialize(self, args: dict) -> None:
        """Open model.onnx and read the limits used to validate requests."""
        model = ModelArgs(args)
        self.name = model.name
        onnx_path = model.folder(MODEL_FILE) / MODEL_FILE
        if not onnx_path.is_file():
            raise pb_utils.TritonModelException(f"{self.name}: model.onnx not found at {onnx_path}")

        threads = model.param("intra_op_num_threads", int, 1)
        self.scorer = OnnxTopK(onnx_path, threads, spinning=bool(model.param("allow_spinning", int, 0)),
                               max_tokens_per_call=model.param("max_tokens_per_call", int, MAX_TOKENS_PER_CALL))
        if (problem := self.scorer.contract_problem()) is not None:
            raise pb_utils.TritonModelException(f"{self.name}: model.onnx: {problem}")
        inputs, outputs = self.scorer.inputs, self.scorer.outputs

        meta = self.scorer.metadata
        if meta.get(N_ITEMS):
            self.n_items, source = int(meta[N_ITEMS]), "onnx metadata"
        else:
            self.n_items, source = model.param(N_ITEMS, int, None), "config parameter"
        if not self.n_items or self.n_items < 1:
            raise pb_utils.TritonModelException(
                f"{self.name}: n_items is unknown: set the config.pbtxt parameter 'n_items' "
                "or the ONNX metadata_props key 'n_items'"
            )
        # Event kinds: optional second input. Its range comes from the ONNX metadata (per version).
        self.takes_kinds = EVENT_TYPES_NAME in inputs
        self.event_kinds = 0
        if self.takes_kinds:
            raw = meta.get(EVENT_KINDS) or model.params.get(EVENT_KINDS, "")
            self.event_kinds = int(raw) if raw.isdigit() else 0
            if self.event_kinds < 1:
                raise pb_utils.TritonModelException(
                    f"{self.name}: model.onnx takes {EVENT_TYPES_NAME!r} but the number of event kinds is unknown: "
                    "set the ONNX metadata_props key 'event_kinds' (pipelines/export/onnx.py writes it)"
                )
        self.max_seq_len = model.param("max_seq_len", int, None)

        top_k = model.param("top_k", int, None)
        k_dim = outputs[OUTPUT_IDS].shape[-1] if outputs[OUTPUT_IDS].shape else None
        if top_k is not None and isinstance(k_dim, int) and k_dim != top_k:
            raise pb_utils.TritonModelException(
                f"{self.name}: config top_k={top_k} but model.onnx returns k={k_dim}: re-export or rewrite the config"
            )
        gc.freeze()  # what initialize built lives as long as the stub: keep it out of every collection
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {onnx_path} (n_items={self.n_items} from {source}, "
            f"intra_op_num_threads={threads}, max_seq_len={self.max_seq_len}, event_kinds={self.event_kinds})"
        )

    def _validate(self, x: np.ndarray) -> str | None:
        """Why a request's input_ids is unusable, or None if it is fine."""
        if (problem := not_int64(x, INPUT_NAME)) is not None:
            return problem
        if x.ndim != 2:
            return f"{INPUT_NAME} must be 2-D [batch, seq], got shape {list(x.shape)}"
        if x.shape[0] == 0 or x.shape[1] == 0:
            return f"{INPUT_NAME} must not be empty, got shape {list(x.shape)}"
        if self.max_seq_len is not None and x.shape[1] > self.max_seq_len:
            return f"{INPUT_NAME} has {x.shape[1]} positions, more than max_seq_len={self.max_seq_len}"
        lo, hi = int(x.min()), int(x.max())
        if lo < 0:
            return f"{INPUT_NAME} contains negative id {lo}; ids are 1..{self.n_items} and 0 is padding"
        if hi > self.n_items:
            return f"{INPUT_NAME} contains id {hi} > n_items={self.n_items}; unknown item"
        if not x.any(axis=1).all():
            row = int(np.flatnonzero(~x.any(axis=1))[0])
            return (
                f"{INPUT_NAME} row {row} has no item (all {x.shape[1]} positions are 0 = padding): "
                "an empty session; send at least one item id"
            )
        return None

    def _validate_kinds(self, x: np.ndarray, kinds: np.ndarray) -> str | None:
        """Why a request's event_types is unusable next to its (valid) input_ids, or None."""
        if (problem := not_int64(kinds, EVENT_TYPES_NAME)) is not None:
            return problem
        if kinds.shape != x.shape:
            return (f"{EVENT_TYPES_NAME} must have the shape of {INPUT_NAME} {list(x.shape)} "
                    f"(one kind per item), got {list(kinds.shape)}")
        lo, hi = int(kinds.min()), int(kinds.max())
        if lo < 0 or hi > self.event_kinds:
            bad = lo if lo < 0 else hi
            return (f"{EVENT_TYPES_NAME} contains kind {bad}; kinds are 0..{self.event_kinds} "
                    "(0 unknown, 1 view, 2 click, 3 add_to_cart, 4 purchase)")
        return None

    def _valid_kinds(self, arrays: list[np.ndarray], kinds: list[np.ndarray | None], batch: np.ndarray) -> np.ndarray | None:
        """The batch's event kinds as one array (zeros where a request sent none) if all are fine, else None."""
        if all(k is None for k in kinds):
            return np.zeros_like(batch)
        for x, k in zip(arrays, kinds):
            if k is not None and (k.dtype != np.int64 or k.shape != x.shape):
                return None
        parts = [np.zeros_like(x) if k is None else k for x, k in zip(arrays, kinds)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if int(out.min()) < 0 or int(out.max()) > self.event_kinds:
            return None
        return out

    def _valid_batch(self, arrays: list[np.ndarray]) -> np.ndarray | None:
        """The whole dynamic batch as one array if every request is fine (one check), else None."""
        x = arrays[0]
        if x.dtype != np.int64 or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            return None
        width = x.shape[1]
        if self.max_seq_len is not None and width > self.max_seq_len:
            return None
        if any(a.dtype != np.int64 or a.ndim != 2 or a.shape[1] != width or a.shape[0] == 0 for a in arrays):
            return None
        batch = x if len(arrays) == 1 else np.concatenate(arrays)
        if int(batch.min()) < 0 or int(batch.max()) > self.n_items or not batch.any(axis=1).all():
            return None
        return batch

    def execute(self, requests: list) -> list:
        """Answer every request; requests with the same seq length share one ONNX call."""
        responses: list = [None] * len(requests)
        arrays: list[np.ndarray | None] = []
        kinds: list[np.ndarray | None] = []  # event_types per request (None: not sent / not taken)
        for i, request in enumerate(requests):
            x = input_array(request, INPUT_NAME)
            if x is None:
                responses[i] = refusal(f"missing input {INPUT_NAME!r}")
            arrays.append(x)
            kinds.append(input_array(request, EVENT_TYPES_NAME) if x is not None and self.takes_kinds else None)

        # (members, their rows as one array, their kinds as one array or None): one ONNX call each
        calls: list[tuple[list[tuple[int, np.ndarray]], np.ndarray, np.ndarray | None]] = []
        present = [x for x in arrays if x is not None]
        whole = self._valid_batch(present) if present and len(present) == len(arrays) else None
        whole_kinds = self._valid_kinds(present, kinds, whole) if whole is not None and self.takes_kinds else None
        if whole is not None and (whole_kinds is not None or not self.takes_kinds):
            # the common case: every request fine, one check, one call
            calls.append((list(enumerate(present)), whole, whole_kinds))
        else:
            groups: dict[int, list[tuple[int, np.ndarray]]] = {}
            for i, x in enumerate(arrays):
                if x is None:
                    continue
                problem = self._validate(x)
                if problem is None and kinds[i] is not None:
                    problem = self._validate_kinds(x, kinds[i])
                if problem is not None:
                    responses[i] = refusal(problem)
                    continue
                groups.setdefault(x.shape[1], []).append((i, x))
            for members in groups.values():
                batch = members[0][1] if len(members) == 1 else np.concatenate([x for _, x in members])
                batch_kinds = None
                if self.takes_kinds:
                    parts = [np.zeros_like(x) if kinds[i] is None else kinds[i] for i, x in members]
                    batch_kinds = parts[0] if len(parts) == 1 else np.concatenate(parts)
                calls.append((members, batch, batch_kinds))

        for members, batch, batch_kinds in calls:
            try:
                ids, scores = self.scorer.top_k(batch, batch_kinds)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, the model stays up
                failed(members, responses, self.name, exc)
                continue
            answer(ids, scores, members, responses)
        return responses

    def finalize(self) -> None:
        """Drop the session so its memory is returned before the stub exits."""
        self.scorer = None
