"""Local Airflow 3 for rxrec: `make airflow` / `make airflow-stop`, and what the browser tests start.

Runs the components `airflow standalone` would (API server + UI, scheduler with the LocalExecutor,
DAG processor, triggerer) as separate processes, because that way every socket is on 127.0.0.1:
standalone's scheduler and triggerer also open log servers on every interface, which a LocalExecutor
on one machine does not need (`--skip-serve-logs`). The triggerer runs deferred tasks (deferrable
operators and sensors; Human-in-the-loop approvals on Airflow < 3.3, which 3.3 parks in `awaiting_input`
without one). Plugins come from infra/airflow/plugins (the "MLflow run" task link); infra/airflow/config/airflow_local_settings.py
preloads torch, pandas and mlflow in the components that fork tasks and DAG parses. SQLite metadata DB under $AIRFLOW_HOME by default
(set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN for Postgres), parallelism 2 for a 2-core machine,
SimpleAuthManager with one admin user and no anonymous access (every REST call and UI page needs a
login; `simple_auth_manager_all_admins` stays off): the password comes from RXREC_AIRFLOW_ADMIN_PASSWORD
when set (what the stack does), else Airflow generates one; either way it is in
$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (mode 600).

Stopping sends SIGINT (SIGTERM orphans the scheduler's LocalExecutor workers) and waits; only
what is still alive after the timeout is killed, by process group.

    python infra/airflow/launcher.py start [--port 8080] [--home var/airflow]
    python infra/airflow/launcher.py stop | status
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
USER = "admin"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
PASSWORD_ENV = "RXREC_AIRFLOW_ADMIN_PASSWORD"
COMPONENTS = {
    "api-server": ["api-server", "--host", HOST, "--port", "{port}", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
PLUGINS_FOLDER = PROJECT_ROOT / "infra" / "airflow" / "plugins"
# airflow_local_settings.py: the components that fork tasks and DAG parses load the heavy libraries once.
LOCAL_SETTINGS_FOLDER = PROJECT_ROOT / "infra" / "airflow" / "config"


@dataclass
class Airflow:
    """A running local Airflow: where it answers and how to log in."""

    home: Path
    port: int
    pids: dict[str, int]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.home / PASSWORD_FILE

    def password(self) -> str:
        return json.loads(self.password_file.read_text())[USER]


def airflow_bin() -> Path:
    """The `airflow` script next to this Python (the project venv)."""
    return Path(sys.executable).parent / "airflow"


def environment(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Airflow's configuration for this project, as AIRFLOW__* variables (what `airflow.cfg` would hold).

    Values already set in the caller's environment win, so Postgres or another port is configuration only.
    """
    venv_bin = str(Path(sys.executable).parent)
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    env = dict(os.environ)
    for key, value in defaults.items():
        env.setdefault(key, value)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), str(LOCAL_SETTINGS_FOLDER),
                                         *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["GIT_PYTHON_REFRESH"] = "quiet"
    return env


def _pid_file(home: Path) -> Path:
    return home / "rxrec-airflow.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _default_sigint() -> None:
    """Children must get a SIGINT they act on: a shell's background job starts with it ignored, and an
    ignored signal stays ignored across exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def _healthy(url: str) -> bool:
    code, body = _get(f"{url}/api/v2/monitor/health")
    if code != 200:
        return False
    health = json.loads(body)
    return all(health.get(c, {}).get("status") == "healthy"
               for c in ("metadatabase", "scheduler", "dag_processor", "triggerer"))


def start(home: Path, port: int, *, extra_env: dict[str, str] | None = None, timeout_s: float = 240) -> Airflow:
    """Migrate the DB, start the components, wait until the API reports all of them healthy."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(home)
    if pid_file.exists():
        running = json.loads(pid_file.read_text())
        if any(_alive(pid) for pid in running["pids"].values()):
            raise RuntimeError(f"Airflow already runs from {home} on port {running['port']}: "
                               "`make airflow-stop` first")
    env = environment(home, port, extra_env)
    write_password(home, env.pop(PASSWORD_ENV, None))
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / "db-migrate.log").open("w") as fh:
        code = subprocess.call([str(airflow_bin()), "db", "migrate"], env=env, stdout=fh, stderr=subprocess.STDOUT,
                               cwd=home)
    if code != 0:
        raise RuntimeError(f"`airflow db migrate` failed (exit {code}); see {logs / 'db-migrate.log'}")
    pids: dict[str, int] = {}
    _default_sigint()
    for name, args in COMPONENTS.items():
        with (logs / f"{name}.log").open("w") as fh:
            proc = subprocess.Popen([str(airflow_bin()), *(a.format(port=port) for a in args)], env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, cwd=home, start_new_session=True)
        pids[name] = proc.pid
    airflow = Airflow(home, port, pids)
    pid_file.write_text(json.dumps({"port": port, "pids": pids}))
    deadline = time.monotonic() + timeout_s
    while not (_healthy(airflow.url) and airflow.password_file.exists()):
        dead = [n for n, pid in pids.items() if not _alive(pid)]
        if dead or time.monotonic() > deadline:
            stop(home)
            why = f"{', '.join(dead)} exited" if dead else f"not healthy within {timeout_s:.0f}s"
            tails = "\n".join(f"--- {n}.log\n" + "\n".join((logs / f"{n}.log").read_text().splitlines()[-15:])
                              for n in (dead or pids))
            raise RuntimeError(f"Airflow did not start: {why}\n{tails}")
        time.sleep(1)
    return airflow


def write_password(home: Path, password: str | None) -> Path:
    """Give the admin user `password` (from the environment) before the API server starts, so the login is
    known up front instead of generated; without one, keep Airflow's generated file. The file is mode 600."""
    path = home / PASSWORD_FILE
    if password:
        path.touch(mode=0o600)
        path.write_text(json.dumps({USER: password}) + "\n")
    if path.exists():
        path.chmod(0o600)
    return path


def stop(home: Path, timeout_s: float = 15) -> list[str]:
    """SIGINT every component and wait; SIGTERM a lingering API server or DAG processor (only the scheduler's
    LocalExecutor workers need SIGINT); SIGKILL the process group of anything left. Returns what was stopped."""
    pid_file = _pid_file(home.resolve())
    if not pid_file.exists():
        return []
    pids: dict[str, int] = json.loads(pid_file.read_text())["pids"]
    for pid in pids.values():
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for name in ("api-server", "dag-processor", "triggerer"):  # uvicorn can wait on open keep-alive connections
        if name in pids and _alive(pids[name]):
            os.kill(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    lingering = [name for name, pid in pids.items() if _alive(pid)]
    if lingering:
        print(f"still running after SIGINT and SIGTERM, killed: {', '.join(lingering)}", file=sys.stderr)
    for pid in pids.values():  # each component leads its own process group (setsid): workers go with it
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    pid_file.unlink(missing_ok=True)
    return list(pids)


def status(home: Path) -> dict[str, object]:
    pid_file = _pid_file(home.resolve())
    if not pid_file.exists():
        return {"running": False}
    info = json.loads(pid_file.read_text())
    return {"running": any(_alive(p) for p in info["pids"].values()), "port": info["port"],
            "components": {n: _alive(p) for n, p in info["pids"].items()}}


def _mlflow_env() -> dict[str, str]:
    """DAG tasks log to a running `make mlflow` server when one answers (else their embedded SQLite store)."""
    if os.environ.get("RXREC_MLFLOW_TRACKING_URI"):
        return {}
    uri = f"http://{HOST}:{os.environ.get('MLFLOW_PORT', '5000')}"
    code, _ = _get(f"{uri}/health", timeout=2)
    return {"RXREC_MLFLOW_TRACKING_URI": uri} if code == 200 else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("AIRFLOW_HOME", PROJECT_ROOT / "var" / "airflow")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    args = parser.parse_args()
    if args.command == "stop":
        stopped = stop(args.home)
        print(f"Airflow stopped ({', '.join(stopped)})" if stopped else f"no Airflow running from {args.home}")
        return 0
    if args.command == "status":
        print(json.dumps(status(args.home)))
        return 0
    extra = {"RXREC_WORKDIR": os.environ.get("RXREC_WORKDIR", str(PROJECT_ROOT)), **_mlflow_env()}
    started = time.monotonic()
    try:
        airflow = start(args.home, args.port, extra_env=extra)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tracking = extra.get("RXREC_MLFLOW_TRACKING_URI") or os.environ.get("RXREC_MLFLOW_TRACKING_URI") or \
        "embedded SQLite (var/mlflow.db); start `make mlflow` first to log to the server"
    print(f"Airflow is up in {time.monotonic() - started:.0f} s\n"
          f"  UI:        {airflow.url}  (DAGs: retrain_and_promote, validate_data; unpause or trigger them there)\n"
          f"  user:      {USER}\n"
          f"  password:  in {airflow.password_file}\n"
          f"  MLflow:    {tracking}\n"
          f"  logs:      {args.home / 'logs'}\n"
          f"  stop with: make airflow-stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
