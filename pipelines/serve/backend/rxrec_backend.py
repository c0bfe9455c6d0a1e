"""Helpers and tensor names shared by rxrec's Triton Python backends (the model.py of gpt4rec,
similar_items and recommend).

The repository writers (pipelines/repository/versions.py and models.py) copy this file beside
model.py into every version folder; Triton's Python-backend stub puts that folder on sys.path, so
`import rxrec_backend` finds the copy that was written with the version. Runs in the serving venv:
only the standard library, numpy and triton_python_backend_utils. The names are those of
pipelines/core/contract.py (tests/serve/test_backend_common.py checks that they agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

INPUT_NAME = "input_ids"  # int64 [batch, seq], sessions left-padded with 0
EVENT_TYPES_NAME = "event_types"  # int64, the shape of input_ids: 0 unknown, 1..event_kinds
OUTPUT_IDS = "item_ids"  # int64 [batch, k], best first
OUTPUT_SCORES = "scores"  # float32 [batch, k]
MODEL_FILE = "model.onnx"
N_ITEMS = "n_items"  # ONNX metadata_props keys (written by pipelines/export/onnx.py)
TOP_K = "top_k"
EVENT_KINDS = "event_kinds"

REQUIRED: Any = object()  # default of a config parameter that must be set


def error(message: str) -> pb_utils.TritonError:
    """An INVALID_ARG error where this Triton supports error codes, a plain one otherwise."""
    try:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):
        return pb_utils.TritonError(message)


class ModelArgs:
    """What initialize() gets from Triton: the model's name:version, config parameters, version folder."""

    def __init__(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.params: dict[str, str] = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = f"{args.get('model_name', '?')}:{args.get('model_version', '?')}"
        self._folder = Path(args["model_repository"]) / str(args["model_version"])

    def folder(self, holding: str) -> Path:
        """The version folder, or this file's own folder when Triton's path lacks `holding` (a repository
        agent moved things)."""
        return self._folder if (self._folder / holding).is_file() else Path(__file__).resolve().parent

    def param(self, key: str, cast: Callable[[str], Any] = int, default: Any = REQUIRED) -> Any:
        """Config parameter `key` as `cast` gives it; `default` when unset (a clear error when required)."""
        raw = self.params.get(key, "")
        if raw == "":
            if default is REQUIRED:
                raise pb_utils.TritonModelException(f"{self.name}: config parameter {key!r} is missing")
            return default
        try:
            return cast(raw)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: config parameter {key}={raw!r}: {exc}") from exc


def onnx_session(path: Path, threads: int, *, spinning: bool = False) -> Any:
    """A CPU ONNX Runtime session; idle threads do not spin unless asked (they take CPU from the server)."""
    import onnxruntime as ort  # not every backend runs ONNX (recommend only calls gpt4rec)

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


#: Rows x positions per onnxruntime call. At length 512, batches of 32 run ~15% slower per session
#: than batches of 4 on this CPU (attention matrices leave the cache); 2048 = 40 rows at length 50.
MAX_TOKENS_PER_CALL = 2048


class OnnxTopK:
    """An exported recommender's top-k in this process: one onnxruntime session, calls of at most
    `max_tokens_per_call` tokens, leading all-padding columns cut off first.

    The cut is exact for the export's contract: positions count back from the newest item and padding
    is masked out of attention and the top-k, so a session's answer does not depend on how far it is
    padded. gpt4rec's model.py serves with it, and recommend scores with it in process (no call into
    a second Python backend) when its version folder carries the scorer.
    """

    def __init__(self, path: Path, threads: int, *, spinning: bool = False,
                 max_tokens_per_call: int = MAX_TOKENS_PER_CALL) -> None:
        self.session = onnx_session(path, threads, spinning=spinning)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.takes_kinds = EVENT_TYPES_NAME in self.inputs
        self.max_tokens_per_call = max(1, max_tokens_per_call)

    def contract_problem(self) -> str | None:
        """Why the model does not fit the serving contract (input_ids in, item_ids and scores out), or None."""
        if INPUT_NAME not in self.inputs or {OUTPUT_IDS, OUTPUT_SCORES} - self.outputs.keys():
            return (f"the model must have input {INPUT_NAME!r} and outputs {OUTPUT_IDS!r}, {OUTPUT_SCORES!r}; it has "
                    f"inputs {sorted(self.inputs)} outputs {sorted(self.outputs)}")
        return None

    def top_k(self, batch: np.ndarray, kinds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(item_ids, scores) of a valid batch: every row holds an item, ids and kinds are in range."""
        first_item_column = int(np.argmax(batch.any(axis=0)))
        if first_item_column:
            batch = np.ascontiguousarray(batch[:, first_item_column:])
            if kinds is not None:
                kinds = np.ascontiguousarray(kinds[:, first_item_column:])
        rows = max(1, self.max_tokens_per_call // batch.shape[1])
        if batch.shape[0] <= rows:
            return self._run(batch, kinds)
        parts = [self._run(batch[i:i + rows], None if kinds is None else kinds[i:i + rows])
                 for i in range(0, batch.shape[0], rows)]
        return np.concatenate([ids for ids, _ in parts]), np.concatenate([s for _, s in parts])

    def _run(self, batch: np.ndarray, kinds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {INPUT_NAME: batch} if kinds is None else {INPUT_NAME: batch, EVENT_TYPES_NAME: kinds}
        ids, scores = self.session.run([OUTPUT_IDS, OUTPUT_SCORES], feeds)
        return ids, scores


def input_array(request: Any, name: str) -> np.ndarray | None:
    """A request's input `name` as numpy, or None when the request did not send it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def refusal(problem: str) -> pb_utils.InferenceResponse:
    """The answer to a bad request: INVALID_ARG saying what is wrong (its batch neighbours are still answered)."""
    return pb_utils.InferenceResponse(error=error(problem))


def not_int64(x: np.ndarray, name: str) -> str | None:
    """The complaint about an input that is not int64, or None."""
    return None if x.dtype == np.int64 else f"{name} must be int64, got {x.dtype}"


def answer(ids: np.ndarray, scores: np.ndarray, members: list[tuple[int, np.ndarray]], responses: list) -> None:
    """Split one ONNX call's top-k back into the responses of the requests that shared it (in order)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    start = 0
    for i, x in members:
        stop = start + x.shape[0]
        responses[i] = pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(OUTPUT_IDS, ids[start:stop]), pb_utils.Tensor(OUTPUT_SCORES, scores[start:stop])])
        start = stop


def failed(members: list[tuple[int, np.ndarray]], responses: list, name: str, exc: Exception) -> None:
    """Report an ONNX Runtime failure to every request of the call; the model stays up."""
    for i, _ in members:
        responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{name}: onnxruntime failed: {exc}"))
