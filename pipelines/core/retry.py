"""Retries with exponential backoff and jitter for calls to services (MLflow, S3 through DVC).

A service that is briefly away (restarted, a network blip) should not fail a pipeline task; one
that stays away must fail it clearly: which service, at which URL, how many attempts over how
long, the last error, and what to do. Only transient errors (connection refused/reset, timeouts,
HTTP 429/5xx) are retried; anything else (a bad request, a missing model) is raised at once,
because trying again cannot fix it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("rxrec.retry")

# Words of an error (or its causes) that mean "the service is not answering", not "the request is wrong".
TRANSIENT_MARKERS = (
    "connection refused", "connectionerror", "connection aborted", "connection reset", "max retries exceeded",
    "failed to establish a new connection", "remotedisconnected", "timed out", "timeout", "temporarily unavailable",
    "bad gateway", "service unavailable", "gateway timeout", "too many requests", "too many 500 error",
    "too many 502", "too many 503", "too many 504", "response code 500", "response code 502", "response code 503",
    "response code 504", "could not connect", "endpoint url", "name or service not known",
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `attempts` calls in all, waits of backoff_s * 2**n (capped, with +-50% jitter)."""

    attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    timeout_s: float = 30.0  # per attempt, where the client lets us set it

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Wait after the n-th failed attempt (1-based): exponential, capped, jittered."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (failed_attempt - 1))
        return max(0.0, base * (0.5 + (rng or random).random()))

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """The policy params.yaml `service_retries` describes (pipelines.core.config.ServiceRetrySettings)."""
        return cls(settings.attempts, settings.backoff_s, settings.max_backoff_s, settings.timeout_s)

    def window_s(self) -> float:
        """Longest total wait between attempts (jitter at its maximum)."""
        return sum(min(self.max_backoff_s, self.backoff_s * 2 ** n) * 1.5 for n in range(self.attempts - 1))


@dataclass(eq=False)
class ServiceUnavailable(RuntimeError):
    """A service did not answer after every attempt; the message says where and what to do."""

    service: str
    url: str
    attempts: int
    elapsed_s: float
    last_error: str
    advice: str
    delays_s: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.service} at {self.url} is unavailable: {self.attempts} attempts over {self.elapsed_s:.1f} s "
                f"all failed (last error: {self.last_error}). {self.advice}")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def is_transient(exc: BaseException) -> bool:
    """True when the error (or what caused it) says the service is away, not that the request is wrong."""
    for err in _chain(exc):
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        text = f"{type(err).__name__} {err}".lower()
        if any(marker in text for marker in TRANSIENT_MARKERS):
            return True
    return False


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit] + "..."


def call_with_retry(
    fn: Callable[[], T],
    *,
    service: str,
    url: str,
    policy: RetryPolicy,
    advice: str,
    what: str = "",
    transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """fn(), tried up to policy.attempts times while it fails transiently; then ServiceUnavailable."""
    started = time.monotonic()
    delays: list[float] = []
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            last = _short(exc)
            if attempt == policy.attempts:
                raise ServiceUnavailable(service, url, attempt, time.monotonic() - started, last, advice,
                                         delays) from exc
            wait = policy.delay(attempt)
            delays.append(wait)
            log.warning("%s at %s%s: attempt %d/%d failed (%s); retrying in %.1f s", service, url,
                        f" ({what})" if what else "", attempt, policy.attempts, last, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
