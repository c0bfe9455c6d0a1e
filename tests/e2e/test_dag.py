"""The Airflow DAG `retrain_and_promote`: its shape follows dvc.yaml, and a real run registers a model.

Airflow reads its configuration (AIRFLOW_HOME, the metadata DB) once, at import, and writes under
AIRFLOW_HOME; so every Airflow step runs in a fresh interpreter with its own temporary AIRFLOW_HOME,
and this test process never imports airflow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
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
EXTRA_TASKS = {"build_tensorrt_engine": {"deploy"}}
# The run's DVC workspace (pipelines/stages/dvc_run.py) opens before the first stage and is recorded after all.
PREPARE, RECORD = "prepare_workspace", "record_run"


def _task_upstream() -> dict[str, set[str]]:
    """Every task's upstream tasks: the dvc.yaml edges, plus the workspace's first and last task."""
    stages = _dvc_upstream()
    return {**{b: ups or {PREPARE} for b, ups in stages.items()}, PREPARE: set(), RECORD: set(stages),
            **EXTRA_TASKS}


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


def test_dag_settings_and_run_form(airflow_dag_structure):
    s = airflow_dag_structure
    assert s["tags"] == ["rxrec"] and s["catchup"] is False and s["has_doc"]
    # Daily or data-aware: whichever comes first, the validated-data asset of validate_data.
    assert s["schedule"].startswith("AssetOrTimeSchedule") and "0 0 * * *" in s["schedule"]
    assert s["schedule_assets"] == ["rxrec_validated_data"]
    assert s["validate_data"] == {"generate": [], "validate": ["rxrec_validated_data"]}
    # Service tasks retry with exponential backoff; deterministic training fails fast.
    for task, (retries, backoff) in s["retries"].items():
        if task in ("register", "deploy", "serve_check", "build_tensorrt_engine", RECORD):
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


def _run_dag(tmp_path: Path, conf: dict) -> dict:
    """Migrate a fresh metadata DB, dag.test() once with `conf`, read back states and XComs."""
    env = _airflow_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env.update(RXREC_WORKDIR=str(work), RXREC_TRITON_REPO=str(tmp_path / "triton_repo"))
    timings: dict = {}

    start = time.perf_counter()
    with (tmp_path / "migrate.log").open("w") as fh:
        migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=False, env=env,
                                 stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    timings["db_migrate_s"] = round(time.perf_counter() - start, 2)
    assert migrate.returncode == 0, (tmp_path / "migrate.log").read_text()[-4000:]

    start = time.perf_counter()
    log = tmp_path / "dag_test.log"
    text = _python(RUN_SCRIPT, str(DAGS), DAG_ID, json.dumps(conf), env=env, log=log, timeout=1800)
    result = _marked(text, "DAG_TEST")
    timings["dag_test_s"] = round(result["wall_s"], 2)
    timings["dag_test_process_s"] = round(time.perf_counter() - start, 2)

    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ?", (DAG_ID,)))
        xcoms = {t: json.loads(v) for t, v in db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND key = 'return_value'", (DAG_ID,))}
    timings["stage_s"] = {t: x.get("stage_seconds") for t, x in xcoms.items()}
    print(f"\nairflow timings ({tmp_path.name}): {json.dumps(timings)}")
    # The stages ran in the run's DVC workspace under the work directory; its lock went to a ref of this repo.
    runs = work / "var" / "runs"
    workspace = next(runs.iterdir()) if runs.is_dir() else work
    ref = (xcoms.get(RECORD) or {}).get("ref")
    if ref:
        subprocess.run(["git", "update-ref", "-d", ref], cwd=REPO, check=True)
    return {"state": result["state"], "states": states, "xcoms": xcoms, "work": work, "workspace": workspace,
            "failure": f"task states {states}; log {log}:\n{text[-6000:]}"}


TINY = {"n_products": 200, "n_users": 300, "gpt4rec_epochs": 1, "gpt4rec_max_len": 50, "prod2vec_epochs": 1}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # db migrate (300 s) and dag.test() (1800 s) at most
@pytest.mark.parametrize("promote", [False, True], ids=["train-register", "promote-serve"])
def test_dag_run(tmp_path, promote):
    """One real DAG run on a tiny world: every stage succeeds and a model version is registered;
    with promote, the champion is also deployed to a Triton repository and served by real Triton."""
    from pipelines.serve.triton_server import default_venv, find_free_port

    if promote and not (default_venv() / "bin" / "python").exists():
        pytest.skip(f"serving venv {default_venv()} does not exist: run infra/triton/setup.sh "
                    "or set RXREC_TRITON_VENV")
    ports = [f"serve.{name}_port={find_free_port()}" for name in ("http", "grpc", "metrics")]
    run = _run_dag(tmp_path, {**TINY, "promote": promote, "extra_overrides": ports})
    states, xcoms, work, workspace = run["states"], run["xcoms"], run["work"], run["workspace"]

    upstream = {k: sorted(v) for k, v in _dvc_upstream().items()}
    # promote=False: deploy and everything after it is skipped; everything else must succeed.
    gated = set() if promote else {"deploy"} | {b for b in upstream if "deploy" in _ancestors(upstream, b)}
    expected = {stage: ("skipped" if stage in gated else "success") for stage in upstream}
    expected["build_tensorrt_engine"] = "skipped"  # gpu.enabled is false by default
    expected[PREPARE] = expected[RECORD] = "success"
    assert states == expected, run["failure"]
    assert "success" in run["state"].lower()
    assert all(isinstance(xcoms.get(t), dict) for t, st in expected.items() if st == "success"), xcoms

    registry = json.loads((workspace / _out("register", "registry.json")).read_text())
    assert registry["model_name"] and registry["version"] and registry["run_id"]
    assert registry["tracking_uri"] == f"sqlite:///{work / 'var' / 'mlflow.db'}"
    assert xcoms["register"]["records"][_out("register", "registry.json")]["version"] == registry["version"]
    assert xcoms[RECORD]["ran"] and "commit" in xcoms[RECORD], "the run's dvc.lock was committed to its ref"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry["tracking_uri"], registry_uri=registry["tracking_uri"])
    version = client.get_model_version(registry["model_name"], str(registry["version"]))
    assert version.run_id == registry["run_id"]
    mlflow_run = client.get_run(registry["run_id"])
    # The run form reached the library: the MLflow run holds the overridden params.
    assert mlflow_run.data.params["data.n_products"] == "200"
    assert mlflow_run.data.params["gpt4rec.epochs"] == "1"
    assert mlflow_run.data.tags.get("airflow_dag_run_id"), "the MLflow run records the Airflow run"

    if promote:
        deploy = json.loads((workspace / _out("deploy", "deploy.json")).read_text())
        assert Path(deploy["version_path"]).is_relative_to(tmp_path / "triton_repo")
        served = json.loads((workspace / _out("serve_check", "serve_check.json")).read_text())
        assert served["matches_onnx_runtime"] is True


@pytest.mark.slow
@pytest.mark.timeout(2400)  # as test_dag_run
def test_dag_run_stops_at_the_validation_gate(tmp_path):
    """Data that fail validation stop the run: nothing downstream of validate runs, nothing registered."""
    run = _run_dag(tmp_path, {**TINY, "promote": False, "extra_overrides": ["validate.min_products=100000"]})
    states = run["states"]
    assert states[PREPARE] == states["generate"] == "success", run["failure"]
    assert states["validate"] == "failed", run["failure"]
    ran = (PREPARE, "generate", "validate")
    assert {t: st for t, st in states.items() if t not in ran} == {
        t: "upstream_failed" for t in states if t not in ran}, run["failure"]
    assert "failed" in run["state"].lower()
    assert not list(run["work"].rglob(Path(_out("register", "registry.json")).name))
