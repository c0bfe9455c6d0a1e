"""A GPT4Rec trained with event kinds on the real tritonserver: the optional `event_types` input.

Answers with and without event_types must be what ONNX Runtime gives for the same kinds (zeros when
none are sent), bad event_types get a clear error, and the server keeps serving afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pipelines.repository.versions import write_config, write_version
from pipelines.serve.triton_server import TritonServer
from tests.serve.toy_triton import loaded

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

MODEL, N_ITEMS, TOP_K, MAX_LEN, MAX_BATCH = "gpt4rec_event_types", 40, 5, 12, 16  # own name in the shared Triton
SESSION = np.asarray([[3, 17, 8]], np.int64)


@pytest.fixture(scope="module")
def served(triton: TritonServer, tmp_path_factory) -> Iterator[tuple[TritonServer, object]]:
    from pipelines.export.onnx import export_onnx, onnx_session
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

    work = tmp_path_factory.mktemp("event_types")
    torch.manual_seed(3)
    model = GPT4Rec(GPT4RecConfig(n_items=N_ITEMS, dim=16, layers=1, heads=2, max_len=MAX_LEN, dropout=0.0,
                                  event_kinds=4)).eval()
    with torch.no_grad():  # kinds strong enough to change the top-k
        model.kind_emb.weight[1:] *= 50
    onnx_path = export_onnx(model, work / "onnx", k=TOP_K, opset=18)
    repo = triton.repo
    write_config(repo, MODEL, max_batch_size=MAX_BATCH, top_k=TOP_K, n_items=N_ITEMS, max_seq_len=MAX_LEN,
                 event_kinds=4)
    write_version(repo, MODEL, onnx_path, metadata={"test": "event_types"})
    with loaded(triton, MODEL) as server:
        yield server, onnx_session(onnx_path)


def _infer(server: TritonServer, protocol: str, ids: np.ndarray, kinds: np.ndarray | None = None,
           kinds_type: str = "INT64") -> np.ndarray:
    if protocol == "grpc":
        import tritonclient.grpc as client_lib

        client = client_lib.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    else:
        import tritonclient.http as client_lib

        client = client_lib.InferenceServerClient(url=server.url)
    try:
        inputs = [client_lib.InferInput("input_ids", list(ids.shape), "INT64")]
        inputs[0].set_data_from_numpy(ids)
        if kinds is not None:
            inputs.append(client_lib.InferInput("event_types", list(kinds.shape), kinds_type))
            inputs[1].set_data_from_numpy(kinds)
        result = client.infer(MODEL, inputs, outputs=[client_lib.InferRequestedOutput("item_ids")])
        return result.as_numpy("item_ids")
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_answers_with_and_without_event_types_match_onnx_runtime(served, protocol: str) -> None:
    from pipelines.export.onnx import onnx_top_k

    server, session = served
    without = _infer(server, protocol, SESSION)
    assert np.array_equal(without, onnx_top_k(session, SESSION)[0])  # absent == all unknown
    assert np.array_equal(without, _infer(server, protocol, SESSION, np.zeros_like(SESSION)))
    answers = set()
    for kinds in ([[1, 1, 1]], [[1, 2, 4]], [[4, 4, 3]], [[0, 0, 4]]):
        kinds = np.asarray(kinds, np.int64)
        got = _infer(server, protocol, SESSION, kinds)
        assert np.array_equal(got, onnx_top_k(session, SESSION, kinds)[0]), kinds
        answers.add(tuple(got[0]))
    assert len(answers) > 1  # the kinds reach the model


def test_leading_padding_is_cut_from_both_inputs(served) -> None:
    from pipelines.export.onnx import onnx_top_k

    server, session = served
    ids = np.asarray([[0, 0, 0, 3, 17, 8], [0, 5, 6, 7, 9, 11]], np.int64)
    kinds = np.asarray([[0, 0, 0, 1, 2, 4], [0, 4, 4, 1, 1, 3]], np.int64)
    assert np.array_equal(_infer(server, "grpc", ids, kinds), onnx_top_k(session, ids, kinds)[0])
    assert np.array_equal(_infer(server, "grpc", ids[:1, 3:], kinds[:1, 3:]), onnx_top_k(session, ids, kinds)[0][:1])


BAD: dict[str, tuple[np.ndarray, str, str]] = {
    "kind_above_range": (np.asarray([[1, 5, 2]], np.int64), "INT64", "event_types contains kind 5; kinds are 0..4"),
    "negative_kind": (np.asarray([[1, -1, 2]], np.int64), "INT64", "event_types contains kind -1"),
    "shorter_than_ids": (np.asarray([[1, 2]], np.int64), "INT64", "event_types must have the shape of input_ids"),
    "int32_kinds": (np.asarray([[1, 2, 3]], np.int32), "INT32", "INT64"),
    "one_dimensional": (np.asarray([1, 2, 3], np.int64), "INT64", "batch size does not match other inputs"),
    "other_batch_size": (np.ones((2, 3), np.int64), "INT64", "batch size does not match other inputs"),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_event_types_are_rejected_clearly(served, protocol: str, case: str) -> None:
    from tritonclient.utils import InferenceServerException

    server, _ = served
    kinds, datatype, expected = BAD[case]
    with pytest.raises(InferenceServerException) as rejected:
        _infer(server, protocol, SESSION, kinds, datatype)
    print(f"{protocol} {case}: {rejected.value}")
    assert expected in str(rejected.value)
    assert server.is_ready() and server.model_ready(MODEL)
    assert _infer(server, protocol, SESSION, np.asarray([[1, 2, 3]], np.int64)).shape == (1, TOP_K)


def test_bad_kinds_do_not_fail_batch_neighbours(served) -> None:
    """Requests with, without and with bad kinds in flight together: only the bad ones fail."""
    import time

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from pipelines.export.onnx import onnx_top_k

    server, session = served
    good_kinds = np.asarray([[4, 2, 1]], np.int64)
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    results: list = []
    try:
        for i in range(24):
            inputs = [grpcclient.InferInput("input_ids", [1, 3], "INT64")]
            inputs[0].set_data_from_numpy(SESSION)
            if i % 3:
                kinds = good_kinds if i % 3 == 1 else np.asarray([[1, 9, 1]], np.int64)
                inputs.append(grpcclient.InferInput("event_types", [1, 3], "INT64"))
                inputs[1].set_data_from_numpy(kinds)
            client.async_infer(MODEL, inputs, callback=lambda result, error, i=i: results.append((i, result, error)))
        deadline = time.monotonic() + 30
        while len(results) < 24 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.close()
    assert len(results) == 24
    plain, kinded = onnx_top_k(session, SESSION)[0], onnx_top_k(session, SESSION, good_kinds)[0]
    for i, result, error in results:
        if i % 3 == 2:
            assert isinstance(error, InferenceServerException) and "kind 9" in str(error)
        else:
            assert error is None and np.array_equal(result.as_numpy("item_ids"), kinded if i % 3 else plain)
