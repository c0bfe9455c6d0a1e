"""End to end: export a tiny model into a repository, serve it with the real tritonserver, query it.

The served answer must equal onnxruntime's answer in this process on the same padded inputs
(what is served is what was evaluated). Needs the serving venv (infra/triton/setup.sh); set
RXREC_TRITON_VENV to use one elsewhere.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from pipelines.repository.versions import write_config, write_version
from pipelines.serve.client import pad_sessions, recommend
from pipelines.serve.triton_server import (
    TritonModelLoadError,
    TritonServer,
    TritonStartError,
    default_venv,
    find_free_port,
)
from tests.serve.toy_triton import N_ITEMS, TOP_K, export_toy_onnx

MODEL = "gpt4rec"
SESSIONS = [[3, 17, 8, 22], [5], [40, 1, 9]]


def test_client_rejects_bad_sessions() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        pad_sessions([])
    with pytest.raises(ValueError, match="non-integer"):
        pad_sessions([[1, 2.5]])
    with pytest.raises(ValueError, match="non-integer"):
        pad_sessions([[1, "7"]])
    with pytest.raises(ValueError, match="empty"):
        pad_sessions([[1], []])
    padded = pad_sessions([[1, 2, 3, 4], [5]], max_len=3)
    assert padded.dtype == np.int64 and padded.tolist() == [[2, 3, 4], [0, 0, 5]]


def test_start_fails_clearly_on_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(
            tmp_path,
            http_port=port,
            grpc_port=find_free_port(),
            metrics_port=find_free_port(),
            log_dir=tmp_path / "logs",
        )
        with pytest.raises(TritonStartError, match=f"http={port}"):
            server.start()


@pytest.mark.slow
@pytest.mark.timeout(600)  # a start and two loads, 120 s each at most
def test_serve_and_query(tmp_path: Path) -> None:
    venv = default_venv()
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"serving venv {venv} does not exist: run infra/triton/setup.sh or set RXREC_TRITON_VENV")
    ort = pytest.importorskip("onnxruntime")

    onnx_path = export_toy_onnx(tmp_path / "toy.onnx", seed=0)
    repo = tmp_path / "triton_repo"
    write_config(repo, MODEL, max_batch_size=16, top_k=TOP_K, n_items=N_ITEMS)
    write_version(repo, MODEL, onnx_path, metadata={"mlflow_run_id": "test"})
    # a second model whose ONNX is garbage: its load must fail with a clear error, not hang
    write_config(repo, "broken", max_batch_size=16, top_k=TOP_K, n_items=N_ITEMS)
    (tmp_path / "broken.onnx").write_bytes(b"definitely not onnx")
    write_version(repo, "broken", tmp_path / "broken.onnx", metadata={})

    server = TritonServer(
        repo,
        http_port=find_free_port(),
        grpc_port=find_free_port(),
        metrics_port=find_free_port(),
        startup_timeout_s=120,
        log_dir=tmp_path / "logs",
        venv=venv,
        backend_root=tmp_path / "backends",
    )
    with server:
        pid = server.pid
        load_s = server.load(MODEL, timeout_s=120)
        print(f"\ntriton start {server.start_seconds:.2f}s, load {load_s:.2f}s")
        assert server.is_ready()

        got = recommend(SESSIONS, url=server.url, model_name=MODEL)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        want_ids, want_scores = session.run(["item_ids", "scores"], {"input_ids": pad_sessions(SESSIONS)})
        assert len(got) == len(SESSIONS)
        for (ids, scores), w_ids, w_scores in zip(got, want_ids, want_scores):
            assert ids == w_ids.tolist()
            np.testing.assert_allclose(scores, w_scores, rtol=1e-6, atol=1e-6)

        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="negative id"):
            recommend([[1, -3, 2]], url=server.url, model_name=MODEL)
        with pytest.raises(InferenceServerException, match="n_items"):
            recommend([[N_ITEMS + 1]], url=server.url, model_name=MODEL)
        assert server.is_ready()
        assert recommend(SESSIONS, url=server.url, model_name=MODEL) == got  # still serving

        with pytest.raises(TritonModelLoadError, match="broken") as failed:
            server.load("broken", timeout_s=120)
        print(str(failed.value).splitlines()[0])
        # the served model keeps answering (with strict readiness the server as a whole reports
        # not-ready while a model in the repository is UNAVAILABLE, so check the model itself)
        assert server.model_ready(MODEL)
        assert recommend(SESSIONS, url=server.url, model_name=MODEL) == got

        server.unload(MODEL)
        assert not server.model_ready(MODEL)

    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the server is gone
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # and so is every stub in its process group
