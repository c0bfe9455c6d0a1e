"""Toy models with the served contract, and a real tritonserver around a repository of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pipelines.serve.triton_server import TritonServer, default_venv, find_free_port

N_ITEMS, TOP_K, MAX_SEQ_LEN, MAX_BATCH = 40, 5, 12, 16


def export_toy_onnx(path: Path, seed: int) -> Path:
    """Masked mean of item embeddings, dot products with every item, top-k (ids 1..N_ITEMS).

    Different seeds give different weights, so two versions answer the same session differently.
    """
    torch = pytest.importorskip("torch")

    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(N_ITEMS + 1, 8, padding_idx=0)

        def forward(self, input_ids):
            mask = (input_ids > 0).unsqueeze(-1).float()
            h = (self.emb(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            scores, idx = torch.topk(h @ self.emb.weight[1:].T, TOP_K, dim=-1)
            return idx + 1, scores

    torch.manual_seed(seed)
    torch.onnx.export(
        Toy().eval(), (torch.ones(2, 4, dtype=torch.long),), str(path),
        input_names=["input_ids"], output_names=["item_ids", "scores"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "item_ids": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=18, dynamo=False,
    )
    return path


def toy_top_item(onnx_path: Path, session: list[int]) -> int:
    """The top item onnxruntime gives for one session (what Triton must answer)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids, _ = sess.run(["item_ids", "scores"], {"input_ids": np.asarray([session], dtype=np.int64)})
    return int(ids[0, 0])


def require_serving_venv() -> Path:
    venv = default_venv()
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"serving venv {venv} does not exist: run infra/triton/setup.sh or set RXREC_TRITON_VENV")
    return venv


@contextmanager
def loaded(server: TritonServer, *names: str) -> Iterator[TritonServer]:
    """These models of the shared server's repository, loaded for a test module and unloaded after it."""
    try:
        for name in names:
            server.load(name, timeout_s=120)
        yield server
    finally:
        for name in names:
            if server.model_ready(name):
                server.unload(name)


@contextmanager
def running_server(repo: Path, work: Path) -> Iterator[TritonServer]:
    server = TritonServer(
        repo, http_port=find_free_port(), grpc_port=find_free_port(), metrics_port=find_free_port(),
        startup_timeout_s=120, log_dir=work / "logs", venv=require_serving_venv(), backend_root=work / "backends",
    )
    with server:
        yield server
