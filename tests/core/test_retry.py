"""RetryPolicy and call_with_retry in isolation: what counts as transient, the waits, the final error.

The backoff bounds and the wording of the final error are also checked, as a reliability class, in
tests/reliability/test_pipeline_retry.py.
"""

from __future__ import annotations

import random

import pytest

from pipelines.core.config import Settings
from pipelines.core.retry import RetryPolicy, ServiceUnavailable, call_with_retry, is_transient


def _failing(*errors: BaseException, then: str = "ok"):
    """A call that raises `errors` in turn, then returns `then`; `calls` counts the attempts."""
    queue = list(errors)

    def call() -> str:
        call.calls += 1
        if queue:
            raise queue.pop(0)
        return then

    call.calls = 0
    return call


def test_policy_from_params_yaml():
    settings = Settings().service_retries
    policy = RetryPolicy.from_settings(settings)
    assert (policy.attempts, policy.backoff_s, policy.max_backoff_s, policy.timeout_s) == (
        settings.attempts, settings.backoff_s, settings.max_backoff_s, settings.timeout_s)


def test_delay_is_capped_before_the_jitter_and_never_negative():
    policy = RetryPolicy(attempts=10, backoff_s=2.0, max_backoff_s=5.0)
    rng = random.Random(0)
    assert all(2.5 <= policy.delay(9, rng) <= 7.5 for _ in range(100))  # 2 * 2**8 capped at 5, +-50%
    assert RetryPolicy(backoff_s=0.0).delay(3) == 0.0
    assert RetryPolicy(attempts=1).window_s() == 0.0  # one call: nothing to wait for


@pytest.mark.parametrize("error", [
    ConnectionRefusedError("[Errno 111] Connection refused"),
    TimeoutError(),
    RuntimeError("API request failed with error code 503 != 200: Service Unavailable"),
    OSError("Could not connect to the endpoint URL: http://127.0.0.1:5555/rxrec-dvc"),
], ids=["refused", "timeout", "http-503", "s3-endpoint"])
def test_service_away_is_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    ValueError("RESOURCE_DOES_NOT_EXIST: Registered Model with name=gpt4rec not found"),
    PermissionError("403 Forbidden"),
    KeyError("champion"),
], ids=["missing-model", "forbidden", "key"])
def test_wrong_request_is_not_transient(error):
    assert not is_transient(error)


def test_a_wrapped_connection_error_is_transient_through_its_cause():
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("dvc push failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_a_cyclic_cause_chain_ends():
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_transient(first)


def test_a_blip_costs_one_wait_per_failed_attempt():
    waits: list[float] = []
    call = _failing(ConnectionRefusedError("refused"), TimeoutError("timed out"))
    policy = RetryPolicy(attempts=3, backoff_s=0.1, max_backoff_s=1.0)
    assert call_with_retry(call, service="MLflow", url="u", policy=policy, advice="", sleep=waits.append) == "ok"
    assert call.calls == 3 and len(waits) == 2 and 0.05 <= waits[0] <= 0.15 and 0.1 <= waits[1] <= 0.3


def test_the_caller_decides_what_is_transient():
    call = _failing(ValueError("busy"))
    result = call_with_retry(call, service="S", url="u", policy=RetryPolicy(2, 0.0), advice="",
                             transient=lambda exc: "busy" in str(exc), sleep=lambda _: None)
    assert result == "ok" and call.calls == 2


def test_giving_up_keeps_the_last_error_short_and_chained():
    last = ConnectionError("refused " + "x" * 1000)
    call = _failing(ConnectionError("first"), last)
    with pytest.raises(ServiceUnavailable) as caught:
        call_with_retry(call, service="S3", url="http://127.0.0.1:5555", policy=RetryPolicy(2, 0.0),
                        advice="Start infra/s3/server.py.", what="dvc push", sleep=lambda _: None)
    exc = caught.value
    assert exc.__cause__ is last and exc.attempts == 2 and exc.delays_s == [0.0]
    assert exc.last_error.startswith("ConnectionError: refused xxx") and len(exc.last_error) == 303
    assert str(exc).startswith("S3 at http://127.0.0.1:5555 is unavailable: 2 attempts over")


def test_a_single_attempt_policy_never_waits():
    waits: list[float] = []
    with pytest.raises(ServiceUnavailable):
        call_with_retry(_failing(TimeoutError(), then="never"), service="S", url="u", policy=RetryPolicy(1),
                        advice="", sleep=waits.append)
    assert waits == []
