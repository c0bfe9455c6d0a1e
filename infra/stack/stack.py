"""The distributed stack on one machine: `make stack` / `make stack-stop`, and what tests/e2e/test_stack.py runs.

Starts, all on 127.0.0.1 and on ports chosen free at start (written to <home>/ports.json): PostgreSQL (own
data dir <home>/pgdata, databases `airflow` and `mlflow`), Redis (Celery broker), an S3 emulator (moto:
buckets for the DVC remote, MLflow artifacts, Triton models), the MLflow server on Postgres with artifacts
in S3, Airflow with the CeleryExecutor (api-server, scheduler, dag-processor and triggerer via
infra/airflow/launcher.py, plus two Celery workers with distinct hostnames on the default queue) and Triton
(pipelines/serve/triton_server.py) over the work directory's model repository. Every service's configuration
comes from infra/profiles/stack.env; the only secrets (PGPASSWORD, AWS keys, the MLflow and Airflow admin
passwords, MLflow's CSRF key) come from the environment, or are generated into <home>/secrets.env (mode 600,
under var/, never committed). Login is on: MLflow runs its basic-auth app, Airflow's API needs a token;
clients get MLFLOW_TRACKING_USERNAME/PASSWORD from `stack.py env`.

Each service gets a health check with a timeout and a status line; `stop` stops them in reverse order
and kills the process group of anything that lingers, so no process is left behind.

    python infra/stack/stack.py start [--home var/stack] [--workdir .]
    python infra/stack/stack.py status | stop
    eval "$(python infra/stack/stack.py env)"     # this shell talks to the running stack (dvc, rxrec, mlflow)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from profiles import load_profile, secret_names

HOST = "127.0.0.1"
DB_USER = "rxrec"
DATABASES = ("airflow", "mlflow")
BUCKETS = ("rxrec-dvc", "rxrec-mlflow", "rxrec-models")
WORKERS = ("worker-1", "worker-2")
PORT_NAMES = ("postgres", "redis", "s3", "mlflow", "airflow", "triton_http", "triton_grpc", "triton_metrics")
# Emulator credentials for moto; real deployments take AWS_* from their own environment or secret store.
S3_EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
HOSTNAME_CALLABLE = "infra.stack.worker_hostname.hostname"
# Login on the stack: MLflow runs its basic-auth app and Airflow's SimpleAuthManager has no anonymous access.
# The passwords are secrets like PGPASSWORD (environment first, else generated into <home>/secrets.env);
# the DAG tasks and `stack.py env` get MLFLOW_TRACKING_USERNAME/PASSWORD, which the MLflow client reads.
LOGIN_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "RXREC_AIRFLOW_ADMIN_PASSWORD")


class StackError(RuntimeError):
    """A service that did not start or answer; the message names it and carries its log tail."""


# --------------------------------------------------------------------------- small helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgids: set[int]) -> list[int]:
    """Live (non-zombie) processes whose process group or session is one of `pgids`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and (int(fields[2]) in pgids or int(fields[3]) in pgids):
            found.append(int(stat.parent.name))
    return found


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(name: str, check: Callable[[], bool], timeout_s: float, log: Path, pid: int | None = None) -> float:
    """Poll `check` until it holds; StackError with the log tail on timeout or when `pid` exits."""
    started = time.monotonic()
    while not check():
        if pid is not None and not _alive(pid):
            raise StackError(f"{name} exited during startup; {log}:\n{_tail(log)}")
        if time.monotonic() - started > timeout_s:
            raise StackError(f"{name} not healthy within {timeout_s:.0f}s; {log}:\n{_tail(log)}")
        time.sleep(0.5)
    return time.monotonic() - started


def _airflow_launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rxrec_airflow_launcher", PROJECT_ROOT / "infra" / "airflow" / "launcher.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _pg_bin() -> Path:
    """Folder of pg_ctl/initdb: on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise StackError("PostgreSQL binaries not found (pg_ctl): run `bash infra/stack/setup.sh`")
    return candidates[-1].parent


# --------------------------------------------------------------------------- the stack


class Stack:
    """One stack's state folder: ports.json, services.json (pids, process groups, logs), secrets.env."""

    def __init__(self, home: Path, workdir: Path | None = None) -> None:
        self.home = home.resolve()
        self.workdir = (workdir or Path(os.environ.get("RXREC_WORKDIR") or PROJECT_ROOT)).resolve()
        self.logs = self.home / "logs"
        self.ports_file = self.home / "ports.json"
        self.services_file = self.home / "services.json"
        self.secrets_file = self.home / "secrets.env"
        self.airflow_home = self.home / "airflow"
        self.pgdata = self.home / "pgdata"
        self.ports: dict[str, int] = {}
        self.services: dict[str, dict] = {}
        self.as_postgres = os.geteuid() == 0  # initdb refuses root: run PostgreSQL as the postgres user

    # ----------------------------------------------------------------- state
    def _save(self) -> None:
        self.services_file.write_text(json.dumps({"workdir": str(self.workdir), "services": self.services},
                                                 indent=2))

    def load_state(self) -> bool:
        if not self.services_file.exists():
            return False
        state = json.loads(self.services_file.read_text())
        self.workdir = Path(state["workdir"])
        self.services = state["services"]
        self.ports = json.loads(self.ports_file.read_text()) if self.ports_file.exists() else {}
        return True

    def secrets(self) -> dict[str, str]:
        """PGPASSWORD and the AWS keys: the caller's environment first, else generated once for this stack."""
        stored: dict[str, str] = {}
        if self.secrets_file.exists():
            stored = dict(line.split("=", 1) for line in self.secrets_file.read_text().splitlines() if "=" in line)
        wanted = {"PGPASSWORD": secrets.token_urlsafe(18), **S3_EMULATOR_CREDENTIALS,
                  **{name: secrets.token_urlsafe(18) for name in LOGIN_SECRETS}}
        values = {k: os.environ.get(k) or stored.get(k) or default for k, default in wanted.items()}
        if values != stored:
            self.secrets_file.touch(mode=0o600)
            self.secrets_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    def profile(self) -> dict[str, str]:
        """infra/profiles/stack.env filled in with this stack's host, ports and work directory."""
        return load_profile("stack", {
            "RXREC_STACK_HOST": HOST, "RXREC_WORKDIR": str(self.workdir),
            "RXREC_POSTGRES_PORT": self.ports["postgres"], "RXREC_REDIS_PORT": self.ports["redis"],
            "RXREC_S3_PORT": self.ports["s3"], "RXREC_MLFLOW_PORT": self.ports["mlflow"],
            "RXREC_TRITON_HTTP_PORT": self.ports["triton_http"]})

    def environment(self) -> dict[str, str]:
        """What the services and the DAG tasks run with: the profile plus the secrets it names."""
        env = self.profile()
        values = self.secrets()
        missing = [name for name in secret_names(env) if name not in values]
        if missing:
            raise StackError(f"secrets named by the stack profile have no value: {', '.join(missing)}")
        # the profile names MLFLOW_TRACKING_USERNAME and, as a secret, MLFLOW_TRACKING_PASSWORD: the MLflow login
        return {**env, **{name: values[name] for name in secret_names(env)}, "RXREC_WORKDIR": str(self.workdir)}

    def launch_commands(self) -> dict[str, list[str]]:
        """The command line (or, for PostgreSQL, the server options) of every service, bind address included.

        One place that says how each service listens, so tests can check every one binds HOST without
        starting the stack (tests/reliability/test_security.py); the start_* methods run exactly these.
        """
        p = self.ports
        triton_dir = self.home / "triton"
        airflow_bin = str(Path(sys.executable).parent / "airflow")
        profile = self.profile()
        commands = {
            "postgres": ["-c", f"listen_addresses={HOST}", "-p", str(p["postgres"]), "-k", str(self.pgdata),
                         "-c", "max_connections=200"],
            "redis": ["redis-server", "--bind", HOST, "--port", str(p["redis"]), "--save", "", "--appendonly", "no",
                      "--dir", str(self.home / "redis"), "--protected-mode", "yes"],
            "s3": [sys.executable, str(PROJECT_ROOT / "infra" / "s3" / "server.py"), "--host", HOST,
                   "--port", str(p["s3"]), "--bucket", BUCKETS[0]],
            "mlflow": ["env", f"MLFLOW_HOST={HOST}", f"MLFLOW_PORT={p['mlflow']}", "RXREC_MLFLOW_AUTH=basic-auth",
                       "bash", str(PROJECT_ROOT / "mlflow" / "server.sh")],
            "triton": [sys.executable, str(HERE / "triton_service.py"),
                       "--repo", str(Path(profile["RXREC_TRITON_REPO"])),
                       "--http-port", str(p["triton_http"]), "--grpc-port", str(p["triton_grpc"]),
                       "--metrics-port", str(p["triton_metrics"]), "--log-dir", str(triton_dir),
                       "--pid-file", str(triton_dir / "tritonserver.pid")],
        }
        for worker in WORKERS:  # no log server: --skip-serve-logs (the api-server reads the shared log folder)
            commands[worker] = [airflow_bin, "celery", "worker", "--celery-hostname", f"{worker}@rxrec-stack",
                                "--concurrency", "1", "--queues", profile["AIRFLOW__OPERATORS__DEFAULT_QUEUE"],
                                "--skip-serve-logs", "--without-mingle", "--without-gossip"]
        return commands

    def _record(self, name: str, pid: int, log: Path, pgid: int | None = None, **extra: object) -> None:
        self.services[name] = {"pid": pid, "pgid": pgid if pgid is not None else pid, "log": str(log), **extra}
        self._save()

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], **popen: object) -> subprocess.Popen:
        """Start one service in its own process group, output to logs/<name>.log."""
        log = self.logs / f"{name}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **popen)
        self._record(name, proc.pid, log)
        return proc

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    # ----------------------------------------------------------------- services
    def start_postgres(self, password: str) -> None:
        pg = _pg_bin()
        log = self.logs / "postgres.log"
        user = {"user": "postgres", "group": "postgres"} if self.as_postgres else {}
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "HOME": str(self.home)}
        if self.as_postgres:
            for folder in (self.home, self.logs):
                os.chmod(folder, 0o755)
            probe = subprocess.run(["test", "-x", str(self.home)], check=False, **user)
            if probe.returncode != 0:
                raise StackError(f"the postgres user cannot reach {self.home}: every folder above it must be "
                                 "traversable by others (use a --home outside private temp folders)")
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            pwfile = self.home / ".pgpass-init"
            pwfile.write_text(password + "\n")
            if self.as_postgres:
                shutil.chown(self.pgdata, "postgres", "postgres")
                shutil.chown(pwfile, "postgres", "postgres")
            os.chmod(pwfile, 0o600)
            try:
                done = subprocess.run([str(pg / "initdb"), "-D", str(self.pgdata), "-U", DB_USER, "-E", "UTF8",
                                       "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                                       f"--pwfile={pwfile}"], env=env, capture_output=True, text=True,
                                      check=False, **user)
            finally:
                pwfile.unlink(missing_ok=True)
            if done.returncode != 0:
                raise StackError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        if self.as_postgres:
            log.touch()
            shutil.chown(log, "postgres", "postgres")
        options = " ".join(self.launch_commands()["postgres"])
        proc = subprocess.Popen([str(pg / "pg_ctl"), "start", "-D", str(self.pgdata), "-l", str(log), "-w",
                                 "-t", "60", "-o", options], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, **user)
        out, _ = proc.communicate(timeout=90)
        if proc.returncode != 0:
            raise StackError(f"pg_ctl start failed: {out}\n{_tail(log)}")
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        self._record("postgres", postmaster, log, pgid=proc.pid, bin=str(pg), user="postgres" if user else "")
        self._create_databases(password)

    def _create_databases(self, password: str) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host=HOST, port=self.ports["postgres"], user=DB_USER, password=password,
                                        dbname="postgres", connect_timeout=3)
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"postgres does not accept connections: {exc}") from exc
                time.sleep(0.5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cur.fetchall()}
            for name in DATABASES:
                if name not in present:
                    cur.execute(f'CREATE DATABASE "{name}" OWNER {DB_USER}')
        conn.close()

    def start_redis(self) -> None:
        data = self.home / "redis"
        data.mkdir(exist_ok=True)
        proc = self._spawn("redis", self.launch_commands()["redis"], self._base_env())
        wait_until("redis", lambda: _redis_ping(self.ports["redis"]), 30, self.logs / "redis.log", proc.pid)

    def start_s3(self, creds: dict[str, str]) -> None:
        env = {**self._base_env(), **creds, "AWS_DEFAULT_REGION": "us-east-1"}
        proc = self._spawn("s3", self.launch_commands()["s3"], env)
        log = self.logs / "s3.log"
        wait_until("s3", lambda: "ready at" in log.read_text(errors="replace"), 60, log, proc.pid)
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://{HOST}:{self.ports['s3']}", region_name="us-east-1",
                              aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        present = {b["Name"] for b in client.list_buckets()["Buckets"]}
        for bucket in BUCKETS:
            if bucket not in present:
                client.create_bucket(Bucket=bucket)

    def start_mlflow(self, env: dict[str, str]) -> None:
        # the admin is the login the profile hands to clients (MLFLOW_TRACKING_USERNAME / _PASSWORD)
        run_env = {**self._base_env(), **env, "MLFLOW_AUTH_ADMIN_USERNAME": env["MLFLOW_TRACKING_USERNAME"],
                   "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_TRACKING_PASSWORD"],
                   "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secrets()["MLFLOW_FLASK_SERVER_SECRET_KEY"],
                   "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{self.home / 'mlflow-auth.db'}",
                   "MLFLOW_AUTH_CONFIG_PATH": str(self.home / "mlflow-basic-auth.ini")}
        proc = self._spawn("mlflow", self.launch_commands()["mlflow"], run_env)
        wait_until("mlflow", lambda: _http_ok(f"http://{HOST}:{self.ports['mlflow']}/health"), 180,
                   self.logs / "mlflow.log", proc.pid)

    def start_airflow(self, env: dict[str, str]) -> None:
        launcher = _airflow_launcher()
        extra = {**env, "AIRFLOW__CORE__PARALLELISM": "2", "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
                 "RXREC_RETRAIN_SCHEDULE": os.environ.get("RXREC_RETRAIN_SCHEDULE", "none")}
        password = {launcher.PASSWORD_ENV: self.secrets()["RXREC_AIRFLOW_ADMIN_PASSWORD"]}
        try:
            airflow = launcher.start(self.airflow_home, self.ports["airflow"], extra_env={**extra, **password},
                                     timeout_s=300)
        except RuntimeError as exc:
            raise StackError(f"airflow: {exc}") from exc
        for component, pid in airflow.pids.items():
            self._record(f"airflow-{component}", pid, self.airflow_home / "logs" / f"{component}.log")
        worker_env = launcher.environment(self.airflow_home, self.ports["airflow"], extra)
        worker_env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = HOSTNAME_CALLABLE
        commands = self.launch_commands()
        procs = []
        for worker in WORKERS:
            procs.append((worker, self._spawn(worker, commands[worker], {**worker_env, "RXREC_WORKER_HOSTNAME": worker},
                                              cwd=self.airflow_home)))
        for worker, proc in procs:
            log = self.logs / f"{worker}.log"
            wait_until(worker, lambda log=log: " ready." in log.read_text(errors="replace"), 180, log, proc.pid)

    def start_triton(self) -> None:
        pid_file = self.home / "triton" / "tritonserver.pid"
        proc = self._spawn("triton", self.launch_commands()["triton"], {**self._base_env(), "PYTHONUNBUFFERED": "1"})
        log = self.logs / "triton.log"
        wait_until("triton", lambda: "Triton ready" in log.read_text(errors="replace"), 240, log, proc.pid)
        server_pid = int(pid_file.read_text())
        self.services["triton"]["server_pid"] = server_pid  # tritonserver leads its own process group
        self._save()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> dict[str, dict]:
        """Start every service in dependency order; on any failure stop what started and re-raise."""
        if self.load_state() and any(_alive(s["pid"]) for s in self.services.values()):
            raise StackError(f"a stack already runs from {self.home}: `make stack-stop` (or `stack.py stop`) first")
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.services = {}
        self.ports = {name: _free_port() for name in PORT_NAMES}
        self.ports_file.write_text(json.dumps(self.ports, indent=2))
        self._save()
        timings: dict[str, float] = {}
        try:
            env = self.environment()
            creds = {k: env[k] for k in S3_EMULATOR_CREDENTIALS}
            steps: list[tuple[str, Callable[[], None]]] = [
                ("postgres", lambda: self.start_postgres(env["PGPASSWORD"])),
                ("redis", self.start_redis),
                ("s3", lambda: self.start_s3(creds)),
                ("mlflow", lambda: self.start_mlflow(env)),
                ("airflow", lambda: self.start_airflow(env)),
                ("triton", self.start_triton),
            ]
            for name, step in steps:
                started = time.monotonic()
                step()
                timings[name] = round(time.monotonic() - started, 1)
        except BaseException:
            self.stop()
            raise
        return {"timings": timings, "status": self.status()}

    def stop(self, timeout_s: float = 30) -> list[int]:
        """Stop in reverse order (gracefully, then SIGKILL by process group); returns pids that survived."""
        if not self.services and not self.load_state():
            return []
        for name in reversed(list(self.services)):
            self._stop_one(name, self.services[name], timeout_s)
        pgids = {s["pgid"] for s in self.services.values()} | {
            s["server_pid"] for s in self.services.values() if "server_pid" in s}
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while group_members(pgids) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = group_members(pgids)
        if not survivors:
            self.services_file.unlink(missing_ok=True)
            self.services = {}
        return survivors

    def _stop_one(self, name: str, info: dict, timeout_s: float) -> None:
        pid = info["pid"]
        if name == "postgres":
            user = {"user": "postgres", "group": "postgres"} if info.get("user") else {}
            if _alive(pid):
                subprocess.run([str(Path(info["bin"]) / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast",
                                "-w", "-t", str(int(timeout_s))], capture_output=True, check=False,
                               env={"PATH": os.environ.get("PATH", "")}, **user)
            return
        if name.startswith("airflow-"):
            if name == "airflow-api-server":  # the launcher stops all its components together (SIGINT)
                _airflow_launcher().stop(self.airflow_home)
            return
        if not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)  # Celery: warm shutdown; Triton service: stops its server; others: exit
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)

    def status(self) -> dict[str, dict]:
        """Per service: running (process alive), healthy (its own check), where it answers."""
        if not self.services:
            self.load_state()
        checks: dict[str, tuple[Callable[[], bool], str]] = {
            "postgres": (lambda: self._tcp_open(self.ports["postgres"]), f"postgresql://{HOST}:{self.ports.get('postgres')}"),
            "redis": (lambda: _redis_ping(self.ports["redis"]), f"redis://{HOST}:{self.ports.get('redis')}"),
            "s3": (lambda: _http_ok(f"http://{HOST}:{self.ports['s3']}/rxrec-dvc"), f"http://{HOST}:{self.ports.get('s3')}"),
            "mlflow": (lambda: _http_ok(f"http://{HOST}:{self.ports['mlflow']}/health"),
                       f"http://{HOST}:{self.ports.get('mlflow')}"),
            "triton": (lambda: _http_ok(f"http://{HOST}:{self.ports['triton_http']}/v2/health/live"),
                       f"http://{HOST}:{self.ports.get('triton_http')}"),
        }
        airflow_url = f"http://{HOST}:{self.ports.get('airflow')}"
        out: dict[str, dict] = {}
        for name, info in self.services.items():
            running = _alive(info["pid"])
            if name in checks:
                check, where = checks[name]
            elif name.startswith("airflow-"):
                check, where = (lambda: _http_ok(f"{airflow_url}/api/v2/monitor/health")), airflow_url
            else:  # a Celery worker: alive and announced ready in its log
                check, where = (lambda info=info: " ready." in Path(info["log"]).read_text(errors="replace")), \
                    f"queue {self.profile()['AIRFLOW__OPERATORS__DEFAULT_QUEUE']}"
            out[name] = {"running": running, "healthy": running and check(), "where": where, "pid": info["pid"],
                         "log": info["log"]}
        return out

    @staticmethod
    def _tcp_open(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=2):
                return True
        except OSError:
            return False


def status_lines(status: dict[str, dict]) -> str:
    """One line per service: name, state, where it answers, pid, log."""
    lines = []
    for name, s in status.items():
        state = "healthy" if s["healthy"] else ("running, not healthy" if s["running"] else "stopped")
        lines.append(f"  {name:<22} {state:<21} {s['where']:<34} pid {s['pid']:<7} {s['log']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "env"))
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("RXREC_STACK_HOME", PROJECT_ROOT / "var" / "stack")))
    parser.add_argument("--workdir", type=Path, default=None, help="RXREC_WORKDIR of the DAG tasks (default: project root)")
    args = parser.parse_args()
    stack = Stack(args.home, args.workdir)
    if args.command == "start":
        try:
            result = stack.start()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        airflow = _airflow_launcher().Airflow(stack.airflow_home, stack.ports["airflow"], {})
        print(f"rxrec stack is up ({', '.join(f'{k} {v}s' for k, v in result['timings'].items())})\n"
              f"{status_lines(result['status'])}\n"
              f"  Airflow UI: {airflow.url}  user admin, password in {airflow.password_file}\n"
              f"  MLflow UI:  http://{HOST}:{stack.ports['mlflow']}  user {stack.profile()['MLFLOW_TRACKING_USERNAME']}, "
              f"password "
              f"MLFLOW_TRACKING_PASSWORD in {stack.secrets_file}\n"
              f"  ports: {stack.ports_file}   this shell: eval \"$(python infra/stack/stack.py env)\"\n"
              f"  stop with: make stack-stop")
        return 0
    if not stack.load_state():
        print(f"no stack running from {stack.home}")
        return 0 if args.command == "stop" else 1
    if args.command == "status":
        status = stack.status()
        print(status_lines(status))
        return 0 if all(s["healthy"] for s in status.values()) else 1
    if args.command == "env":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in stack.environment().items()))
        return 0
    survivors = stack.stop()
    if survivors:
        print(f"error: processes still alive after stop: {survivors}", file=sys.stderr)
        return 1
    print(f"rxrec stack stopped ({stack.home})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
