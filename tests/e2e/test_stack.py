"""The distributed stack end to end: `retrain_and_promote` through Celery workers, Postgres-backed MLflow with
artifacts in S3, the run's own DVC push to the S3 remote, the gate measuring and deploy loading the champion on
the stack's Triton (the profile's RXREC_TRITON_URL, no reload by hand), and a stop that leaves no process behind.

Real components only: infra/stack/stack.py starts PostgreSQL, Redis, moto's S3 server, the MLflow server,
Airflow with the CeleryExecutor and two workers, and Triton, all on free ports of 127.0.0.1 with private
state. The DAG runs on a tiny world (a few minutes on 2 cores).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.serve.triton_server import default_venv, log_text, wait_for_log_text
from pipelines.stages.dvc_run import RunWorkspace
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
STACK_PY = REPO / "infra" / "stack" / "stack.py"
DAG_ID = "retrain_and_promote"
MODEL = "gpt4rec"
CONF = {"n_products": 300, "n_users": 800, "gpt4rec_epochs": 1, "gpt4rec_max_len": 30, "prod2vec_epochs": 1,
        "promote": True, "gate_latency_budget_ms": 10000, "model_families": ["popularity", "gpt4rec"],
        "extra_overrides": ["graph.walks_per_node=2", "graph.walk_length=10", "meta_prod2vec.epochs=1",
                            "prod2vec.dim=32", "gpt4rec.dim=32", "export.parity_sessions=64"]}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # stack setup and start (900 s each at most), the DAG run (1200 s)
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="the stack serves with Triton: run infra/triton/setup.sh"),
]


def _stack_module():
    return load_script("infra/stack/stack.py", "rxrec_stack")


def _call(url: str, token: str | None = None, data: dict | None = None, method: str | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None, method=method,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    """`stack.py start` on a private home (outside pytest's private tmp: PostgreSQL runs as `postgres`)."""
    setup = subprocess.run(["bash", str(REPO / "infra" / "stack" / "setup.sh")], capture_output=True, text=True,
                           check=False, timeout=900)
    assert setup.returncode == 0, f"infra/stack/setup.sh failed:\n{setup.stdout}\n{setup.stderr}"
    home = Path(tempfile.mkdtemp(prefix="rxrec-stack-"))
    home.chmod(0o755)
    work = tmp_path_factory.mktemp("stack-work")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    start = subprocess.run([sys.executable, str(STACK_PY), "start", "--home", str(home), "--workdir", str(work)],
                           capture_output=True, text=True, env=env, check=False, timeout=900)
    timings = {"start_s": round(time.monotonic() - started, 1)}
    module = _stack_module()
    handle = module.Stack(home, work)
    try:
        assert start.returncode == 0, f"stack start failed:\n{start.stdout}\n{start.stderr}"
        handle.load_state()
        yield {"home": home, "work": work, "module": module, "stack": handle, "start_out": start.stdout,
               "env": handle.environment(), "timings": timings}
    finally:
        module.Stack(home, work).stop()  # fresh state: a no-op when test_stop_leaves_no_process_behind ran
        print(f"\nstack timings: {json.dumps(timings)}")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def dag_run(stack) -> Iterator[dict]:
    """Unpause and trigger retrain_and_promote over the REST API; wait until the run ends.

    The run executes through DVC in its workspace `<work>/var/runs/<run id>` (pipelines/stages/dvc_run.py)
    and records its lock on a ref of the project's repository, which is deleted afterwards.
    """
    handle = stack["stack"]
    url = f"http://127.0.0.1:{handle.ports['airflow']}"
    password = json.loads((handle.airflow_home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    token = _call(f"{url}/auth/token", data={"username": "admin", "password": password})["access_token"]
    _call(f"{url}/api/v2/dags/{DAG_ID}", token, {"is_paused": False}, method="PATCH")
    run = _call(f"{url}/api/v2/dags/{DAG_ID}/dagRuns", token, {"logical_date": None, "conf": CONF})
    started = time.monotonic()
    while time.monotonic() - started < 1200:
        run = _call(f"{url}/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", token)
        if run["state"] in ("success", "failed"):
            break
        time.sleep(5)
    stack["timings"]["dag_run_s"] = round(time.monotonic() - started, 1)
    tis = _call(f"{url}/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances", token)["task_instances"]
    failed = [t["task_id"] for t in tis if t["state"] in ("failed", "upstream_failed")]
    logs = "\n".join(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                     for task in failed for log in sorted(handle.airflow_home.glob(f"logs/**/task_id={task}/*.log")))
    states = {t["task_id"]: t["state"] for t in tis}
    workspace = RunWorkspace(run_id=run["dag_run_id"], state=stack["work"])
    try:
        yield {"run": run, "tasks": {t["task_id"]: t for t in tis}, "failure": f"states {states}\n{logs}",
               "workspace": workspace.path, "ref": workspace.ref}
    finally:
        subprocess.run(["git", "update-ref", "-d", workspace.ref], cwd=REPO, check=False)


def test_stack_reports_every_service_healthy(stack):
    status = stack["stack"].status()
    expected = {"postgres", "redis", "s3", "mlflow", "airflow-api-server", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "worker-1", "worker-2", "triton"}
    assert set(status) == expected
    assert {n: s["healthy"] for n, s in status.items()} == dict.fromkeys(expected, True)
    for name in expected:  # one status line per service
        assert any(line.split()[0] == name for line in stack["start_out"].splitlines() if line.strip())
    ports = json.loads((stack["home"] / "ports.json").read_text())
    assert len(set(ports.values())) == len(ports)
    assert [name for name, port in ports.items() if not _port_in_use(port)] == []


def test_retrain_and_promote_runs_on_both_celery_workers(stack, dag_run):
    states = {t: ti["state"] for t, ti in dag_run["tasks"].items()}
    assert dag_run["run"]["state"] == "success", dag_run["failure"]
    assert states["register"] == states["deploy"] == states["serve_check"] == "success", states
    ran = {t: ti["hostname"] for t, ti in dag_run["tasks"].items() if ti["state"] == "success"}
    assert set(ran.values()) == {"worker-1", "worker-2"}, f"tasks per worker: {ran}"
    assert stack["env"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_model_registered_and_promoted_in_postgres_mlflow_with_s3_artifacts(stack, dag_run):
    import boto3
    import psycopg2

    handle, env = stack["stack"], stack["env"]
    with psycopg2.connect(host="127.0.0.1", port=handle.ports["postgres"], user="rxrec", dbname="mlflow",
                          password=env["PGPASSWORD"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (MODEL,))
        (champion,) = cur.fetchone()
        cur.execute("SELECT source, run_id FROM model_versions WHERE name = %s AND version = %s", (MODEL, champion))
        source, run_id = cur.fetchone()
    registry = json.loads((dag_run["workspace"] / "reports" / "pipeline" / "registry.json").read_text())
    assert registry["promoted"] is True and str(registry["version"]) == str(champion)
    assert registry["tracking_uri"] == env["RXREC_MLFLOW_TRACKING_URI"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rxrec-mlflow", Prefix="artifacts/").get("Contents", [])]
    model_id = source.removeprefix("models:/")
    assert any(k.endswith(f"{model_id}/artifacts/model.onnx") for k in keys), (source, keys[:20])
    assert any(f"/{run_id}/artifacts/" in k for k in keys), "the run's own artifacts are in S3 too"
    assert not (stack["work"] / "var" / "mlartifacts").exists(), "no artifact may land on the local disk"


def test_data_pushed_to_the_s3_remote(stack, dag_run):
    """record_run pushed the run's outputs: data/validated as its own dvc.lock names it, listing and files."""
    import boto3

    env = stack["env"]
    assert dag_run["run"]["state"] == "success", dag_run["failure"]
    latest = stack["work"] / "var" / "runs" / "latest"
    assert latest.resolve() == dag_run["workspace"], "var/runs/latest is this run's workspace"
    lock = _git("show", f"{dag_run['ref']}:dvc.lock")
    assert (latest / "dvc.lock").read_text() == lock, "the run's ref holds its final dvc.lock"
    pushed = json.loads(_git("show", f"{dag_run['ref']}:run_summary.json"))["pushed"]
    assert pushed["remote"] == env["RXREC_DVC_REMOTE"] and pushed["url"].startswith("s3://rxrec-dvc/"), pushed
    outs = yaml.safe_load(lock)["stages"]["validate"]["outs"]
    validated = next(o for o in outs if o["path"] == "data/validated")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="rxrec-dvc")
            for o in page.get("Contents", [])}

    def key(md5: str) -> str:
        return f"dvcstore/files/md5/{md5[:2]}/{md5[2:]}"

    assert key(validated["md5"]) in keys, (validated, sorted(keys)[:10])
    listing = json.loads(s3.get_object(Bucket="rxrec-dvc", Key=key(validated["md5"]))["Body"].read())
    assert len(listing) == validated["nfiles"] > 0, listing
    assert [f["relpath"] for f in listing if key(f["md5"]) not in keys] == [], "every file of data/validated"


def test_stack_requires_login_and_listens_on_loopback_only(stack):
    """MLflow (basic-auth) and Airflow refuse anonymous calls; every socket of every stack process is on loopback."""
    import ipaddress
    import urllib.error

    import psutil

    handle, env = stack["stack"], stack["env"]

    def status(url: str, headers: dict | None = None) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    mlflow_url = f"{env['RXREC_MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    creds = base64.b64encode(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    assert status(mlflow_url) == 401
    assert status(mlflow_url, {"Authorization": f"Basic {creds}"}) == 200
    assert status(mlflow_url, {"Authorization": f"Basic {creds}", "Host": "evil.example.com"}) == 403
    assert status(f"http://127.0.0.1:{handle.ports['airflow']}/api/v2/dags") == 401
    services = json.loads(handle.services_file.read_text())["services"]
    groups = {s["pgid"] for s in services.values()} | {s["server_pid"] for s in services.values() if "server_pid" in s}
    sockets = []
    pids = set(stack["module"].group_members(groups)) | {s["pid"] for s in services.values()}  # + the postmaster
    for pid in sorted(pids):
        try:
            process = psutil.Process(pid)
            sockets += [(c.laddr.ip, c.laddr.port, process.name()) for c in process.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue

    def loopback(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)

    assert set(handle.ports.values()) <= {port for _, port, _ in sockets}, (handle.ports, sockets)
    assert [s for s in sockets if not loopback(s[0])] == [], "every stack service binds 127.0.0.1"


def test_stack_triton_serves_the_champion(stack, dag_run, monkeypatch):
    """deploy loaded the promoted version into the stack's Triton (RXREC_TRITON_URL), serve_check asked it, and the
    gate measured the challenger there under its own name and unloaded it: no reload by hand here."""
    import mlflow.artifacts
    import tritonclient.http as triton_http

    from mlflow import MlflowClient
    from pipelines.export.onnx import onnx_session, onnx_top_k
    from pipelines.promotion.gate import GATE_MODEL_SUFFIX
    from pipelines.serve.client import pad_sessions

    handle, env = stack["stack"], stack["env"]
    assert dag_run["run"]["state"] == "success", dag_run["failure"]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the stack's MLflow requires login
        monkeypatch.setenv(name, env[name])
    triton_url = f"127.0.0.1:{handle.ports['triton_http']}"
    assert env["RXREC_TRITON_URL"] == triton_url and env["RXREC_PROFILE"] == "stack"
    client = MlflowClient(env["RXREC_MLFLOW_TRACKING_URI"], env["RXREC_MLFLOW_TRACKING_URI"])
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)

    # what the stack's Triton answers with: the version in its own response, mapped to the registry by lineage
    sessions = [[1, 2, 3], [5, 8], [13, 21, 34, 55]]
    inputs = triton_http.InferInput("input_ids", [len(sessions), 4], "INT64")
    inputs.set_data_from_numpy(pad_sessions(sessions))
    with triton_http.InferenceServerClient(triton_url) as triton:
        assert triton.is_model_ready(MODEL)
        result = triton.infer(MODEL, [inputs], outputs=[triton_http.InferRequestedOutput("item_ids"),
                                                        triton_http.InferRequestedOutput("scores")])
    served_version = result.get_response()["model_version"]
    repo = Path(env["RXREC_TRITON_REPO"])
    lineage = json.loads((repo / MODEL / served_version / "lineage.json").read_text())["metadata"]
    assert str(lineage["model_version"]) == champion, (served_version, lineage, champion)

    reports = dag_run["workspace"] / "reports" / "pipeline"
    deployed = json.loads((reports / "deploy.json").read_text())
    assert (deployed["triton"], deployed["triton_source"]) == (triton_url, "RXREC_TRITON_URL")
    assert deployed["served_versions"][MODEL] == int(served_version) and deployed["load_errors"] == {}
    checked = json.loads((reports / "serve_check.json").read_text())
    assert (checked["triton"], checked["triton_version"], checked["registry_version"]) == (
        triton_url, int(served_version), champion)
    assert checked["matches_onnx_runtime"] and checked["server_start_s"] == 0, "no tritonserver of its own"

    gate = json.loads((reports / "gate.json").read_text())
    assert gate["latency"]["requests"] > 0 and gate["latency"]["p95_ms"] > 0, gate["latency"]
    candidate = MODEL + GATE_MODEL_SUFFIX
    log_path = stack["home"] / "triton" / "tritonserver.log"
    assert wait_for_log_text(log_path, f"successfully unloaded '{candidate}'", timeout_s=20), log_text(log_path)
    assert f"successfully loaded '{candidate}'" in log_text(log_path)
    assert urllib.request.urlopen(f"http://{triton_url}/v2/health/ready", timeout=10).status == 200
    assert not _model_ready(triton_url, candidate), "the measured challenger does not stay loaded"

    # Both URIs: an earlier test in this process may have left the registry URI pointing elsewhere.
    mlflow.set_tracking_uri(env["RXREC_MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["RXREC_MLFLOW_TRACKING_URI"])
    downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion",
                                                          dst_path=str(stack["work"] / "champion")))
    onnx_file = next(downloaded.rglob("model.onnx"))
    assert onnx_file.read_bytes() == (repo / MODEL / served_version / "model.onnx").read_bytes(), \
        "served bytes = the champion in S3"
    expected_ids, expected_scores = onnx_top_k(onnx_session(onnx_file), pad_sessions(sessions))
    assert result.as_numpy("item_ids").tolist() == expected_ids.tolist() or np.allclose(
        result.as_numpy("scores"), expected_scores, rtol=1e-4, atol=1e-4)


def _model_ready(triton_url: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{triton_url}/v2/models/{model}/ready", timeout=10) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def test_stop_leaves_no_process_behind(stack):
    handle, module = stack["stack"], stack["module"]
    services = json.loads(handle.services_file.read_text())["services"]
    groups = {s["pgid"] for s in services.values()} | {s["server_pid"] for s in services.values() if "server_pid" in s}
    ports = json.loads(handle.ports_file.read_text())
    started = time.monotonic()
    stop = subprocess.run([sys.executable, str(STACK_PY), "stop", "--home", str(stack["home"])], capture_output=True,
                          text=True, check=False, timeout=300)
    stack["timings"]["stop_s"] = round(time.monotonic() - started, 1)
    assert stop.returncode == 0, f"{stop.stdout}\n{stop.stderr}"
    assert module.group_members(groups) == []
    assert [name for name, port in ports.items() if _port_in_use(port)] == []
    leftovers = subprocess.run(["pgrep", "-f", str(stack["home"])], capture_output=True, text=True,
                               check=False).stdout
    assert not leftovers.strip(), f"processes left behind: {leftovers}"
