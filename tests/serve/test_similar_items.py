"""similar_items on the real tritonserver: numpy's cosine top-k, clear errors, zero-downtime promotion."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import SimilarSettings
from pipelines.embed.prod2vec import ItemEmbeddings
from pipelines.export.similar_onnx import build_similar_items
from pipelines.repository.models import write_similar_items_config, write_similar_items_version
from pipelines.serve.client import _infer, similar_items
from pipelines.serve.triton_server import TritonServer, default_venv
from tests.serve.toy_triton import loaded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="Triton serving venv missing: run `make setup` (infra/triton/setup.sh)"),
]

N_ITEMS, K, NO_VECTOR = 60, 5, (7, 19)
tritonclient_utils = pytest.importorskip("tritonclient.utils")


def _embeddings(seed: int) -> ItemEmbeddings:
    rng = np.random.default_rng(seed)
    known = np.ones(N_ITEMS + 1, dtype=bool)
    known[[0, *NO_VECTOR]] = False
    vectors = rng.normal(size=(N_ITEMS + 1, 8)).astype(np.float32)
    vectors[~known] = 0.0
    return ItemEmbeddings(vectors, known, {"method": f"toy-{seed}"})


def _numpy_top_k(emb: ItemEmbeddings, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
    unit = emb.vectors / np.maximum(np.linalg.norm(emb.vectors, axis=1, keepdims=True), 1e-12)
    sims = unit[items] @ unit.T
    sims[:, ~emb.known] = -np.inf
    sims[np.arange(len(items)), items] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    return ids, np.take_along_axis(sims, ids, axis=1)


def _deploy(repo: Path, emb: ItemEmbeddings, max_exact_bytes: int = 1 << 30):
    graph = build_similar_items(emb, SimilarSettings(k=K), max_exact_bytes=max_exact_bytes)
    write_similar_items_config(repo, top_k=graph.top_k, n_items=graph.n_items, max_batch_size=16)
    return write_similar_items_version(repo, graph.model.SerializeToString(), graph.known, metadata={})


@pytest.fixture(scope="module")
def server(triton: TritonServer):
    _deploy(triton.repo, _embeddings(0))
    with loaded(triton, "similar_items"):
        yield triton


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_are_numpy_cosine_top_k(server: TritonServer, protocol: str) -> None:
    url = server.url if protocol == "http" else f"127.0.0.1:{server.grpc_port}"
    items = [1, 2, 18, 33, N_ITEMS]
    served = similar_items(items, url=url, protocol=protocol)
    want_ids, want_scores = _numpy_top_k(_embeddings(0), items)
    assert [ids for ids, _ in served] == want_ids.tolist()
    np.testing.assert_allclose([s for _, s in served], want_scores, atol=1e-5)
    assert all(item not in ids for item, (ids, _) in zip(items, served))


@pytest.mark.parametrize(("item", "message"), [
    (NO_VECTOR[0], f"item_id {NO_VECTOR[0]} is unknown to the toy-0 embedding table"),
    (N_ITEMS + 1, f"item_id {N_ITEMS + 1} is not an item id: ids are 1..{N_ITEMS}"),
    (-3, "item_id -3 is not an item id"),
    (0, "item_id 0 is not an item id"),
])
def test_unknown_ids_get_a_clear_invalid_argument_error(server: TritonServer, item: int, message: str) -> None:
    """The server's own check, with a raw request (the rxrec client already refuses ids < 1 before sending)."""
    if item < 1:
        with pytest.raises(ValueError, match=f"item id {item} is not an item id"):
            similar_items([1, item], url=server.url)
    with pytest.raises(tritonclient_utils.InferenceServerException, match=message) as failed:
        _infer("similar_items", {"item_id": np.asarray([[1], [item]], dtype=np.int64)}, ["item_ids", "scores"],
               url=server.url, protocol="http", timeout_s=10.0)
    assert "400" in str(failed.value.status()) or "INVALID" in str(failed.value.status()).upper()
    assert similar_items([1], url=server.url)[0][0] == _numpy_top_k(_embeddings(0), [1])[0][0].tolist()


def test_promotion_swaps_versions_without_failed_requests(server: TritonServer) -> None:
    """A new version folder loaded through the repository API; requests keep succeeding meanwhile."""
    repo = server.repo
    old_answer = similar_items([5], url=server.url)[0][0]
    written = _deploy(repo, _embeddings(1), max_exact_bytes=0)  # new table, neighbour-table graph
    assert written.new and written.version == 2
    failures: list[str] = []
    answers: list[list[int]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                answers.append(similar_items([5], url=server.url)[0][0])
            except Exception as exc:  # noqa: BLE001 - every failure is collected and asserted on
                failures.append(repr(exc))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        server.load("similar_items", timeout_s=120)
    finally:
        stop.set()
        thread.join()
    new_answer = _numpy_top_k(_embeddings(1), [5])[0][0].tolist()
    assert failures == [] and len(answers) > 0
    assert all(a in (old_answer, new_answer) for a in answers)
    assert similar_items([5], url=server.url)[0][0] == new_answer
    assert server.model_ready("similar_items", version=2)
    retired_by = time.monotonic() + 30  # Triton retires version 1 in the background after the load returns
    while server.model_ready("similar_items", version=1) and time.monotonic() < retired_by:
        time.sleep(0.1)
    assert not server.model_ready("similar_items", version=1)
    assert (repo / "similar_items" / "1" / "model.onnx").exists()  # the old folder stays for lineage/rollback
