"""The retry policy itself: backoff bounds, what is retried, and the final error's wording (fast, no services)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.retry import RetryPolicy, ServiceUnavailable, call_with_retry, is_transient

BIN = Path(sys.executable).parent


def test_delays_grow_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(attempts=8, backoff_s=1.0, max_backoff_s=10.0)
    rng = random.Random(3)
    for n in range(1, 8):
        base = min(10.0, 2 ** (n - 1))
        delays = [policy.delay(n, rng) for _ in range(200)]
        assert base * 0.5 <= min(delays) and max(delays) <= base * 1.5
        assert len({round(d, 6) for d in delays}) > 100  # jittered: attempts of many tasks do not align
    assert policy.window_s() == pytest.approx(1.5 * (1 + 2 + 4 + 8 + 10 + 10 + 10))


def test_transient_failures_are_retried_then_reported_with_url_attempts_and_advice():
    calls, waits = [], []

    def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    with pytest.raises(ServiceUnavailable) as caught:
        call_with_retry(down, service="MLflow", url="http://127.0.0.1:5000", policy=RetryPolicy(4, 0.5, 2.0),
                        advice="Start mlflow/server.sh.", sleep=waits.append)
    exc = caught.value
    assert len(calls) == exc.attempts == 4 and len(waits) == 3 and exc.delays_s == waits
    assert 0.25 <= waits[0] <= 0.75 and 0.5 <= waits[1] <= 1.5 and 1.0 <= waits[2] <= 3.0
    message = str(exc)
    assert message.startswith("MLflow at http://127.0.0.1:5000 is unavailable: 4 attempts")
    assert "Connection refused" in message and message.endswith("Start mlflow/server.sh.")


def test_a_blip_is_ridden_out_and_a_wrong_request_is_not_retried():
    outcomes = iter([TimeoutError("read timed out"), OSError("Connection reset by peer"), "ok"])

    def flaky() -> str:
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    assert call_with_retry(flaky, service="S", url="u", policy=RetryPolicy(3, 0.0), advice="", sleep=lambda _: None) \
        == "ok"
    calls = []

    def wrong() -> None:
        calls.append(1)
        raise ValueError("RESOURCE_DOES_NOT_EXIST: Registered Model with name=gpt4rec not found")

    with pytest.raises(ValueError):
        call_with_retry(wrong, service="S", url="u", policy=RetryPolicy(5, 0.0), advice="", sleep=lambda _: None)
    assert calls == [1]
    assert not is_transient(KeyError("gpt4rec"))
    assert is_transient(RuntimeError("API request to http://x failed: Max retries exceeded with url"))


def test_mlflow_client_errors_of_a_stopped_server_are_transient(monkeypatch):
    """The exception MLflow raises when nothing listens is classified as transient (real client, no server)."""
    from pipelines.serve.triton_server import find_free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow import MlflowClient

    uri = f"http://127.0.0.1:{find_free_port()}"
    with pytest.raises(Exception) as caught:
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("gpt4rec")
    assert is_transient(caught.value), repr(caught.value)


def test_push_to_an_unknown_remote_is_refused_at_once_with_the_remotes_named(tmp_path):
    from pipelines.data.remote import push

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "remote", "add", "s3", "s3://bucket/store"], cwd=tmp_path, check=True)
    with pytest.raises(ValueError, match=r"DVC remote 'nope' is not configured .* \(remotes: s3\)"):
        push("nope", repo=tmp_path, policy=RetryPolicy(3, 0.0))
