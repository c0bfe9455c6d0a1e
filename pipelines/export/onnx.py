"""ONNX export of GPT4Rec with the top-k inside the graph, and the parity check that gates it.

The exported graph takes `input_ids` (batch, length) int64, left-padded with 0, of any length up
to max_len (plus `event_types`, same shape, event kind codes with 0 = unknown, when the model was
trained with event kinds), and returns `item_ids` (batch, k) int64 and `scores` (batch, k) float32: padding and
the items already in the session are masked before the top-k, exactly as in evaluation.
Parity: ONNX Runtime must return the same top-k ids as the eager model on real sessions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pipelines.core.contract import (
    EVENT_TYPES_NAME,
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_IDS,
    OUTPUT_SCORES,
    ModelMetadata,
    disagreeing_rows,
    left_pad,
)
from pipelines.core.files import write_json_atomic
from pipelines.models.gpt4rec import GPT4Rec

MASKED_SCORE = -1.0e9


class TopKRecommender(nn.Module):
    """GPT4Rec + masking + top-k: what is served."""

    def __init__(self, model: GPT4Rec, k: int, mask_seen: bool = True) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self.mask_seen = mask_seen

    def masked_logits(self, input_ids: torch.Tensor, event_types: torch.Tensor | None = None) -> torch.Tensor:
        """Scores with padding (column 0) and, with mask_seen, the session's items set to MASKED_SCORE.

        The masked score is scattered into batch x (length + 1) cells rather than selected through a
        batch x catalogue boolean mask: at 100k items that mask cost a quarter of the served graph.
        """
        logits = self.model(input_ids, event_types)
        columns = torch.zeros_like(input_ids[:, :1])
        if self.mask_seen:
            columns = torch.cat([columns, input_ids], dim=1)
        return logits.scatter(1, columns, MASKED_SCORE)

    def forward(self, input_ids: torch.Tensor,
                event_types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = torch.topk(self.masked_logits(input_ids, event_types), self.k, dim=1)
        return ids, scores


@dataclass
class ParityReport:
    passed: bool
    sessions: int
    lengths: list[int]
    top_k: int
    mismatched_sessions: int
    exact_order_sessions: int
    max_abs_score_diff: float
    export_seconds: float
    onnx_file: str

    def save(self, path: Path) -> None:
        """Written atomically: a task killed mid-write leaves the previous report."""
        write_json_atomic(path, asdict(self))


def export_onnx(model: GPT4Rec, out_dir: Path, k: int, opset: int, mask_seen: bool = True) -> Path:
    """Write out_dir/model.onnx with dynamic batch and length axes; returns its path.

    A model trained with event kinds gets a second input, event_types, sharing input_ids' axes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    wrapper = TopKRecommender(model.eval(), k, mask_seen).eval()
    example = torch.ones(2, min(8, model.config.max_len), dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=model.config.max_len)
    axes = {0: batch, 1: length}
    with_kinds = model.config.event_kinds > 0
    program = torch.onnx.export(
        wrapper,
        (example, torch.ones_like(example)) if with_kinds else (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME, EVENT_TYPES_NAME] if with_kinds else [INPUT_NAME],
        output_names=[OUTPUT_IDS, OUTPUT_SCORES],
        dynamic_shapes=(axes, axes) if with_kinds else (axes,),
        optimize=True,
        verbose=False,
    )
    program.save(str(path))
    proto = onnx.load(str(path))
    metadata = ModelMetadata(n_items=model.config.n_items, max_len=model.config.max_len, top_k=k,
                             mask_seen=mask_seen, event_kinds=model.config.event_kinds)
    proto.metadata_props.extend(onnx.StringStringEntryProto(key=key, value=value)
                                for key, value in metadata.to_props().items())
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def onnx_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def has_event_types(session: ort.InferenceSession) -> bool:
    """Whether this graph takes event_types (a model trained with event kinds)."""
    return any(i.name == EVENT_TYPES_NAME for i in session.get_inputs())


def onnx_feeds(session: ort.InferenceSession, input_ids: np.ndarray,
               kinds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The inputs this graph needs: event_types are zeros (unknown) when the graph has them and none are given."""
    ids = np.asarray(input_ids, dtype=np.int64)
    feeds = {INPUT_NAME: ids}
    if has_event_types(session):
        kinds = np.zeros_like(ids) if kinds is None else np.asarray(kinds, dtype=np.int64)
        if kinds.shape != ids.shape:
            raise ValueError(f"{EVENT_TYPES_NAME} has shape {list(kinds.shape)}, {INPUT_NAME} has {list(ids.shape)}")
        feeds[EVENT_TYPES_NAME] = kinds
    return feeds


def onnx_top_k(session: ort.InferenceSession, input_ids: np.ndarray,
               kinds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and scores; kinds (same shape as input_ids) are ignored by a graph without event_types."""
    ids, scores = session.run([OUTPUT_IDS, OUTPUT_SCORES], onnx_feeds(session, input_ids, kinds))
    return ids, scores


def check_parity(
    model: GPT4Rec, onnx_path: Path, sessions: list[np.ndarray], k: int, mask_seen: bool = True,
    export_seconds: float = 0.0,
) -> ParityReport:
    """Same top-k from torch and ONNX Runtime (near-ties may swap), batch by batch of equal length.

    Sessions are grouped by length so that several padded widths are exercised, including 1
    and the maximum. A model with event kinds is fed random kind codes, zeros (unknown) included.
    """
    wrapper = TopKRecommender(model.eval(), k, mask_seen).eval()
    session = onnx_session(onnx_path)
    kind_rng = np.random.default_rng(0)
    mismatched, exact, max_diff = 0, 0, 0.0
    lengths: set[int] = set()
    widths = sorted({1, model.config.max_len, *(min(len(s), model.config.max_len) for s in sessions)})
    groups: dict[int, list[np.ndarray]] = {}
    for s in sessions:
        if len(s):
            groups.setdefault(min(len(s), model.config.max_len), []).append(s)
    groups.setdefault(1, [s[-1:] for s in sessions[:8] if len(s)])
    groups.setdefault(model.config.max_len, [s for s in sessions[:8] if len(s)])
    for width in widths:
        batch = groups.get(width)
        if not batch:
            continue
        ids = left_pad(batch, width, width=width)
        lengths.add(int(ids.shape[1]))
        kinds = None
        if model.config.event_kinds:
            kinds = kind_rng.integers(0, model.config.event_kinds + 1, size=ids.shape) * (ids != 0)
        t_kinds = None if kinds is None else torch.from_numpy(kinds)
        with torch.no_grad():
            t_ids, t_scores = (x.numpy() for x in wrapper(torch.from_numpy(ids), t_kinds))
            t_all = wrapper.masked_logits(torch.from_numpy(ids), t_kinds).numpy()
        o_ids, o_scores = onnx_top_k(session, ids, kinds)
        # ONNX's items scored by torch: a near-tie may swap places or trade the last slot, nothing else
        o_by_torch = np.take_along_axis(t_all, o_ids, axis=1)
        mismatched += int(disagreeing_rows(t_ids, t_scores, o_ids, o_by_torch).sum())
        exact += int((t_ids == o_ids).all(axis=1).sum())
        max_diff = max(max_diff, float(np.abs(t_scores - o_scores).max()))
    return ParityReport(
        passed=mismatched == 0,
        sessions=sum(len(g) for g in groups.values()),
        lengths=sorted(lengths),
        top_k=k,
        mismatched_sessions=mismatched,
        exact_order_sessions=exact,
        max_abs_score_diff=max_diff,
        export_seconds=round(export_seconds, 3),
        onnx_file=str(onnx_path),
    )


def export_and_check(model: GPT4Rec, out_dir: Path, sessions: list[np.ndarray], k: int, opset: int,
                     mask_seen: bool = True) -> ParityReport:
    started = time.perf_counter()
    path = export_onnx(model, out_dir, k, opset, mask_seen)
    return check_parity(model, path, sessions, k, mask_seen, export_seconds=time.perf_counter() - started)
