"""The Airflow DAG `retrain_and_promote`: its shape follows dvc.yaml, and real runs register, deploy and stop.

The shape is read by parsing the dags folder the way Airflow does: Airflow reads its configuration
(AIRFLOW_HOME, the metadata DB) once, at import, and writes under AIRFLOW_HOME, so that runs in a fresh
interpreter with its own temporary AIRFLOW_HOME and this test process never imports airflow. The runs are
real runs of the session's Airflow (tests/e2e/airflow/conftest.py: `airflow_server`, `retrain_runs`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DAGS = REPO / "dags"
DAG_ID = "retrain_and_promote"

# Parses the dags folder the way Airflow does and prints the DAG's shape as JSON.
STRUCTURE_SCRIPT = r"""
import copy, json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}}
dag = bag.dags.get(sys.argv[2])
if dag is not None:
    out["upstream"] = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    out["retries"] = {t.task_id: [t.retries, t.retry_exponential_backoff] for t in dag.tasks}
    out["params"] = {k: {"default": dag.params[k], **dag.params.get_param(k).schema,
                         "description": dag.params.get_param(k).description} for k in dag.params}
    out["tags"] = sorted(dag.tags)
    out["catchup"] = dag.catchup
    out["schedule"] = type(dag.timetable).__name__ + " " + dag.timetable.summary
    out["schedule_assets"] = sorted(a.name for _, a in dag.timetable.asset_condition.iter_assets()) \
        if hasattr(dag.timetable, "asset_condition") else []
    out["has_doc"] = bool(dag.doc_md)
    rejected = {}
    for key, value in {"gpt4rec_max_len": 1000, "n_products": -1, "promote": "yes", "dataset": "movielens",
                       "model_families": ["popularity"], "gate_coverage_tolerance": -0.1}.items():
        params = copy.deepcopy(dag.params)
        try:
            params[key] = value
            params.validate()
            rejected[key] = False
        except ParamValidationError:
            rejected[key] = True
    out["rejected"] = rejected
    producer = bag.dags.get("validate_data")
    out["validate_data"] = None if producer is None else {
        t.task_id: sorted(a.name for a in t.outlets) for t in producer.tasks}
print("STRUCTURE=" + json.dumps(out, default=str))
"""

# Runs the DAG once with dag.test(); retries off so a failing stage fails the run at once.
RUN_SCRIPT = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[sys.argv[2]]
for t in dag.tasks:
    t.retries = 0
start = time.perf_counter()
dr = dag.test(run_conf=json.loads(sys.argv[3]))
print("DAG_TEST=" + json.dumps({"state": str(dr.state), "wall_s": time.perf_counter() - start}))
"""


def _airflow_env(root: Path) -> dict[str, str]:
    """A private Airflow (SQLite metadata DB, no examples) that parses this repo's dags folder."""
    home = root / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    private = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RXREC_WORKDIR", "RXREC_PARAMS",
               "RXREC_TRITON_REPO"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k not in private}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        GIT_PYTHON_REFRESH="quiet",
    )
    return env


def _python(script: str, *args: str, env: dict[str, str], log: Path, timeout: float) -> str:
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-c", script, *args], check=False, env=env, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd=log.parent)
    text = log.read_text()
    assert proc.returncode == 0, f"exit {proc.returncode}; log {log}:\n{text[-6000:]}"
    return text


def _marked(text: str, marker: str) -> dict:
    line = next(line for line in text.splitlines() if line.startswith(marker + "="))
    return json.loads(line.split("=", 1)[1])


def _dvc_upstream() -> dict[str, set[str]]:
    """The spec, read independently of the DAG file: B needs A when a dep of B is, or lies under, an
    out/metric/plot of A."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def paths(entries):
        return [str(p).rstrip("/") for e in entries or [] for p in (e if isinstance(e, dict) else [e])]

    made = {a: paths(s.get("outs")) + paths(s.get("metrics")) + paths(s.get("plots"))
            for a, s in stages.items()}
    return {b: {a for a, outs in made.items() if a != b and any(
                d == o or d.startswith(o + "/") for o in outs for d in paths(s.get("deps")))}
            for b, s in stages.items()}


# Tasks the DAG adds beside the dvc.yaml stages, with their upstream tasks.
# A person's approval between the gate and deployment (run form `require_approval`; skipped when off).
APPROVE, PROMOTE = "approve_promotion", "promote_champion"
EXTRA_TASKS = {"build_tensorrt_engine": {"deploy"}, APPROVE: {"register"}, PROMOTE: {APPROVE}}
# The run's DVC workspace (pipelines/stages/dvc_run.py) opens before the first stage and is recorded after all.
PREPARE, RECORD = "prepare_workspace", "record_run"


def _task_upstream() -> dict[str, set[str]]:
    """Every task's upstream tasks: the dvc.yaml edges, plus the workspace's first and last task, and the
    approval on the way from register to deploy."""
    stages = _dvc_upstream()
    upstream = {**{b: ups or {PREPARE} for b, ups in stages.items()}, PREPARE: set(), RECORD: set(stages),
                **EXTRA_TASKS}
    upstream["deploy"] = upstream["deploy"] | {PROMOTE}
    return upstream


def _ancestors(upstream: dict[str, list[str]], node: str) -> set[str]:
    seen: set[str] = set()
    todo = list(upstream[node])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(upstream[n])
    return seen


@pytest.fixture(scope="module")
def airflow_dag_structure(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("airflow_structure")
    text = _python(STRUCTURE_SCRIPT, str(DAGS), DAG_ID, env=_airflow_env(root),
                   log=root / "structure.log", timeout=120)
    return _marked(text, "STRUCTURE")


@pytest.mark.slow  # imports the DAG in a real Airflow (a subprocess, ~10 s)
def test_dag_imports_and_mirrors_dvc_yaml(airflow_dag_structure):
    s = airflow_dag_structure
    assert s["import_errors"] == {}
    assert "upstream" in s, "DagBag has no DAG retrain_and_promote"
    spec = _task_upstream()
    assert sorted(s["upstream"]) == sorted(spec), "one task per dvc.yaml stage, named after it"
    assert {k: set(v) for k, v in s["upstream"].items()} == spec
    # Spot checks of the data flow the pipeline is about.
    assert "validate" in _ancestors(s["upstream"], "prod2vec")
    assert "export_onnx" in s["upstream"]["register"]
    assert {"evaluate", "validate"} <= _ancestors(s["upstream"], "register")
    assert "register" in s["upstream"]["deploy"]
    assert s["upstream"]["generate"] == [PREPARE]


@pytest.mark.slow
def test_dag_settings_and_run_form(airflow_dag_structure):
    s = airflow_dag_structure
    assert s["tags"] == ["rxrec"] and s["catchup"] is False and s["has_doc"]
    # Daily or data-aware: whichever comes first, the validated-data asset of validate_data.
    assert s["schedule"].startswith("AssetOrTimeSchedule") and "0 0 * * *" in s["schedule"]
    assert s["schedule_assets"] == ["rxrec_validated_data"]
    assert s["validate_data"] == {"generate": [], "validate": ["rxrec_validated_data"]}
    # Service tasks retry with exponential backoff; deterministic training fails fast.
    for task, (retries, backoff) in s["retries"].items():
        if task in ("register", "deploy", "serve_check", "build_tensorrt_engine", PROMOTE, RECORD):
            assert retries >= 2 and backoff > 1, task
        else:
            assert retries == 0, task
    params = s["params"]
    assert set(params) >= {"n_products", "n_users", "gpt4rec_epochs", "gpt4rec_max_len", "prod2vec_epochs",
                           "promote", "dataset", "model_families", "gate_min_improvement",
                           "gate_coverage_tolerance", "gate_cold_start_tolerance", "gate_latency_budget_ms"}
    assert "gpt4rec" in params["model_families"]["items"]["enum"]
    # Defaults come from params.yaml, bounds from the library's settings.
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["n_products"]["default"] == defaults["data"]["n_products"]
    assert params["gpt4rec_epochs"]["default"] == defaults["gpt4rec"]["epochs"]
    assert params["gate_min_improvement"]["default"] == defaults["gate"]["min_improvement"]
    assert params["gpt4rec_max_len"]["maximum"] == 512
    assert params["promote"]["type"] == "boolean"
    assert all(p.get("description") for p in params.values())
    assert s["rejected"] == {"gpt4rec_max_len": True, "n_products": True, "promote": True, "dataset": True,
                             "model_families": True, "gate_coverage_tolerance": True}


def _out(stage: str, name: str) -> str:
    """The dvc.yaml out of `stage` whose file name is `name` (where the stage writes its record)."""
    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["outs"]
    return next(p for o in outs for p in (o if isinstance(o, dict) else [o]) if Path(p).name == name)


def _assert_registered(server, run) -> None:
    """A successful run: every task in its expected state and returning its record (XCom); with `promote`,
    deploy and what follows it ran, else they were skipped. The model version it registered (or found again)
    is in the session's MLflow with the run form's values; a promoted champion is deployed and served."""
    from mlflow import MlflowClient

    promote = run.conf["promote"]
    upstream = {k: sorted(v) for k, v in _dvc_upstream().items()}
    gated = set() if promote else {"deploy"} | {b for b in upstream if "deploy" in _ancestors(upstream, b)}
    expected = {stage: ("skipped" if stage in gated else "success") for stage in upstream}
    expected["build_tensorrt_engine"] = "skipped"  # gpu.enabled is false by default
    expected[APPROVE] = expected[PROMOTE] = "skipped"  # require_approval is off: the gate decides alone
    expected[PREPARE] = expected[RECORD] = "success"
    assert run.states == expected, run.failure
    assert run.state == "success", run.failure
    xcoms = {task: server.xcom(run.run_id, task) for task, state in expected.items() if state == "success"}
    assert all(isinstance(value, dict) for value in xcoms.values()), xcoms

    workspace = server.workspace(run.run_id).path
    registry = json.loads((workspace / _out("register", "registry.json")).read_text())
    assert registry["model_name"] and registry["version"] and registry["run_id"]
    assert registry["tracking_uri"] == server.mlflow_url, "the tasks log to the session's MLflow server"
    assert xcoms["register"]["records"][_out("register", "registry.json")]["version"] == registry["version"]
    assert xcoms[RECORD]["ran"] and "commit" in xcoms[RECORD], "the run's dvc.lock was committed to its ref"
    client = MlflowClient(tracking_uri=server.mlflow_url, registry_uri=server.mlflow_url)
    version = client.get_model_version(registry["model_name"], str(registry["version"]))
    assert version.run_id == registry["run_id"]
    mlflow_run = client.get_run(registry["run_id"])
    # The run form reached the library: the MLflow run holds the form's params.
    assert mlflow_run.data.params["data.n_products"] == str(run.conf["n_products"])
    assert mlflow_run.data.params["gpt4rec.epochs"] == str(run.conf["gpt4rec_epochs"])
    assert mlflow_run.data.tags.get("airflow_dag_run_id"), "the MLflow run records the Airflow run"

    if promote:
        deploy = json.loads((workspace / _out("deploy", "deploy.json")).read_text())
        assert Path(deploy["version_path"]).is_relative_to(server.triton_repo)
        served = json.loads((workspace / _out("serve_check", "serve_check.json")).read_text())
        assert served["matches_onnx_runtime"] is True


@pytest.mark.slow
@pytest.mark.timeout(2900)  # may start the session's services (420 s) and its two runs (1500 s + 900 s)
def test_a_run_from_the_form_trains_registers_deploys_and_serves(airflow_server, retrain_runs):
    """The session's first run (the tiny world, promote on): every stage succeeds, a model version is
    registered, and the champion is deployed to the Triton repository and served by real Triton."""
    assert retrain_runs.first.conf["promote"] is True
    _assert_registered(airflow_server, retrain_runs.first)


@pytest.mark.slow
@pytest.mark.timeout(3800)  # as above, then this run (900 s)
def test_a_run_with_promote_off_deploys_nothing(airflow_server, retrain_runs):
    """promote=false: a dry run. Deploy and everything after it are skipped, everything else succeeds.

    The form is the second run's with promote off, right after it: DVC re-runs only the stages that read
    the gate's params, and register finds the second run's model again instead of registering it twice."""
    run = airflow_server.trigger_and_wait({**retrain_runs.second.conf, "promote": False}, timeout_s=900)
    _assert_registered(airflow_server, run)


@pytest.mark.slow
@pytest.mark.timeout(1400)  # may start the session's services (420 s), then this run (900 s)
def test_a_run_stops_at_the_validation_gate(airflow_server, retrain_conf):
    """Data that fail validation stop the run: nothing downstream of validate runs, nothing is registered,
    and no dvc.lock is recorded for it."""
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=airflow_server.mlflow_url, registry_uri=airflow_server.mlflow_url)
    versions_before = {(v.name, v.version) for v in registry.search_model_versions()}
    # A world of its own (n_users): its generate stage shares no DVC run-cache entry with the other runs.
    conf = {**retrain_conf, "n_users": 400, "promote": False,
            "extra_overrides": [*retrain_conf["extra_overrides"], "validate.min_products=100000"]}
    run = airflow_server.trigger_and_wait(conf, timeout_s=900)
    states = run.states
    assert states[PREPARE] == states["generate"] == "success", run.failure
    assert states["validate"] == "failed", run.failure
    ran = (PREPARE, "generate", "validate")
    assert {t: st for t, st in states.items() if t not in ran} == {
        t: "upstream_failed" for t in states if t not in ran}, run.failure
    assert run.state == "failed"
    assert {(v.name, v.version) for v in registry.search_model_versions()} == versions_before
    ref = airflow_server.workspace(run.run_id).ref
    assert subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], cwd=REPO, check=False,
                          capture_output=True).returncode != 0, f"a failed run recorded {ref}"
