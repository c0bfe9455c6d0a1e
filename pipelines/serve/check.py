"""What is served is what was evaluated: ask the real Triton and compare with ONNX Runtime.

Starts tritonserver on 127.0.0.1 over the deployed model repository, loads the model, sends a
few real sessions, checks the answer equals ONNX Runtime's on the same ONNX file, and stops the
server. Used by the `serve_check` stage (the end of `make demo` and of the DAG).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Paths, Settings
from pipelines.data.schema import CATALOGUE_FILE
from pipelines.data.sequences import load_sequences
from pipelines.export.onnx import TIE_TOLERANCE, onnx_session, onnx_top_k
from pipelines.serve.client import pad_sessions, recommend
from pipelines.serve.triton_server import TritonServer


def sample_sessions(p: Paths, n: int, max_len: int) -> list[list[int]]:
    """Test histories of the first `n` users with at least 3 items (deterministic)."""
    histories, _, _ = load_sequences(p.features).evaluation("test")
    chosen = [h[-max_len:].tolist() for h in histories if len(h) >= 3][:n]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} sessions with 3+ items to query, {n} asked for")
    return chosen


def check_served_model(s: Settings, p: Paths, n_sessions: int = 3) -> dict[str, Any]:
    deploy = json.loads((p.reports / "deploy.json").read_text())
    version_dir = Path(deploy["version_path"])
    onnx_path = version_dir / "model.onnx"
    session = onnx_session(onnx_path)
    max_len = int(dict(session.get_modelmeta().custom_metadata_map).get("max_len", s.gpt4rec.max_len))
    sessions = sample_sessions(p, n_sessions, max_len)
    expected_ids, expected_scores = onnx_top_k(session, pad_sessions(sessions))

    server = TritonServer(
        p.triton_repo,
        http_port=s.serve.http_port,
        grpc_port=s.serve.grpc_port,
        metrics_port=s.serve.metrics_port,
        startup_timeout_s=s.serve.startup_timeout_s,
        log_dir=p.var / "triton",
    )
    with server:
        load_seconds = server.load(s.serve.model_name, timeout_s=s.serve.startup_timeout_s)
        started = time.perf_counter()
        answers = recommend(sessions, url=server.url, model_name=s.serve.model_name)
        latency_ms = (time.perf_counter() - started) * 1000
        start_seconds = server.start_seconds
    served_ids = np.array([ids for ids, _ in answers])
    served_scores = np.array([scores for _, scores in answers], dtype=np.float32)
    # Same ids, or the same score at every rank (near-tied items may swap between thread counts).
    matches = bool((served_ids == expected_ids).all()) or bool(
        np.allclose(served_scores, expected_scores, rtol=TIE_TOLERANCE, atol=TIE_TOLERANCE)
    )
    names = pd.read_parquet(p.validated / CATALOGUE_FILE, columns=["item_id", "name"]).set_index("item_id")[
        "name"
    ]
    summary = {
        "model": s.serve.model_name,
        "triton_version": deploy["triton_version"],
        "registry_version": deploy["model_version"],
        "matches_onnx_runtime": matches,
        "server_start_s": round(start_seconds or 0.0, 2),
        "model_load_s": round(load_seconds, 2),
        "batch_latency_ms": round(latency_ms, 1),
        "sessions": [
            {
                "history": [{"item_id": i, "name": str(names.get(i, "?"))} for i in history[-5:]],
                "recommended": [
                    {"item_id": i, "name": str(names.get(i, "?")), "score": round(score, 4)}
                    for i, score in zip(ids, scores)
                ],
            }
            for history, (ids, scores) in zip(sessions, answers)
        ],
    }
    if not matches:
        raise RuntimeError(
            f"Triton's answer differs from ONNX Runtime's on the same model: served {served_ids.tolist()}, "
            f"expected {expected_ids.tolist()}"
        )
    return summary
