"""Two runs of retrain_and_promote triggered through the real Airflow REST API execute their stages through DVC.

Real components: Airflow 3 (API server, scheduler with the LocalExecutor, DAG processor; infra/airflow/launcher.py)
on a free port with private state, DVC in each run's workspace (pipelines/stages/dvc_run.py), git refs of this
repository. The second run changes one model family's param through the run form (gpt4rec_epochs): every stage
that does not depend on it is skipped (listed with the seconds saved), both runs leave a dvc.lock on their ref,
and `dvc params diff` / `dvc metrics diff` between the refs show exactly that change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipelines.serve.triton_server import find_free_port
from pipelines.stages.dvc_run import RunWorkspace, snapshot_commit
from tests.scripts import load_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # Airflow start, then two DAG runs of up to 1200 s
REPO = Path(__file__).resolve().parents[2]
DAG_ID = "retrain_and_promote"
BIN = Path(sys.executable).parent
# The tiny world (as tests/e2e/test_browser_retrain.py); promote off and no latency check: no Triton needed.
CONF = {"n_products": 150, "n_users": 500, "gpt4rec_epochs": 1, "gpt4rec_max_len": 20, "prod2vec_epochs": 1,
        "promote": False, "gate_latency_budget_ms": 0,
        "extra_overrides": ["data.sessions_per_user=3", "validate.min_products=50", "validate.min_events=200",
                            "graph.walks_per_node=4", "graph.walk_length=12", "prod2vec.dim=32", "gpt4rec.dim=32",
                            "gpt4rec.batch_size=64", "export.parity_sessions=64", "meta_prod2vec.epochs=1",
                            "ncf.epochs=1", "gru4rec.epochs=1", "bert4rec.epochs=1"]}


def _api(url: str, token: str | None = None, data: dict | None = None, method: str | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                     method=method, headers={"Content-Type": "application/json",
                                                             **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("dag_dvc")
    launcher = load_script("infra/airflow/launcher.py", "rxrec_airflow_launcher")
    home = root / "airflow"
    work = root / "work"
    # Both runs execute one snapshot of the code, so only the run form's change differs between them
    # (a checkout edited while the test runs would otherwise add its own changes).
    code = snapshot_commit(REPO)
    server = launcher.start(home, find_free_port(), extra_env={
        "RXREC_WORKDIR": str(work), "RXREC_TRITON_REPO": str(root / "triton_repo"), "RXREC_RETRAIN_SCHEDULE": "none",
        "RXREC_RUN_CODE": code})
    try:
        token = _api(f"{server.url}/auth/token", data={"username": "admin", "password": server.password()})[
            "access_token"]
        deadline = time.monotonic() + 180
        while True:  # the DAG processor parses the dags folder on its own schedule
            try:
                _api(f"{server.url}/api/v2/dags/{DAG_ID}", token)
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, "retrain_and_promote was not parsed within 180 s"
                time.sleep(3)
        _api(f"{server.url}/api/v2/dags/{DAG_ID}", token, {"is_paused": False}, method="PATCH")
        yield {"url": server.url, "token": token, "work": work}
    finally:
        launcher.stop(home)


def _trigger_and_wait(airflow: dict, conf: dict, timeout_s: float = 1200) -> dict:
    base = f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns"
    run = _api(base, airflow["token"], {"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]
    deadline = time.monotonic() + timeout_s
    while run["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']} after {timeout_s:.0f} s"
        time.sleep(10)
        run = _api(f"{base}/{run_id}", airflow["token"])
    tasks = _api(f"{base}/{run_id}/taskInstances", airflow["token"])["task_instances"]
    states = {t["task_id"]: t["state"] for t in tasks}
    assert run["state"] == "success", f"run {run_id}: {states}"
    workspace = RunWorkspace(run_id=run_id, state=airflow["work"])
    summary = json.loads(_git("show", f"{workspace.ref}:run_summary.json"))
    return {"run_id": run_id, "states": states, "summary": summary, "ref": workspace.ref, "workspace": workspace}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _dvc_json(*args: str) -> dict:
    done = subprocess.run([str(BIN / "dvc"), *args, "--json"], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _downstream(stages: dict, stage: str) -> set[str]:
    outs = {n: [str(p) for e in (s.get("outs") or []) + (s.get("metrics") or []) + (s.get("plots") or [])
                for p in (e if isinstance(e, dict) else [e])] for n, s in stages.items()}
    found, todo = set(), [stage]
    while todo:
        a = todo.pop()
        for b, spec in stages.items():
            deps = [str(d) for d in spec.get("deps") or []]
            if b not in found and any(d == o or d.startswith(o + "/") for o in outs[a] for d in deps):
                found.add(b)
                todo.append(b)
    return found


def test_a_changed_family_param_reruns_only_what_depends_on_it(airflow):
    runs = []
    try:
        runs.append(_trigger_and_wait(airflow, CONF))
        runs.append(_trigger_and_wait(airflow, {**CONF, "gpt4rec_epochs": 2}))
        first, second = runs
        stages = yaml.safe_load(_git("show", f"{first['ref']}:dvc.yaml"))["stages"]  # the runs' pipeline
        promotion = {"deploy"} | _downstream(stages, "deploy")  # skipped by promote=false, outside DVC
        affected = {"train_gpt4rec"} | _downstream(stages, "train_gpt4rec")
        assert set(first["summary"]["ran"]) == set(stages) - promotion
        assert set(second["summary"]["ran"]) == affected - promotion
        assert set(second["summary"]["skipped"]) == set(stages) - affected - promotion
        print(f"\nsecond run skipped {second['summary']['skipped']}, saved {second['summary']['seconds_saved']} "
              f"({second['summary']['seconds_saved_total']} s in all)")
        assert second["summary"]["seconds_saved_total"] > 0
        for run in runs:
            lock = yaml.safe_load(_git("show", f"{run['ref']}:dvc.lock"))
            assert set(stages) - promotion <= set(lock["stages"]), run["ref"]
        params = _dvc_json("params", "diff", first["ref"], second["ref"])
        assert {f: {k: (v["old"], v["new"]) for k, v in d.items()} for f, d in params.items()} == {
            "params.yaml": {"gpt4rec.epochs": (1, 2)}}
        metrics = _dvc_json("metrics", "diff", first["ref"], second["ref"])
        changed = {path for path, values in metrics.items() if values}
        produced_by = {str(p): name for name, s in stages.items() for e in s.get("metrics") or []
                       for p in (e if isinstance(e, dict) else [e])}
        assert changed and all(produced_by[path] in affected for path in changed), metrics
    finally:
        for run in runs:
            _git("update-ref", "-d", run["ref"])
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=False)
