"""Bad requests get a clear error over gRPC and HTTP, and the server keeps serving afterwards.

One real tritonserver for the module (the toy model has the served contract and the real backend
model.py). Each case names the text the error must contain: the backend's own message for what
only it can know (unknown, negative, padding-only, too long), Triton's for what the model config
already rules out (dtype, rank, batch size, input name).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from pipelines.repository.versions import write_config, write_version
from pipelines.serve.triton_server import TritonServer
from tests.serve.toy_triton import MAX_BATCH, MAX_SEQ_LEN, N_ITEMS, TOP_K, export_toy_onnx, loaded

pytestmark = pytest.mark.slow
MODEL = "gpt4rec_bad_inputs"  # its own name in the session's shared Triton
GOOD = np.asarray([[0, 3, 17, 8]], dtype=np.int64)

# name -> (input name, array, Triton datatype, expected text in the error)
CASES: dict[str, tuple[str, np.ndarray, str, str]] = {
    "unknown_item_id": ("input_ids", np.asarray([[1, N_ITEMS + 1]], np.int64), "INT64",
                        f"id {N_ITEMS + 1} > n_items={N_ITEMS}; unknown item"),
    "negative_id": ("input_ids", np.asarray([[4, -3, 2]], np.int64), "INT64", "negative id -3"),
    "empty_sequence": ("input_ids", np.zeros((1, 0), np.int64), "INT64", "must not be empty"),
    "padding_only_session": ("input_ids", np.zeros((2, 3), np.int64), "INT64", "row 0 has no item"),
    "longer_than_max": ("input_ids", np.ones((1, MAX_SEQ_LEN + 1), np.int64), "INT64",
                        f"more than max_seq_len={MAX_SEQ_LEN}"),
    "int32_ids": ("input_ids", np.asarray([[1, 2]], np.int32), "INT32", "INT64"),
    "float_ids": ("input_ids", np.asarray([[1.0, 2.0]], np.float32), "FP32", "INT64"),
    "one_dimensional": ("input_ids", np.asarray([1, 2, 3], np.int64), "INT64", "shape"),
    "three_dimensional": ("input_ids", np.ones((1, 2, 3), np.int64), "INT64", "shape"),
    "batch_too_large": ("input_ids", np.ones((MAX_BATCH + 1, 2), np.int64), "INT64",
                        f"batch-size must be <= {MAX_BATCH}"),
    "wrong_input_name": ("item_ids_in", np.asarray([[1, 2]], np.int64), "INT64",
                         "unexpected inference input 'item_ids_in'"),
}


@pytest.fixture(scope="module")
def server(triton: TritonServer, tmp_path_factory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("bad_inputs")
    write_config(triton.repo, MODEL, max_batch_size=MAX_BATCH, top_k=TOP_K, n_items=N_ITEMS,
                 max_seq_len=MAX_SEQ_LEN)
    write_version(triton.repo, MODEL, export_toy_onnx(work / "toy.onnx", seed=0), metadata={"test": "bad_inputs"})
    with loaded(triton, MODEL) as srv:
        yield srv


def _infer(server: TritonServer, protocol: str, name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    if protocol == "grpc":
        import tritonclient.grpc as client_lib

        client = client_lib.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    else:
        import tritonclient.http as client_lib

        client = client_lib.InferenceServerClient(url=server.url)
    try:
        infer_input = client_lib.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        result = client.infer(MODEL, [infer_input], outputs=[client_lib.InferRequestedOutput("item_ids")])
        return result.as_numpy("item_ids")
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_rejected_clearly_and_server_stays_up(server: TritonServer, protocol: str, case: str) -> None:
    from tritonclient.utils import InferenceServerException

    name, array, datatype, expected = CASES[case]
    with pytest.raises(InferenceServerException) as rejected:
        _infer(server, protocol, name, array, datatype)
    print(f"{protocol} {case}: {rejected.value}")
    assert expected in str(rejected.value)
    assert server.is_ready() and server.model_ready(MODEL)
    answer = _infer(server, protocol, "input_ids", GOOD, "INT64")
    assert answer.shape == (1, TOP_K) and ((answer >= 1) & (answer <= N_ITEMS)).all()


def test_bad_request_does_not_fail_its_batch_neighbours(server: TritonServer) -> None:
    """Good and bad requests in flight together: only the bad ones fail (dynamic batching mixes them)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    results: list = []
    try:
        for i in range(24):
            array = GOOD if i % 3 else np.asarray([[1, N_ITEMS + 5]], np.int64)
            infer_input = grpcclient.InferInput("input_ids", list(array.shape), "INT64")
            infer_input.set_data_from_numpy(array)
            client.async_infer(MODEL, [infer_input], callback=lambda result, error, i=i: results.append((i, result, error)))
        deadline = time.monotonic() + 30
        while len(results) < 24 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.close()
    assert len(results) == 24
    for i, result, error in results:
        if i % 3:
            assert error is None and result.as_numpy("item_ids").shape == (1, TOP_K)
        else:
            assert isinstance(error, InferenceServerException) and "unknown item" in str(error)


def test_left_padding_does_not_change_the_answer(server: TritonServer) -> None:
    """The backend cuts padding columns shared by a whole batch; the contract says answers must not move."""
    session = [3, 17, 8]
    answers = [_infer(server, protocol, "input_ids", np.asarray([[0] * pad + session], np.int64), "INT64")
               for protocol in ("grpc", "http") for pad in (0, 1, MAX_SEQ_LEN - len(session))]
    assert all((a == answers[0]).all() for a in answers)
