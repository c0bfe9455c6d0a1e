"""The local Triton as a background service: `rxrec serve start|stop|status` and `make serve`.

`start_background` launches tritonserver (pipelines/serve/triton_server.py) on 127.0.0.1 on the
params.yaml serve ports, loads every model of the repository in dependency order (gpt4rec,
similar_items, recommend, then any other) and leaves it running in its own process group; the pid
and ports go to var/triton/tritonserver.pid and var/triton/server.json. A model that fails to load
stops the server and raises TritonModelLoadError naming the model, with Triton's message and the
log tail. `load_in_running_server` hands new version folders to this live server (explicit model
control: the old version serves until the new one is ready); deploy hands them to the profile's Triton
(pipelines/serve/remote.py `load_deployed`), which is this server on the local profile.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.core.config import Paths, Settings
from pipelines.core.processes import group_members, pid_alive
from pipelines.repository.models import LOAD_ORDER
from pipelines.serve.remote import RemoteTriton, load_models
from pipelines.serve.triton_server import (
    HOST,
    TritonError,
    TritonServer,
    TritonStartError,
    http_call,
)

PID_FILE = "tritonserver.pid"
INFO_FILE = "server.json"


def _state_dir(p: Paths) -> Path:
    return p.var / "triton"


def model_load_order(repo: Path) -> list[str]:
    """Models of the repository (a config.pbtxt and a numbered version folder), dependencies first."""
    repo = Path(repo)
    if not repo.is_dir():
        return []
    present = sorted(d.name for d in repo.iterdir() if d.is_dir() and (d / "config.pbtxt").is_file()
                     and any(v.is_dir() and v.name.isdigit() for v in d.iterdir()))
    return [m for m in LOAD_ORDER if m in present] + [m for m in present if m not in LOAD_ORDER]


def _ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def load_in_running_server(
    http_port: int, names: list[str], *, changed: list[str], timeout_s: float = 120
) -> tuple[list[str], dict[str, str]]:
    """Load `names` in order into a Triton live on 127.0.0.1:http_port: the changed ones and any not ready.

    Returns (loaded, errors by model); ([], {}) when no server listens there. A failed load leaves
    the version that was serving in place.
    """
    triton = RemoteTriton(f"{HOST}:{http_port}")
    if not triton.is_live():
        return [], {}
    return load_models(triton, dict.fromkeys(names), changed=changed, timeout_s=timeout_s)


def _read_info(p: Paths) -> dict[str, Any] | None:
    path = _state_dir(p) / INFO_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _is_our_server(pid: int, http_port: int) -> bool:
    """Whether pid is a live tritonserver on http_port (a recycled pid must never be signalled)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"tritonserver") and f"--http-port={http_port}".encode() in cmdline


def running_server(p: Paths) -> RemoteTriton | None:
    """The background server recorded under var/triton/ if it is alive and live, else None."""
    info = _read_info(p)
    if not info or not _is_our_server(int(info["pid"]), int(info["http_port"])):
        return None
    if not _ok(f"http://{HOST}:{info['http_port']}/v2/health/live"):
        return None
    return RemoteTriton(f"{HOST}:{info['http_port']}", Path(info["log"]),
                        label=f"the background Triton at {HOST}:{info['http_port']} (`rxrec serve`)")


def _is_backend_stub(pid: int) -> bool:
    try:
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return exe.endswith(b"triton_python_backend_stub")


def recover_stale(p: Paths, grace_s: float = 5.0) -> dict[str, Any] | None:
    """Clean up after a background server that died without `rxrec serve stop` (crash, SIGKILL, OOM).

    When var/triton/ records a pid that is no longer a live tritonserver: backend stubs still in the
    dead server's process group are killed (they would hold memory and CPU), and the pid and info
    files are removed so a new server can be started. Returns what was found, or None when the
    recorded server is alive or nothing is recorded.
    """
    info = _read_info(p)
    if not info:
        return None
    pid = int(info["pid"])
    ours = _is_our_server(pid, int(info["http_port"]))
    if ours and _ok(f"http://{HOST}:{info['http_port']}/v2/health/live"):
        return None
    if ours:  # alive but not answering: hung, end it
        stop_background(p, timeout_s=grace_s)
        return {"stale_pid": pid, "reason": "recorded server was hung (not live)", "orphan_stubs_killed": 0}
    stubs = [m for m in group_members(pid) if _is_backend_stub(m)]
    for stub in stubs:
        try:
            os.kill(stub, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(_is_backend_stub(m) for m in stubs) and time.monotonic() < deadline:
        time.sleep(0.05)
    _forget(p)
    return {"stale_pid": pid, "reason": "recorded server is gone (crashed or killed)",
            "orphan_stubs_killed": len(stubs)}


def start_background(s: Settings, p: Paths, *, repo: Path | None = None) -> dict[str, Any]:
    """Start tritonserver in the background (or reuse ours) and load every model in dependency order.

    A server recorded under var/triton/ that died (crash, SIGKILL) is cleaned up first
    (recover_stale) and a new one started: `rxrec serve start` is also the restart after a crash.
    The result says ``recovered`` (the dead pid) and ``repo_problems`` (pipelines/repository/check.py).
    """
    from pipelines.repository.check import check_repository

    repo = Path(repo or p.triton_repo)
    models = model_load_order(repo)
    if not models:
        raise TritonStartError(f"no model to serve in {repo}: run the pipeline's deploy stage first (make demo)")
    attached = running_server(p)
    recovered = None if attached is not None else recover_stale(p)
    check = check_repository(repo)
    problems = [f"{x.path}: {x.problem}" for x in check.problems]
    broken = [f"{x.path}: {x.problem}" for x in check.problems if Path(x.path).name.isdigit()]
    if broken:  # Triton would try to load a half-written or tampered version: refuse, say what to do
        raise TritonStartError("the model repository has broken version folders; not starting Triton on it:\n  "
                               + "\n  ".join(broken) + "\nmove them aside with `rxrec serve check --quarantine` "
                               "(nothing is deleted) or roll back with `rxrec serve rollback`")
    if attached is not None:
        for name in models:
            attached.load(name, timeout_s=s.serve.startup_timeout_s)
        return {**(_read_info(p) or {}), "models": models, "reused": True, "recovered": recovered,
                "repo_problems": problems}
    server = TritonServer(repo, http_port=s.serve.http_port, grpc_port=s.serve.grpc_port,
                          metrics_port=s.serve.metrics_port, startup_timeout_s=s.serve.startup_timeout_s,
                          log_dir=_state_dir(p))
    server.start()
    try:
        for name in models:
            server.load(name, timeout_s=s.serve.startup_timeout_s)
    except TritonError:
        server.stop()
        raise
    atexit.unregister(server.stop)  # it outlives this process: `rxrec serve stop` ends it
    info = {"pid": server.pid, "http_port": server.http_port, "grpc_port": server.grpc_port,
            "metrics_port": server.metrics_port, "repo": str(repo), "log": str(server.log_path),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "start_seconds": round(server.start_seconds or 0, 2),
            "load_seconds": {k: round(v, 2) for k, v in server.load_seconds.items()}}
    state = _state_dir(p)
    (state / PID_FILE).write_text(f"{server.pid}\n")
    (state / INFO_FILE).write_text(json.dumps(info, indent=2))
    return {**info, "models": models, "reused": False, "recovered": recovered, "repo_problems": problems}


def _forget(p: Paths) -> None:
    for name in (PID_FILE, INFO_FILE):
        (_state_dir(p) / name).unlink(missing_ok=True)


def stop_background(p: Paths, timeout_s: float = 30) -> dict[str, Any]:
    """SIGTERM the background server's process group, SIGKILL it after timeout_s; forget its pid."""
    info = _read_info(p)
    if not info:
        return {"stopped": False, "reason": "no background server recorded under " + str(_state_dir(p))}
    pid = int(info["pid"])
    if not _is_our_server(pid, int(info["http_port"])):
        _forget(p)
        return {"stopped": False, "reason": f"pid {pid} is no longer a tritonserver (stale pid file removed)"}
    os.killpg(pid, signal.SIGTERM)  # the server runs in its own session: its group holds the stubs too
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (tests), else no-op
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _forget(p)
    return {"stopped": True, "pid": pid}


def server_status(p: Paths) -> dict[str, Any]:
    """Whether the background server runs, its ports, and Triton's state of every model."""
    info = _read_info(p)
    if not info:
        return {"running": False, "reason": "not started (no " + str(_state_dir(p) / INFO_FILE) + ")"}
    if running_server(p) is None:
        return {"running": False, "reason": f"pid {info['pid']} is not a live tritonserver", **info}
    status, body = http_call("POST", f"http://{HOST}:{info['http_port']}/v2/repository/index", 10, b"{}")
    models = json.loads(body) if status == 200 else []
    return {"running": True, **info, "models": models}
