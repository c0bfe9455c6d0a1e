"""A Triton this process did not start (the profile's, or `rxrec serve start`'s), driven through its HTTP API.

`load` asks Triton to (re)load a model from its repository and waits until the wanted version is READY
(a Triton in poll mode refuses the call and loads new versions by itself: then it only waits);
`load_files` hands Triton a model's config and files in the request itself (Triton's repository
extension, "file:" parameters), so a server whose repository this process cannot write (another host, a
container, S3) can still serve a candidate for a measurement; `unload` takes it away again. Control calls
use plain urllib (works in any venv); every error names the server.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pipelines.core.config import Settings
from pipelines.serve.endpoint import TritonEndpoint, resolve_triton
from pipelines.serve.triton_server import TritonError, TritonModelLoadError, error_message, http_call, http_ok

#: Triton's answer to a load or unload call when it runs with --model-control-mode=poll.
POLLING_REFUSAL = "not allowed if polling is enabled"
#: How long a model may take to report READY after Triton answered its load call.
LOADED_GRACE_S = 5.0


def config_json(config_pbtxt: str, model_name: str) -> str:
    """A config.pbtxt as the JSON Triton's load API takes, renamed to `model_name`."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_pbtxt, model_config_pb2.ModelConfig())
    config.name = model_name
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


@dataclass
class RemoteTriton:
    """A running Triton reached at `url` (host:port of HTTP); used like TritonServer, never started or stopped."""

    url: str
    log_path: Path | None = None  # the server's log when it runs on this machine (error messages quote it)
    label: str = ""  # how errors name it, e.g. "the Triton at ... (RXREC_TRITON_URL, profile stack)"
    start_seconds: float = 0.0  # TritonServer's field: nothing was started

    @classmethod
    def at(cls, endpoint: TritonEndpoint) -> RemoteTriton:
        return cls(endpoint.http_url, label=endpoint.describe())

    @property
    def name(self) -> str:
        return self.label or f"the Triton at {self.url}"

    def _base(self) -> str:
        return f"http://{self.url}"

    def _get_ok(self, path: str, timeout_s: float = 2.0) -> bool:
        return http_ok(self._base() + path, timeout_s)

    def _with_log(self, message: str) -> str:
        if self.log_path is None:
            return message
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            tail = "(no server log)"
        return f"{message}\n--- tail of {self.log_path} ---\n{tail}"

    def live_problem(self, timeout_s: float = 3.0) -> str | None:
        """None when the server answers live, else why not (for the one-line unreachable error)."""
        try:
            status, body = http_call("GET", self._base() + "/v2/health/live", timeout_s)
        except OSError as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
        return None if status == 200 else f"HTTP {status} from /v2/health/live: {error_message(body)[:200]}"

    def is_live(self) -> bool:
        return self.live_problem() is None

    def model_ready(self, model_name: str, version: int | None = None) -> bool:
        path = f"/v2/models/{model_name}" + (f"/versions/{version}" if version else "") + "/ready"
        return self._get_ok(path)

    def ready_versions(self, model_name: str) -> list[int]:
        """The versions of a model Triton can answer with now, ascending (a request without one gets the last)."""
        try:
            status, body = http_call("POST", self._base() + "/v2/repository/index", 10.0, b"{}")
        except OSError as exc:
            raise TritonError(f"{self.name}: repository index failed: {exc}") from exc
        if status != 200:
            raise TritonError(f"{self.name}: repository index failed (HTTP {status}): {error_message(body)}")
        return sorted(int(m["version"]) for m in json.loads(body) if m.get("name") == model_name
                      and m.get("state") == "READY" and str(m.get("version", "")).isdigit())

    def _request_load(self, model_name: str, body: bytes, timeout_s: float) -> bool:
        """Ask Triton to load; False when it refuses because it polls its repository (loads by itself)."""
        try:
            status, answer = http_call("POST", f"{self._base()}/v2/repository/models/{model_name}/load", timeout_s,
                                       body)
        except TimeoutError:
            raise TritonModelLoadError(self._with_log(
                f"{self.name}: loading {model_name!r} did not finish within {timeout_s:.0f}s")) from None
        except OSError as exc:
            raise TritonModelLoadError(self._with_log(f"{self.name}: loading {model_name!r} failed: {exc}")) from exc
        if status != 200 and POLLING_REFUSAL in error_message(answer):
            return False
        if status != 200:
            raise TritonModelLoadError(self._with_log(
                f"{self.name}: loading {model_name!r} failed (HTTP {status}): {error_message(answer)}"))
        return True

    def _wait_ready(self, model_name: str, version: int | None, deadline: float) -> None:
        while not self.model_ready(model_name, version):
            if time.monotonic() > deadline:
                what = f"version {version} of {model_name!r}" if version else repr(model_name)
                hint = (f" (Triton serves versions {self.ready_versions(model_name)}: does it read the model "
                        "repository deploy wrote to?)") if version else ""
                raise TritonModelLoadError(self._with_log(f"{self.name}: {what} is not ready after loading{hint}"))
            time.sleep(0.05)

    def load(self, model_name: str, timeout_s: float = 120, version: int | None = None) -> float:
        """(Re)load a model from the server's repository; wait until it (or `version` of it) is READY.

        A Triton in poll mode (infra/k8s/triton.yaml) refuses load calls and picks up new versions from its
        repository by itself: then this only waits.
        """
        started = time.monotonic()
        loaded = self._request_load(model_name, b"{}", timeout_s)
        # Triton answers a load when it is done: what is not READY a moment later never will be (explicit control)
        self._wait_ready(model_name, version, min(time.monotonic() + LOADED_GRACE_S, started + timeout_s) if loaded
                         else started + timeout_s)
        return time.monotonic() - started

    def load_files(self, model_name: str, config_pbtxt: str, files: Mapping[str, bytes], *,
                   timeout_s: float = 120) -> float:
        """Load a model from config and files sent in the request ({"1/model.onnx": bytes, ...}); wait until READY.

        Nothing is written to the server's repository: the model lives until `unload` (or a restart).
        """
        parameters = {"config": config_json(config_pbtxt, model_name)}
        parameters |= {f"file:{path}": base64.b64encode(data).decode() for path, data in files.items()}
        started = time.monotonic()
        if not self._request_load(model_name, json.dumps({"parameters": parameters}).encode(), timeout_s):
            raise TritonModelLoadError(f"{self.name} polls its model repository (--model-control-mode=poll), so it "
                                       f"cannot load {model_name!r} from files; give it explicit model control")
        self._wait_ready(model_name, None, time.monotonic() + LOADED_GRACE_S)
        return time.monotonic() - started

    def unload(self, model_name: str, timeout_s: float = 60) -> None:
        """Unload a model and wait until Triton no longer reports it ready."""
        try:
            status, body = http_call("POST", f"{self._base()}/v2/repository/models/{model_name}/unload", timeout_s,
                                     b"{}")
        except OSError as exc:
            raise TritonError(f"{self.name}: unloading {model_name!r} failed: {exc}") from exc
        if status != 200:
            raise TritonError(f"{self.name}: unloading {model_name!r} failed (HTTP {status}): {error_message(body)}")
        deadline = time.monotonic() + timeout_s
        while self.model_ready(model_name):
            if time.monotonic() > deadline:
                raise TritonError(f"{self.name}: {model_name!r} still ready {timeout_s:.0f}s after unload")
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leave it running: it is not ours to stop."""


def load_models(triton: RemoteTriton, wanted: Mapping[str, int | None], *, changed: list[str],
                timeout_s: float) -> tuple[list[str], dict[str, str]]:
    """Load `wanted` in order (name -> version that must be READY, None: any): the changed ones and any not ready.

    Returns (loaded, error by model). A failed load leaves the version that was serving in place.
    """
    loaded: list[str] = []
    errors: dict[str, str] = {}
    for name, version in wanted.items():
        if name not in changed and triton.model_ready(name, version):
            continue
        try:
            triton.load(name, timeout_s=timeout_s, version=version)
        except TritonModelLoadError as exc:
            errors[name] = str(exc)
            continue
        loaded.append(name)
    return loaded, errors


def load_deployed(s: Settings, models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Make the profile's Triton serve what deploy just wrote: load what changed, wait for each new version READY.

    `models`: deploy's summary per model (triton_version, new, config_changed, or skipped), dependencies
    first. No Triton answering is fine on the local profile (`rxrec serve start` serves it later) and an
    error on the others; so is a version that does not become READY there (the previous one keeps serving).
    """
    endpoint = resolve_triton(s.serve)
    wanted = {name: int(m["triton_version"]) for name, m in models.items() if "skipped" not in m}
    changed = [name for name, m in models.items() if m.get("new") or m.get("config_changed")]
    summary: dict[str, Any] = {"triton": endpoint.http_url, "triton_source": endpoint.source}
    triton = RemoteTriton.at(endpoint)
    problem = triton.live_problem()
    if problem is not None:
        if not endpoint.may_start_local:
            raise endpoint.unreachable(problem)
        print(f"DEPLOY: no Triton answers at {endpoint.http_url} ({endpoint.source}); `rxrec serve start` "
              "serves the new versions")
        return summary | {"reloaded_running_server": False, "loaded": [], "load_errors": {}, "served_versions": {}}
    loaded, errors = load_models(triton, wanted, changed=changed, timeout_s=s.serve.startup_timeout_s)
    first_lines = {name: message.splitlines()[0] for name, message in errors.items()}
    if errors and not endpoint.may_start_local:
        raise TritonModelLoadError("; ".join(first_lines.values()) + " (the previous versions keep serving)")
    for name, message in errors.items():
        print(f"DEPLOY: the running Triton could not load {name!r} (the previous version keeps serving): {message}")
    served = {name: triton.ready_versions(name)[-1:] for name in wanted if name not in errors}
    return summary | {"reloaded_running_server": s.serve.model_name in loaded, "loaded": loaded,
                      "load_errors": first_lines, "served_versions": {n: v[0] for n, v in served.items() if v}}
