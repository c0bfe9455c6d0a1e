"""Launch and control a local Triton Inference Server (CPU, Python backend) from the serving venv.

The `tritonserver` binary comes from the `nvidia-pytriton` wheel installed in a separate serving
venv (it needs numpy<2; see infra/triton/setup.sh). It is started directly rather than through
pytriton so that the same model repository, explicit load/unload calls and HTTP API are used as
with a Triton container on GPU nodes. What the binary needs:

- ``--backend-directory`` holding ``python/`` with ``libtriton_python.so``,
  ``triton_python_backend_utils.py`` and the ``triton_python_backend_stub`` built for the serving
  venv's Python version (assembled here with symlinks);
- the serving venv's ``bin`` first on PATH (the stub's embedded Python finds the venv from it);
- LD_LIBRARY_PATH with that Python's LIBDIR (libpython) and the wheel's ``nvidia_pytriton.libs``;
- OMP/OpenBLAS/MKL thread counts of 1 unless set (numpy's matrix products in `recommend` otherwise
  start a spinning thread pool per stub on cores the whole server shares).

A stub that cannot start leaves the server hanging in "loading", so every wait has a timeout and
every error carries the tail of the server log. Control calls use plain urllib so this module
works in any venv.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pipelines.core.config import PROJECT_ROOT

VENV_ENV_VAR = "RXREC_TRITON_VENV"
HOST = "127.0.0.1"


class TritonError(RuntimeError):
    """Base class for errors of the local Triton server."""


class TritonStartError(TritonError):
    """The server could not be started (bad venv, busy port, crash, or not live in time)."""


class TritonModelLoadError(TritonError):
    """A model failed to load or did not become ready in time."""


BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_venv() -> Path:
    """$RXREC_TRITON_VENV if set, else <repo>/.venv-triton (what infra/triton/setup.sh creates)."""
    env = os.environ.get(VENV_ENV_VAR)
    return Path(env) if env else PROJECT_ROOT / ".venv-triton"


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (tests start servers on these)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether something already listens on host:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class ServingEnv:
    """Paths of the serving venv that the server binary and the backend stub need."""

    venv: Path
    python_version: str  # "3.11"
    libdir: Path  # sysconfig LIBDIR: where libpython lives
    tritonserver_root: Path  # site-packages/pytriton/tritonserver
    wheel_libs: Path  # site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.tritonserver_root / "bin" / "tritonserver"

    @property
    def backend_lib(self) -> Path:
        return self.tritonserver_root / "backends" / "python" / "libtriton_python.so"

    @property
    def backend_utils(self) -> Path:
        return self.tritonserver_root / "backends" / "python" / "triton_python_backend_utils.py"

    @property
    def stub(self) -> Path:
        return (
            self.tritonserver_root
            / "python_backend_stubs"
            / self.python_version
            / "triton_python_backend_stub"
        )


_PROBE = """
import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "pytriton": spec.submodule_search_locations[0] if spec else None,
}))
"""


def server_environment(env_info: ServingEnv, base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: `base` with the serving venv first and the main venv's Python kept out."""
    env = dict(base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):  # keep the main venv out of the stub
        env.pop(key, None)
    env["VIRTUAL_ENV"] = str(env_info.venv)
    env["PATH"] = f"{env_info.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    ld = [str(env_info.libdir), str(env_info.wheel_libs)]
    if env.get("LD_LIBRARY_PATH"):
        ld.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    # Numerical libraries in the backends' stubs (numpy's BLAS, faiss's OpenMP) on one thread each unless the
    # caller says otherwise: onnxruntime's threads are set per model (intra_op_num_threads), and a pool per stub
    # would spin on the cores the server, the other stubs and their clients share.
    for key in BLAS_THREAD_VARS:
        env.setdefault(key, "1")
    return env


def probe_venv(venv: Path) -> ServingEnv:
    """Ask the serving venv's Python where its pieces are; TritonStartError if any is missing."""
    python = venv / "bin" / "python"
    hint = f"create it with infra/triton/setup.sh (or set {VENV_ENV_VAR})"
    if not python.exists():
        raise TritonStartError(f"serving venv not found: {python} does not exist; {hint}")
    try:
        out = subprocess.run(
            [str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
        )
        info = json.loads(out.stdout)
    except (subprocess.SubprocessError, json.JSONDecodeError) as exc:
        raise TritonStartError(f"cannot inspect serving venv {venv}: {exc}") from exc
    if not info["pytriton"]:
        raise TritonStartError(f"nvidia-pytriton is not installed in {venv}; {hint}")
    root = Path(info["pytriton"]) / "tritonserver"
    env = ServingEnv(
        venv=venv,
        python_version=info["version"],
        libdir=Path(info["libdir"]),
        tritonserver_root=root,
        wheel_libs=Path(info["pytriton"]).parent / "nvidia_pytriton.libs",
    )
    missing = [p for p in (env.binary, env.backend_lib, env.backend_utils, env.stub) if not p.exists()]
    if missing:
        raise TritonStartError(
            f"serving venv {venv} is incomplete (Python {env.python_version}); missing: "
            + ", ".join(map(str, missing))
        )
    return env


def _symlink(target: Path, link: Path) -> None:
    """Point link at target, replacing an old link atomically."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def prepare_backend_dir(env: ServingEnv, root: Path) -> Path:
    """Build <root>/<venv-hash>/python/ with the backend library, its utils and the stub.

    The hash keeps servers from different serving venvs (Python versions) apart. Returns the
    folder to pass as --backend-directory.
    """
    key = hashlib.sha256(str(env.venv.resolve()).encode()).hexdigest()[:10]
    backend_dir = root / f"py{env.python_version}-{key}"
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    _symlink(env.backend_lib, python_dir / "libtriton_python.so")
    _symlink(env.backend_utils, python_dir / "triton_python_backend_utils.py")
    _symlink(env.stub, python_dir / "triton_python_backend_stub")
    return backend_dir


def http_call(method: str, url: str, timeout_s: float, body: bytes | None = None) -> tuple[int, str]:
    """(status, body) of one HTTP call; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a GET answers 200 (a health or readiness probe); no answer at all is False, not an error."""
    try:
        status, _ = http_call("GET", url, timeout_s)
    except OSError:
        return False
    return status == 200


def error_message(body: str) -> str:
    """The "error" field of a Triton JSON error body, or the raw body."""
    try:
        return str(json.loads(body).get("error", body))
    except (json.JSONDecodeError, AttributeError):
        return body


def log_text(path: Path, offset: int = 0) -> str:
    """A tritonserver log from byte offset on; empty while the file does not exist."""
    try:
        return path.read_bytes()[offset:].decode(errors="replace")
    except OSError:
        return ""


def wait_for_log_text(path: Path, text: str, timeout_s: float = 15.0, offset: int = 0) -> bool:
    """Whether the tritonserver log at path shows text (from byte offset on) within timeout_s.

    Triton writes some lines after the answer that caused them: a Python stub's warnings travel
    through a queue, and an unload finishes in the background.
    """
    deadline = time.monotonic() + timeout_s
    while text not in log_text(path, offset):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


class TritonServer:
    """A tritonserver process on 127.0.0.1 with explicit model control.

    Use as a context manager (start on enter, stop on exit) or call start()/stop(). The server
    runs in its own process group so that stop() can make sure no backend stub outlives it.
    """

    def __init__(
        self,
        repo: Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        startup_timeout_s: float = 120,
        log_dir: Path,
        venv: Path | None = None,
        backend_root: Path | None = None,
        exit_timeout_s: int = 15,
        log_verbose: int = 0,
    ) -> None:
        self.repo = Path(repo).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.startup_timeout_s = startup_timeout_s
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / "tritonserver.log"
        self.venv = Path(venv) if venv is not None else default_venv()
        self.backend_root = (
            Path(backend_root) if backend_root else PROJECT_ROOT / "var" / "triton" / "backends"
        )
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None  # wall time from spawn to live
        self.load_seconds: dict[str, float] = {}  # model name -> wall time of its last load

    # ------------------------------------------------------------------ properties and helpers
    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint, as tritonclient.http expects it."""
        return f"{HOST}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _base(self) -> str:
        return f"http://{self.url}"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log (stdout and stderr of the server and its stubs)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_since(self, offset: int = 0) -> str:
        """The server log from byte offset on (take the offset from log_path.stat().st_size)."""
        return log_text(self.log_path, offset)

    def wait_for_log(self, text: str, timeout_s: float = 15.0, offset: int = 0) -> bool:
        """Whether the log from offset shows text within timeout_s (see wait_for_log_text)."""
        return wait_for_log_text(self.log_path, text, timeout_s, offset)

    def _with_log(self, message: str) -> str:
        return f"{message}\n--- tail of {self.log_path} ---\n{self.log_tail()}"

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _get_ok(self, path: str, timeout_s: float = 2.0) -> bool:
        return http_ok(self._base() + path, timeout_s)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Spawn tritonserver and wait until it is live; TritonStartError (with log tail) if not."""
        if self._alive():
            return self
        if not self.repo.is_dir():
            raise TritonStartError(f"model repository not found: {self.repo}")
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise TritonStartError(f"http, grpc and metrics ports must differ: {ports}")
        busy = {name: port for name, port in ports.items() if not port_is_free(port)}
        if busy:
            raise TritonStartError(
                f"port(s) already in use on {HOST}: "
                + ", ".join(f"{name}={port}" for name, port in busy.items())
                + " (another Triton running? pick other ports)"
            )

        env_info = probe_venv(self.venv)
        backend_dir = prepare_backend_dir(env_info, self.backend_root)
        env = server_environment(env_info, os.environ)

        cmd = [
            str(env_info.binary),
            f"--model-repository={self.repo}",
            "--model-control-mode=explicit",
            f"--backend-directory={backend_dir}",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={HOST}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            try:
                self.process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise TritonStartError(f"cannot run {env_info.binary}: {exc}") from exc
        atexit.register(self.stop)

        deadline = t0 + self.startup_timeout_s
        while True:
            if not self._alive():
                code = self.process.returncode
                self._reap_group()
                raise TritonStartError(self._with_log(f"tritonserver exited with code {code} during startup"))
            if self._get_ok("/v2/health/live", timeout_s=1.0):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise TritonStartError(
                    self._with_log(f"tritonserver was not live within {self.startup_timeout_s:.0f}s")
                )
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the server, SIGKILL its whole process group after the timeout; reap stubs."""
        atexit.unregister(self.stop)
        process = self.process
        if process is None:
            return
        timeout_s = self.exit_timeout_s + 5 if timeout_s is None else timeout_s
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_group()
                process.wait(timeout=10)
        self._reap_group()
        self.process = None

    def _kill_group(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap_group(self, grace_s: float = 5.0) -> None:
        """Wait for leftover group members (stubs) to exit on their own, then SIGKILL them."""
        if self.process is None:
            return
        deadline = time.monotonic() + grace_s
        while True:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:  # the group id was reused by someone else's processes
                return
            if time.monotonic() > deadline:
                self._kill_group()
                time.sleep(0.1)
                deadline = time.monotonic() + grace_s
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ health and models
    def is_live(self) -> bool:
        return self._alive() and self._get_ok("/v2/health/live")

    def is_ready(self) -> bool:
        """Whether the server process runs and reports ready (all loaded models ready)."""
        return self._alive() and self._get_ok("/v2/health/ready")

    def model_ready(self, model_name: str, version: int | None = None) -> bool:
        path = f"/v2/models/{model_name}" + (f"/versions/{version}" if version else "") + "/ready"
        return self._alive() and self._get_ok(path)

    def load(self, model_name: str, timeout_s: float = 120) -> float:
        """Load (or reload: picks up new version folders) a model and wait until it is ready.

        Returns the seconds it took. Raises TritonModelLoadError with Triton's error message and
        the server log tail if the load fails, hangs, or the server dies.
        """
        if not self._alive():
            raise TritonModelLoadError(f"cannot load {model_name!r}: the server is not running")
        t0 = time.monotonic()
        url = f"{self._base()}/v2/repository/models/{model_name}/load"
        try:
            status, body = http_call("POST", url, timeout_s, body=b"{}")
        except TimeoutError:
            raise TritonModelLoadError(
                self._with_log(
                    f"loading {model_name!r} did not finish within {timeout_s:.0f}s "
                    "(a backend stub that cannot start hangs here)"
                )
            ) from None
        except OSError as exc:
            raise TritonModelLoadError(self._with_log(f"loading {model_name!r} failed: {exc}")) from exc
        if status != 200:
            raise TritonModelLoadError(
                self._with_log(f"loading {model_name!r} failed (HTTP {status}): {error_message(body)}")
            )
        deadline = t0 + timeout_s
        while not self.model_ready(model_name):
            if not self._alive():
                raise TritonModelLoadError(self._with_log(f"server died while loading {model_name!r}"))
            if time.monotonic() > deadline:
                raise TritonModelLoadError(
                    self._with_log(f"{model_name!r} not ready within {timeout_s:.0f}s")
                )
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        self.load_seconds[model_name] = elapsed
        return elapsed

    def unload(self, model_name: str, timeout_s: float = 60) -> None:
        """Unload a model and wait until Triton no longer reports it ready."""
        if not self._alive():
            return
        url = f"{self._base()}/v2/repository/models/{model_name}/unload"
        try:
            status, body = http_call("POST", url, timeout_s, body=b"{}")
        except OSError as exc:
            raise TritonError(self._with_log(f"unloading {model_name!r} failed: {exc}")) from exc
        if status != 200:
            raise TritonError(
                self._with_log(f"unloading {model_name!r} failed (HTTP {status}): {error_message(body)}")
            )
        deadline = time.monotonic() + timeout_s
        while self.model_ready(model_name):
            if time.monotonic() > deadline:
                raise TritonError(self._with_log(f"{model_name!r} still ready {timeout_s:.0f}s after unload"))
            time.sleep(0.05)

    def repository_index(self) -> list[dict]:
        """Triton's view of the repository: name, version, state and reason per model."""
        status, body = http_call("POST", f"{self._base()}/v2/repository/index", 10.0, body=b"{}")
        if status != 200:
            raise TritonError(f"repository index failed (HTTP {status}): {error_message(body)}")
        return json.loads(body)


__all__ = [
    "TritonError",
    "TritonModelLoadError",
    "TritonServer",
    "TritonStartError",
    "default_venv",
    "find_free_port",
    "port_is_free",
    "probe_venv",
]
