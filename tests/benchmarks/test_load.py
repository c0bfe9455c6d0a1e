"""The load generator's statistics against a local fake Triton (a grpc server in this process).

The fake answers like Triton (ModelInferResponse with model_version and item_ids) after a known
service time, so the numbers the generator reports can be checked: latency at least the service
time, warm-up excluded, errors counted with their message, and queueing included in open-loop
latency when the offered rate exceeds what the fake can serve (no coordinated omission).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.load import LoadGenerator, LoadLevel, WorkerRecord, build_infer_request, summarise
from tests.serve.fake_grpc_triton import fake_triton_server

SERVICE_S = 0.005


@pytest.fixture(scope="module")
def parallel_fake() -> Iterator[str]:
    with fake_triton_server(SERVICE_S, version="7") as url:
        yield url


@pytest.fixture(scope="module")
def serial_fake() -> Iterator[str]:
    with fake_triton_server(SERVICE_S * 4, serial=True, version="7") as url:
        yield url


def _sessions(n: int = 4) -> list[np.ndarray]:
    return [np.arange(1, 6, dtype=np.int64) + i for i in range(n)]


@pytest.mark.parametrize("engine", ["threads", "asyncio"])
def test_open_loop_counts_latency_and_versions(parallel_fake: str, engine: str) -> None:
    level = LoadLevel(rate_per_s=200, duration_s=1.5, warmup_s=0.5, concurrency=32)
    with LoadGenerator(parallel_fake, workers=2, engine=engine) as generator:
        result = generator.run("m", _sessions(), level)
        due = np.concatenate([r.due for r in generator.last_records])
    assert result.mode == "open" and result.errors == 0
    assert abs(result.requests - 300) <= 2  # 200/s for 1.5 s, the warm-up's requests not counted
    assert len(due) == pytest.approx(400, abs=3)  # ... but sent
    assert SERVICE_S * 1e3 <= result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    assert result.p99_ms < 200  # 5 ms of service; 200 ms would mean the generator itself stalls
    assert result.achieved_rps == pytest.approx(200, rel=0.15)
    assert result.requests_per_min == pytest.approx(result.achieved_rps * 60, rel=1e-3)
    assert result.versions == {"7": 300 - result.errors}
    spacing = np.diff(np.sort(due))
    assert np.median(spacing) == pytest.approx(1 / 200, rel=0.2)  # workers interleave: even arrivals


def test_errors_are_counted_with_their_message(parallel_fake: str) -> None:
    sessions = [np.asarray([1, 2, 3]), np.asarray([1, -4, 3])]  # every second request is rejected
    with LoadGenerator(parallel_fake, workers=1) as generator:
        result = generator.run("m", sessions, LoadLevel(rate_per_s=100, duration_s=1.0, warmup_s=0.2))
    assert result.requests == pytest.approx(100, abs=2)
    assert result.errors == pytest.approx(result.requests / 2, abs=1)
    assert result.ok + result.errors == result.requests
    assert any("INVALID_ARGUMENT" in m and "negative id -4" in m for m in result.error_messages)


def test_open_loop_latency_includes_queueing(serial_fake: str) -> None:
    """The fake serves 50/s; offered 100/s the backlog must show in latency (closed loop would hide it)."""
    with LoadGenerator(serial_fake, workers=1) as generator:
        opened = generator.run("m", _sessions(), LoadLevel(rate_per_s=100, duration_s=1.0, warmup_s=0.0,
                                                           concurrency=200, timeout_s=10))
        closed = generator.run("m", _sessions(), LoadLevel(rate_per_s=None, duration_s=1.0, warmup_s=0.0,
                                                           concurrency=1))
    assert opened.errors == 0
    assert opened.achieved_rps < 65  # the fake's capacity (50/s), not the offered 100/s
    assert opened.p99_ms > 300  # a second of arrivals at twice the capacity: ~0.5 s of backlog at the end
    assert closed.mode == "closed" and closed.p50_ms < 60  # one client never queues: service time only
    assert closed.achieved_rps == pytest.approx(50, rel=0.3)


def test_summarise_drops_warmup_and_takes_percentiles() -> None:
    due = np.arange(10, dtype=float)  # start 0, warm-up 2 s: requests 0 and 1 are not counted
    latency = np.array([9, 9, 1, 2, 3, 4, 5, 6, 7, 8], dtype=float) / 1e3
    ok = np.ones(10, dtype=bool)
    ok[9] = False
    record = WorkerRecord(due=due, sent=due + 0.001, done=due + latency, ok=ok, versions=["1"] * 9 + [""],
                          first_items=np.zeros(10, dtype=np.int64), errors=Counter({"UNAVAILABLE: down": 1}))
    result = summarise([record], LoadLevel(rate_per_s=1.0, duration_s=8.0, warmup_s=2.0), 0.0, 1, 1)
    assert (result.requests, result.ok, result.errors) == (8, 7, 1)
    assert result.p50_ms == pytest.approx(4.0) and result.max_ms == pytest.approx(7.0)
    assert result.send_lag_p99_ms == pytest.approx(1.0)
    assert result.versions == {"1": 7} and result.error_messages == ["1x UNAVAILABLE: down"]


def test_bad_levels_and_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        LoadLevel(rate_per_s=0, duration_s=1)
    with pytest.raises(ValueError, match="duration_s"):
        LoadLevel(rate_per_s=10, duration_s=0)
    with pytest.raises(ValueError, match="workers"):
        LoadGenerator("127.0.0.1:1", workers=0)
    with pytest.raises(ValueError, match="engine"):
        LoadGenerator("127.0.0.1:1", engine="curl")
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest.FromString(build_infer_request("gpt4rec", np.array([0, 3, 9])))
    assert request.model_name == "gpt4rec" and list(request.inputs[0].shape) == [1, 3]
    assert np.frombuffer(request.raw_input_contents[0], dtype=np.int64).tolist() == [0, 3, 9]
