"""Fuzzed requests to every served model over a real tritonserver: a clear refusal or a well-formed answer.

One tritonserver for the module serves the three request parsers users reach: `gpt4rec` (the
real backend model.py over a toy ONNX model with the served contract, max_seq_len set),
`gpt4rec_kinds` (the same backend over a toy that also takes `event_types`), `recommend` (the BLS
entry point with its fallback tables, asking `gpt4rec_kinds`) and `similar_items`. Hypothesis
draws requests over gRPC and HTTP: random Triton datatypes, 0-D..3-D shapes (empty, over the
batch limit, thousands of positions), values (negative, out of range, int64 extremes, padding
only, NaN/inf for floats), missing, extra and misnamed inputs, `event_types` and
`purchased_ids` that do not match the session. An oracle written from the model contracts (not
from the server's answers) says whether each request must be accepted. Every call must come back
within a timeout; a refusal must be an invalid-argument error whose message names the input; an
answer must have the contract's shapes and ids in range. At the end the server and every model
are still live and ready, and the server process never restarted.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.repository.models import (
    FallbackTables,
    write_recommend_config,
    write_recommend_version,
    write_similar_items_config,
    write_similar_items_version,
)
from pipelines.repository.versions import write_config, write_version
from pipelines.serve.triton_server import TritonServer, default_venv
from tests.serve.toy_triton import MAX_BATCH, MAX_SEQ_LEN, N_ITEMS, TOP_K, export_toy_onnx, running_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # four models loaded (120 s each at most), then thousands of requests
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="Triton serving venv missing: run `make setup` (infra/triton/setup.sh)"),
]

EXAMPLES = int(os.environ.get("RXREC_FUZZ_EXAMPLES", "3000"))  # fuzzed requests; ~40 s on 2 shared cores
CALL_TIMEOUT_S = 10.0  # any call slower than this counts as a hang
EITHER = "either"  # the oracle's verdict where the contract allows both a refusal and an answer
EVENT_KINDS = 4
SIM_N_ITEMS, NO_VECTOR = 60, (7, 19)
# recommend's tables: items 1..30 warm, 31..35 cold products, 36..40 not in the catalogue
CATALOGUE = np.r_[False, np.ones(35, bool), np.zeros(5, bool)]
INTERACTIONS = np.r_[0, np.full(30, 5), np.zeros(10, int)].astype(np.int64)
POPULARITY = np.r_[0.0, (np.arange(1, N_ITEMS + 1) * 7) % 41].astype(np.float32)
INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max

# model -> (required inputs, optional inputs)
INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gpt4rec": (("input_ids",), ()),
    "gpt4rec_kinds": (("input_ids",), ("event_types",)),
    "recommend": (("session_ids",), ("purchased_ids", "event_types")),
    "similar_items": (("item_id",), ()),
}
ALL_NAMES = sorted({n for req, opt in INPUTS.values() for n in (*req, *opt)} | {"ids", "INPUT_IDS", "session"})
DTYPES = ["INT64"] * 6 + ["INT32", "UINT64", "INT8", "FP32", "FP64", "FP16", "BOOL", "BYTES"]
NUMPY = {"INT64": np.int64, "INT32": np.int32, "UINT64": np.uint64, "INT8": np.int8, "FP32": np.float32,
         "FP64": np.float64, "FP16": np.float16, "BOOL": np.bool_, "BYTES": np.object_}


def _toy_kinds_onnx(path: Path) -> Path:
    """A toy with the served contract that also reads event_types (ONNX metadata event_kinds=4)."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")

    class ToyKinds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(N_ITEMS + 1, 8, padding_idx=0)
            self.kind = torch.nn.Embedding(EVENT_KINDS + 1, 8)

        def forward(self, input_ids, event_types):
            mask = (input_ids > 0).unsqueeze(-1).float()
            h = ((self.emb(input_ids) + self.kind(event_types)) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            scores, idx = torch.topk(h @ self.emb.weight[1:].T, TOP_K, dim=-1)
            return idx + 1, scores

    torch.manual_seed(1)
    example = (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    torch.onnx.export(
        ToyKinds().eval(), example, str(path), input_names=["input_ids", "event_types"],
        output_names=["item_ids", "scores"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "event_types": {0: "batch", 1: "seq"},
                      "item_ids": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=18, dynamo=False,
    )
    model = onnx.load(str(path))
    for key, value in (("n_items", N_ITEMS), ("event_kinds", EVENT_KINDS)):
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))
    return path


def _similar_graph():
    from pipelines.core.config import SimilarSettings
    from pipelines.embed.prod2vec import ItemEmbeddings
    from pipelines.export.similar_onnx import build_similar_items

    rng = np.random.default_rng(0)
    known = np.ones(SIM_N_ITEMS + 1, dtype=bool)
    known[[0, *NO_VECTOR]] = False
    vectors = rng.normal(size=(SIM_N_ITEMS + 1, 8)).astype(np.float32)
    vectors[~known] = 0.0
    return build_similar_items(ItemEmbeddings(vectors, known, {"method": "toy"}), SimilarSettings(k=TOP_K))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("fuzz_requests")
    repo = work / "repo"
    write_config(repo, "gpt4rec", max_batch_size=MAX_BATCH, top_k=TOP_K, n_items=N_ITEMS, max_seq_len=MAX_SEQ_LEN)
    write_version(repo, "gpt4rec", export_toy_onnx(work / "toy.onnx", seed=0), metadata={"test": "fuzz"})
    write_config(repo, "gpt4rec_kinds", max_batch_size=MAX_BATCH, top_k=TOP_K, n_items=N_ITEMS,
                 max_seq_len=MAX_SEQ_LEN, event_kinds=EVENT_KINDS)
    write_version(repo, "gpt4rec_kinds", _toy_kinds_onnx(work / "toy_kinds.onnx"), metadata={"test": "fuzz"})
    rows, cols, vals = zip(*[(31, 32, 0.9), (31, 12, 0.5), (34, 36, 0.8), (34, 2, 0.3)])
    rules = sp.csr_matrix((vals, (rows, cols)), shape=(N_ITEMS + 1, N_ITEMS + 1), dtype=np.float32)
    write_recommend_config(repo, top_k=TOP_K, n_items=N_ITEMS, max_batch_size=MAX_BATCH,
                           gpt4rec_model="gpt4rec_kinds", gpt4rec_max_len=MAX_SEQ_LEN,
                           gpt4rec_max_batch_size=MAX_BATCH)
    write_recommend_version(repo, FallbackTables(POPULARITY, INTERACTIONS, CATALOGUE, rules), metadata={})
    graph = _similar_graph()
    write_similar_items_config(repo, top_k=graph.top_k, n_items=graph.n_items, max_batch_size=MAX_BATCH)
    write_similar_items_version(repo, graph.model.SerializeToString(), graph.known, metadata={})
    with running_server(repo, work) as srv:
        for name in ("gpt4rec", "gpt4rec_kinds", "recommend", "similar_items"):
            srv.load(name, timeout_s=120)
        yield srv


# ---------------------------------------------------------------------------------- the requests

@dataclass
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass
class Request:
    model: str
    protocol: str
    inputs: list[Tensor] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{t.name}:{t.datatype}{list(t.array.shape)}" for t in self.inputs]
        return f"{self.protocol} {self.model}({', '.join(parts)})"


VALUE_KINDS = ("valid",) * 6 + ("with_padding", "with_padding", "zeros", "negative", "above_n_items", "extremes",
               "unknown_items", "nan_inf")


def _values(rng: np.random.Generator, shape: tuple[int, ...], kind: str, hi: int, datatype: str) -> np.ndarray:
    """An array of `shape` whose values follow `kind`; `hi` is the largest valid value."""
    size = int(np.prod(shape)) if shape else 1
    if kind == "valid":
        flat = rng.integers(1, hi + 1, size=size)
    elif kind == "with_padding":
        flat = rng.integers(0, hi + 1, size=size)
    elif kind == "zeros":
        flat = np.zeros(size, dtype=np.int64)
    elif kind == "negative":
        flat = rng.integers(0, hi + 1, size=size)
        if size:
            flat[rng.integers(0, size)] = -int(rng.integers(1, 1000))
    elif kind == "above_n_items":
        flat = rng.integers(1, hi + 1, size=size)
        if size:
            flat[rng.integers(0, size)] = hi + int(rng.integers(1, 1000))
    elif kind == "extremes":
        flat = rng.choice(np.array([INT64_MIN, INT64_MAX, -1, 0, 1, hi, hi + 1, 2**31, -(2**31)],
                                   dtype=np.int64), size=size)
    elif kind == "unknown_items":  # recommend: ids above n_items or outside the catalogue, dropped not refused
        flat = rng.choice(np.array([36, 37, 40, 41, 999, 2**40, INT64_MAX], dtype=np.int64), size=size)
    else:  # nan_inf: only meaningful for floats; ints get extremes
        flat = rng.choice(np.array([np.nan, np.inf, -np.inf, 1.5, -0.0, 3.0]), size=size)
    if datatype == "BYTES":
        return np.array([str(v).encode() for v in np.ravel(flat)], dtype=np.object_).reshape(shape)
    target = NUMPY[datatype]
    if np.issubdtype(target, np.floating) or flat.dtype.kind == "f":
        with np.errstate(all="ignore"):
            return np.asarray(flat, dtype=np.float64).astype(target).reshape(shape)
    with np.errstate(all="ignore"):
        return np.asarray(flat).astype(target).reshape(shape)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """One request: a model, a protocol and a set of inputs, mostly near the contract."""
    model = draw(st.sampled_from(sorted(INPUTS)))
    protocol = draw(st.sampled_from(["grpc", "http"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    required, optional = INPUTS[model]
    names = list(required)
    for name in optional:
        if draw(st.booleans()):
            names.append(name)
    mutation = draw(st.sampled_from(["none"] * 24 + ["drop_required", "rename", "extra", "duplicate"]))
    if mutation == "drop_required":
        names = [n for n in names if n not in required]
    elif mutation == "rename":
        names[0] = draw(st.sampled_from([n for n in ALL_NAMES if n not in names]))
    elif mutation == "extra":
        names.append(draw(st.sampled_from([n for n in ALL_NAMES if n not in names])))
    elif mutation == "duplicate" and names:
        names.append(names[0])
    # one shape for the session-like inputs; other inputs usually share it, sometimes not
    ndim = draw(st.sampled_from([2] * 16 + [0, 1, 3]))
    # Batch 0 is not drawn for the first input: Triton 2.51 never answers a request whose batch
    # dimension is 0 and that carries no bytes (no backend is called; see the batch-0 test below).
    batch = draw(st.sampled_from([1, 1, 2, 3, 4, MAX_BATCH, MAX_BATCH + 1]))
    width = 1 if model == "similar_items" and draw(st.integers(0, 5)) else draw(
        st.sampled_from([1, 2, 3, 5, 8, MAX_SEQ_LEN] * 2 + [MAX_SEQ_LEN + 1, 0, 64, 2048, 20000]))
    base_shape = tuple([batch, width, 2][:ndim]) if ndim else ()
    if len(base_shape) and int(np.prod(base_shape)) * 8 > 4_000_000:  # huge dims stay within ~4 MB
        base_shape = (1, *base_shape[1:])
    all_int64 = draw(st.integers(0, 3)) > 0
    inputs = []
    for name in names:
        shape = base_shape
        if name != names[0] and draw(st.integers(0, 7)) == 0:  # a mismatched companion input
            shape = (max(0, batch + draw(st.sampled_from([-1, 1]))), width) if draw(st.booleans()) \
                else (batch, max(0, width + draw(st.sampled_from([-1, 1, 3]))))
        datatype = "INT64" if all_int64 else draw(st.sampled_from(DTYPES))
        kind = draw(st.sampled_from(VALUE_KINDS))
        hi = {"event_types": EVENT_KINDS, "item_id": SIM_N_ITEMS}.get(name, N_ITEMS)
        inputs.append(Tensor(name, datatype, _values(rng, shape, kind, hi, datatype)))
    return Request(model, protocol, inputs)


# ---------------------------------------------------------------------------------- the oracle

def _expected_problem(request: Request) -> str | None:
    """Why the contract (model config + backend docstring) must refuse this request, or None."""
    model = request.model
    required, optional = INPUTS[model]
    names = [t.name for t in request.inputs]
    if len(set(names)) != len(names):
        return "duplicate input"
    unexpected = [n for n in names if n not in (*required, *optional)]
    if unexpected:
        return f"unexpected input {unexpected[0]}"
    if any(n not in names for n in required):
        return "missing input"
    tensors = {t.name: t for t in request.inputs}
    for t in request.inputs:
        if t.datatype != "INT64":
            return f"{t.name} datatype"
        if t.array.ndim != 2:
            return f"{t.name} rank"
        if not 1 <= t.array.shape[0] <= MAX_BATCH:
            return f"{t.name} batch size"
        if model == "similar_items" and t.array.shape[1] != 1:
            return f"{t.name} shape"
    if len({t.array.shape[0] for t in request.inputs}) > 1:
        # Triton compares batch sizes, but a companion input without data may be taken either way
        return EITHER if any(t.array.size == 0 for t in request.inputs) else "batch sizes differ"
    if model in ("gpt4rec", "gpt4rec_kinds"):
        x = tensors["input_ids"].array
        if x.shape[1] == 0 or x.shape[1] > MAX_SEQ_LEN:
            return "input_ids width"
        if x.min() < 0 or x.max() > N_ITEMS:
            return "input_ids range"
        if not x.any(axis=1).all():
            return "input_ids padding-only row"
        if "event_types" in tensors:
            k = tensors["event_types"].array
            if k.shape != x.shape:
                return "event_types shape"
            if k.size and (k.min() < 0 or k.max() > EVENT_KINDS):
                return "event_types range"
        return None
    if model == "similar_items":
        x = tensors["item_id"].array[:, 0]
        if ((x < 1) | (x > SIM_N_ITEMS)).any():
            return "item_id range"
        if np.isin(x, NO_VECTOR).any():
            return "item_id without vector"
        return None
    # recommend
    s = tensors["session_ids"].array
    for name, t in tensors.items():
        if t.array.size and t.array.min() < 0:
            return f"{name} negative"
    if "event_types" in tensors:
        k = tensors["event_types"].array
        if k.shape != s.shape:
            return "event_types shape"
        if k.size and k.max() > EVENT_KINDS:
            return "event_types range"
    return None


# ---------------------------------------------------------------------------------- the calls

class Clients:
    """One gRPC and one HTTP client for the whole run (each with a hang timeout)."""

    def __init__(self, server: TritonServer) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.libs = {"grpc": grpcclient, "http": httpclient}
        self.clients = {
            "grpc": grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}"),
            "http": httpclient.InferenceServerClient(url=server.url, connection_timeout=CALL_TIMEOUT_S,
                                                     network_timeout=CALL_TIMEOUT_S),
        }

    def infer(self, request: Request) -> dict[str, np.ndarray]:
        lib, client = self.libs[request.protocol], self.clients[request.protocol]
        infer_inputs = []
        for t in request.inputs:
            infer_input = lib.InferInput(t.name, list(t.array.shape), t.datatype)
            if request.protocol == "http":
                infer_input.set_data_from_numpy(t.array, binary_data=True)
            else:
                infer_input.set_data_from_numpy(t.array)
            infer_inputs.append(infer_input)
        outputs = ["item_ids", "scores"] + (["source", "unknown_ids"] if request.model == "recommend" else [])
        extra = {"client_timeout": CALL_TIMEOUT_S} if request.protocol == "grpc" else {}
        result = client.infer(request.model, infer_inputs, outputs=[lib.InferRequestedOutput(o) for o in outputs],
                              **extra)
        return {o: result.as_numpy(o) for o in outputs}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _check_answer(request: Request, out: dict[str, np.ndarray]) -> None:
    """A valid request's answer: the contract's shapes, ids in range, finite scores."""
    tensors = {t.name: t.array for t in request.inputs}
    first = request.inputs[0].array if request.model != "recommend" else tensors["session_ids"]
    batch = first.shape[0]
    ids, scores = out["item_ids"], out["scores"]
    assert ids.shape == (batch, TOP_K) and scores.shape == (batch, TOP_K), (ids.shape, scores.shape)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    if request.model in ("gpt4rec", "gpt4rec_kinds"):
        assert ((ids >= 1) & (ids <= N_ITEMS)).all(), ids
        assert np.isfinite(scores).all(), scores
    elif request.model == "similar_items":
        items = tensors["item_id"][:, 0]
        assert ((ids >= 1) & (ids <= SIM_N_ITEMS)).all() and not np.isin(ids, NO_VECTOR).any(), ids
        assert not (ids == items[:, None]).any(), "an item is its own most similar product"
        assert np.isfinite(scores).all() and (np.abs(scores) <= 1 + 1e-4).all(), scores
    else:
        purchased = tensors.get("purchased_ids")
        for r in range(batch):
            row = ids[r][ids[r] >= 0]
            assert (ids[r][len(row):] == -1).all(), f"-1 pads only at the end: {ids[r]}"
            assert len(set(row.tolist())) == len(row), f"duplicate recommendations {row}"
            assert CATALOGUE[row].all(), f"a recommended id is not a product: {row}"
            session = tensors["session_ids"][r]
            known = session[(session > 0) & (session <= N_ITEMS)]
            known = known[CATALOGUE[known]]
            assert not np.isin(row, known).any(), f"recommended an item of the session: {row} / {known}"
            if purchased is not None:
                assert not np.isin(row, purchased[r]).any(), f"recommended a purchased item: {row}"
            unknown = session[(session > N_ITEMS) | ((session > 0) & ~CATALOGUE[np.clip(session, 0, N_ITEMS)])]
            reported = out["unknown_ids"][r]
            assert sorted(reported[reported != 0].tolist()) == sorted(unknown.tolist()), (reported, unknown)
            source = out["source"][r].reshape(-1)[0]
            assert (source.decode() if isinstance(source, bytes) else str(source)) in ("gpt4rec", "rules",
                                                                                     "popularity")


def _check_refusal(request: Request, exc: Exception) -> str:
    """A refusal: invalid-argument status and a message naming an input or the rule broken."""
    status, message = str(exc.status()), str(exc.message() or "")
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), f"{request.describe()}: status {status}: {message}"
    assert "Traceback" not in message and "onnxruntime failed" not in message and "Stub" not in message, message
    names = {t.name for t in request.inputs} | set(INPUTS[request.model][0])
    assert any(n in message for n in names) or "batch-size" in message or "inputs" in message, \
        f"{request.describe()}: the message names no input: {message}"
    return message


@pytest.mark.reliability(kind="bad-input", name="Fuzzed inference requests to every served model (gRPC + HTTP)")
def test_fuzzed_requests_get_clear_refusals_or_well_formed_answers(server: TritonServer, ledger) -> None:
    from tritonclient.utils import InferenceServerException

    pid = server.pid
    clients = Clients(server)
    tally: Counter[str] = Counter()
    slowest = [0.0]
    mismatches: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(request=requests())
    def one(request: Request) -> None:
        tally["cases"] += 1
        tally[f"{request.protocol}:{request.model}"] += 1
        expected = _expected_problem(request)
        started = time.monotonic()
        try:
            out = clients.infer(request)
            error = None
        except InferenceServerException as exc:
            error = exc
        elapsed = time.monotonic() - started
        slowest[0] = max(slowest[0], elapsed)
        assert elapsed < CALL_TIMEOUT_S, f"{request.describe()} took {elapsed:.1f}s"
        if expected == EITHER:
            tally["either"] += 1
            if error is None:
                _check_answer(request, out)
            else:
                _check_refusal(request, error)
            tally["answered" if error is None else "refused"] += 1
        elif error is None:
            if expected is not None:
                mismatches.append(f"{request.describe()}: accepted but the contract refuses it ({expected})")
            assert expected is None, mismatches[-1]
            _check_answer(request, out)
            tally["answered"] += 1
        else:
            assert expected is not None, f"{request.describe()}: refused but valid: {error}"
            _check_refusal(request, error)
            tally["refused"] += 1

    started = time.monotonic()
    try:
        one()
    finally:
        clients.close()
    seconds = time.monotonic() - started
    assert server.pid == pid and server.is_live() and server.is_ready(), server.log_tail()
    for model in INPUTS:
        assert server.model_ready(model), f"{model} not ready after fuzzing\n{server.log_tail()}"
    cases = tally["cases"]
    assert cases >= 2000 and tally["answered"] > 100 and tally["refused"] > 100, tally
    by_target = {k: v for k, v in sorted(tally.items()) if ":" in k}
    ledger.record(
        cases=cases,
        outcome=(f"{cases} fuzzed requests over gRPC and HTTP to 4 models: {tally['answered']} well-formed answers, "
                 f"{tally['refused']} invalid-argument refusals naming the input, 0 crashes, 0 hangs "
                 f"(slowest call {slowest[0]:.2f}s); server pid unchanged and every model ready after"),
        nothing_lost=True, nothing_promoted=True,
        answered=tally["answered"], refused=tally["refused"], per_target=by_target,
        slowest_call_s=round(slowest[0], 3), seconds=round(seconds, 1), mean_ms=round(1000 * seconds / cases, 2),
        server_pid_unchanged=server.pid == pid, either_verdicts=tally["either"],
    )


@pytest.mark.reliability(kind="bad-input", name="Empty-batch requests (batch dimension 0, no data)")
def test_empty_batch_requests_time_out_at_the_client_and_harm_nothing(server: TritonServer, ledger) -> None:
    """A request with batch dimension 0 and no bytes: Triton 2.51 accepts it but never calls a backend.

    The backend cannot refuse what it never sees, so the fail-safe is the caller's deadline and
    the clients in pipelines/serve/client.py, which never build such a request (they refuse an
    empty list of sessions/items with ValueError). What must hold: each such call ends by the
    client's deadline (a refusal if a later Triton answers it), good requests sent while they wait
    are answered, and the server and every model stay ready.
    """
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from pipelines.serve.client import pad_sessions, similar_items

    deadline_s = 2.0
    outcomes: Counter[str] = Counter()
    good = Request("gpt4rec", "grpc", [Tensor("input_ids", "INT64", np.asarray([[0, 3, 17]], np.int64))])
    clients = Clients(server)
    empty = {"gpt4rec": ("input_ids", (0, 0)), "recommend": ("session_ids", (0, 0)),
             "gpt4rec_kinds": ("input_ids", (0, 0))}
    try:
        for model, (name, shape) in empty.items():
            for protocol, lib in (("grpc", grpcclient), ("http", httpclient)):
                if protocol == "grpc":
                    client = lib.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
                    extra = {"client_timeout": deadline_s}
                else:
                    client = lib.InferenceServerClient(url=server.url, network_timeout=deadline_s)
                    extra = {}
                infer_input = lib.InferInput(name, list(shape), "INT64")
                infer_input.set_data_from_numpy(np.zeros(shape, np.int64))
                started = time.monotonic()
                try:
                    client.infer(model, [infer_input], **extra)
                    outcomes["answered"] += 1
                except InferenceServerException as exc:
                    timed_out = "DEADLINE_EXCEEDED" in str(exc.status())
                    outcomes["timed_out" if timed_out else "refused"] += 1
                    if not timed_out:
                        _check_refusal(Request(model, protocol, [Tensor(name, "INT64", np.zeros(shape))]), exc)
                except TimeoutError:
                    outcomes["timed_out"] += 1
                finally:
                    client.close()
                assert time.monotonic() - started < deadline_s + 3, "the client deadline did not end the call"
                _check_answer(good, clients.infer(good))  # the server keeps answering meanwhile
                outcomes["good_answered"] += 1
    finally:
        clients.close()
    assert outcomes["answered"] == 0, "an empty batch must not be answered as if it held sessions"
    assert server.is_ready() and all(server.model_ready(m) for m in INPUTS), server.log_tail()
    # our clients never send one: they refuse an empty batch before anything is sent
    refused_locally = 0
    for call in (lambda: pad_sessions([]), lambda: similar_items([], url=server.url)):
        with pytest.raises(ValueError, match="non-empty list"):
            call()
        refused_locally += 1
    cases = outcomes["timed_out"] + outcomes["refused"] + refused_locally
    ledger.record(
        cases=cases,
        outcome=(f"{outcomes['timed_out'] + outcomes['refused']} raw batch-0 requests: {outcomes['timed_out']} "
                 f"ended by the {deadline_s:.0f}s client deadline (Triton 2.51 never hands them to a backend), "
                 f"{outcomes['refused']} refused, 0 answered; {outcomes['good_answered']} good requests answered "
                 f"meanwhile; the rxrec clients refuse to build one ({refused_locally} of {refused_locally})"),
        nothing_lost=True, nothing_promoted=True, **dict(outcomes),
    )
