"""Pushing DVC-tracked data to a remote (S3 at scale, the moto emulator locally) with retries.

A push only reads the workspace and the DVC cache, so a remote that is down can never cost local
data; what it must not do is hang a task or fail it with a bare stack trace. Each attempt is one
`dvc push -r REMOTE` bounded by a timeout; transient failures (endpoint unreachable, timeouts,
failed uploads) are retried with exponential backoff and jitter (params.yaml `service_retries`);
the final error names the remote, its URL and endpoint, and says that local data are intact. DVC
uploads only what the remote lacks, so a retry after a partial push is cheap and never duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.core.retry import RetryPolicy, call_with_retry, is_transient

# dvc output that means the request or the configuration is wrong: retrying cannot help.
PERMANENT_MARKERS = ("does not exist", "doesn't exist", "not a dvc repository", "unknown remote", "no remote",
                     "access denied", "invalidaccesskeyid", "signaturedoesnotmatch", "no such bucket",
                     "nosuchbucket", "unexpected error - 403", "forbidden")


class PushError(RuntimeError):
    """One `dvc push` attempt that failed; `transient` says whether trying again may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class PushResult:
    remote: str
    url: str
    attempts: int
    elapsed_s: float
    output: str


def _dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def remote_url(repo: Path, remote: str, env: dict[str, str] | None = None) -> str:
    """`url` of the remote in .dvc/config (plus the S3 endpoint when one is set), for messages."""
    done = subprocess.run([_dvc(), "remote", "list"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    urls = dict(line.split(None, 1) for line in done.stdout.splitlines() if len(line.split(None, 1)) == 2)
    if remote not in urls:
        known = ", ".join(sorted(urls)) or "none"
        raise ValueError(f"DVC remote {remote!r} is not configured in {repo / '.dvc' / 'config'} (remotes: {known}); "
                         f"add it with `dvc remote add {remote} URL` or choose one of those")
    url = urls[remote].strip()
    endpoint = (env or os.environ).get("AWS_ENDPOINT_URL_S3") or (env or os.environ).get("AWS_ENDPOINT_URL")
    return f"{url} (endpoint {endpoint})" if url.startswith("s3://") and endpoint else url


def _attempt(repo: Path, remote: str, targets: list[str], env: dict[str, str], timeout_s: float) -> str:
    proc = subprocess.Popen([_dvc(), "push", "-r", remote, *targets], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and its workers; the cache is only read
        proc.communicate()
        raise PushError(f"`dvc push -r {remote}` timed out after {timeout_s:.0f} s", transient=True) from None
    if proc.returncode != 0:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-3:]
        text = " | ".join(errors)[:400] or f"exit code {proc.returncode}"
        permanent = any(m in output.lower() for m in PERMANENT_MARKERS)
        raise PushError(f"`dvc push -r {remote}` exited {proc.returncode}: {text}", transient=not permanent)
    return output


def push(remote: str, *, repo: Path, policy: RetryPolicy, targets: list[str] | None = None,
         env: dict[str, str] | None = None) -> PushResult:
    """`dvc push -r remote` with retries; ServiceUnavailable (URL, attempts, advice) when it never succeeds."""
    env = dict(env if env is not None else os.environ)
    # One quick botocore attempt per push attempt: this policy, not boto's, decides how long to keep trying.
    env.setdefault("AWS_MAX_ATTEMPTS", "1")
    url = remote_url(repo, remote, env)
    started = time.monotonic()
    attempts = 0

    def once() -> str:
        nonlocal attempts
        attempts += 1
        return _attempt(repo, remote, list(targets or []), env, policy.timeout_s)

    advice = (f"Local data and the DVC cache in {repo} are intact (a push only reads them). Check that the remote "
              f"is reachable (locally: `python infra/s3/server.py`) and its credentials, then run "
              f"`rxrec data push --remote {remote}` again: DVC uploads only what the remote is missing.")
    try:
        output = call_with_retry(once, service=f"DVC remote {remote!r}", url=url, policy=policy, advice=advice,
                                 what="dvc push",
                                 transient=lambda e: e.transient if isinstance(e, PushError) else is_transient(e))
    except PushError as exc:
        raise RuntimeError(f"{exc}. Not retried: this is a configuration or permission problem with remote "
                           f"{remote!r} at {url}, not an outage. {advice}") from exc
    return PushResult(remote, url, attempts, round(time.monotonic() - started, 2), output[-2000:])
