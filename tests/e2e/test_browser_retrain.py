"""The ML engineer's daily loop in a real browser: trigger retraining in the Airflow UI, compare in MLflow.

The module starts a real MLflow tracking server and a real Airflow 3 (API server + UI, scheduler,
DAG processor; infra/airflow/launcher.py) on free ports of 127.0.0.1 with private state, drives
Debian's headless Chromium through Selenium, and stops everything at the end (no process is left).
Screenshots go to reports/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.serve.triton_server import default_venv, find_free_port
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "reports" / "screenshots"
DAG_ID = "retrain_and_promote"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1500,1000"]
# The tiny world (as tests/conftest.py), typed into the run form: fields first, the rest as overrides.
FORM = {"n_products": "150", "n_users": "500", "gpt4rec_epochs": "2", "gpt4rec_max_len": "20", "prod2vec_epochs": "2"}
FORM_SECTIONS = {"Data": ["n_products", "n_users"], "Training": ["gpt4rec_epochs", "gpt4rec_max_len", "prod2vec_epochs"]}
OVERRIDES = ["data.sessions_per_user=3", "validate.min_products=50", "validate.min_events=200",
             "graph.walks_per_node=4", "graph.walk_length=12", "prod2vec.dim=32", "gpt4rec.dim=32",
             "gpt4rec.batch_size=64", "export.parity_sessions=64", "meta_prod2vec.epochs=1", "ncf.epochs=1"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # Airflow and MLflow start, then a DAG run of up to 900 s
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver "
                       "(`make browser-deps`)"),
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="the DAG deploys to Triton: run infra/triton/setup.sh"),
]


def _launcher():
    return load_script("infra/airflow/launcher.py", "rxrec_airflow_launcher")


def _get_json(url: str, token: str | None = None, data: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[dict]:
    """MLflow server + Airflow on free ports with private state; the DAG's tasks log to that MLflow."""
    root = tmp_path_factory.mktemp("browser")
    timings: dict[str, float] = {}
    mlflow_port = find_free_port()
    env = {**os.environ, "MLFLOW_PORT": str(mlflow_port), "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(root / "mlartifacts"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    mlflow_log = (root / "mlflow.log").open("w")
    mlflow = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh")], env=env, stdout=mlflow_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    launcher = _launcher()
    home = root / "airflow"
    try:
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        _wait_http(f"{mlflow_url}/health", 120, mlflow)
        timings["mlflow_start_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        airflow = launcher.start(home, find_free_port(), extra_env={
            "RXREC_WORKDIR": str(root / "work"), "RXREC_TRITON_REPO": str(root / "triton_repo"),
            "RXREC_MLFLOW_TRACKING_URI": mlflow_url, "RXREC_RETRAIN_SCHEDULE": "assets",
            "RXREC_TRITON_VENV": str(default_venv())})
        timings["airflow_start_s"] = round(time.monotonic() - started, 1)
        yield {"airflow": airflow, "mlflow_url": mlflow_url, "root": root, "timings": timings}
    finally:
        stopped = time.monotonic()
        launcher.stop(home)
        try:
            os.killpg(mlflow.pid, signal.SIGTERM)
            mlflow.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(mlflow.pid, signal.SIGKILL)
        mlflow_log.close()
        timings["stop_s"] = round(time.monotonic() - stopped, 1)
        print(f"\nbrowser test service timings: {json.dumps(timings)}")
        leftovers = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True, check=False).stdout
        assert not leftovers.strip(), f"processes left behind: {leftovers}"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="rxrec-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _type(element, text: str) -> None:
    """Replace a form field's value. Short inputs are typed like a user does; a textarea gets the whole text
    as one input event, like a paste (typing a long text key by key races the form's re-render and loses
    characters)."""
    if element.tag_name != "textarea":
        from selenium.webdriver.common.keys import Keys

        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(text)
        assert element.get_attribute("value") == text, f"{element.get_attribute('name')}: {element.get_attribute('value')!r}"
        return
    element.parent.execute_script(
        "const [el, value] = arguments;"
        "const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;"
        "Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, value);"
        "el.dispatchEvent(new Event('input', {bubbles: true}));", element, text)
    assert element.get_attribute("value") == text, f"{element.get_attribute('name')}: {element.get_attribute('value')!r}"


def _click_text(driver, tag: str, text: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + 30  # the UI renders after its API calls return
    while True:
        try:
            matches = [e for e in driver.find_elements(By.TAG_NAME, tag)
                       if e.text.strip() == text and e.is_displayed()]
        except StaleElementReferenceException:  # re-rendered while we looked
            matches = []
        if matches or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert matches, f"no visible <{tag}> with text {text!r} on {driver.current_url}"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", matches[-1])
    matches[-1].click()


@pytest.fixture(scope="module")
def triggered_run(services, browser) -> dict:
    """Log in to the Airflow UI, trigger retrain_and_promote through its form, wait until the run ends."""
    from selenium.webdriver.common.by import By

    airflow = services["airflow"]
    browser.get(airflow.url + "/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(airflow.password())
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    time.sleep(2)
    assert "/auth/login" not in browser.current_url, "login failed"

    browser.get(f"{airflow.url}/dags/{DAG_ID}")
    _click_text(browser, "button", "Trigger")
    # The form's sections are an accordion (one open at a time): open each, fill its fields.
    for section, names in FORM_SECTIONS.items():
        _click_text(browser, "button", section)
        time.sleep(0.7)
        for name in names:
            _type(browser.find_element(By.NAME, f"element_{name}"), FORM[name])
    ports = [f"serve.{n}_port={find_free_port()}" for n in ("http", "grpc", "metrics")]
    _click_text(browser, "button", "Advanced")
    time.sleep(0.7)
    _type(browser.find_element(By.CSS_SELECTOR, "textarea[name=element_extra_overrides]"),
          "\n".join(OVERRIDES + ports))
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "airflow_trigger_form.png"))
    _click_text(browser, "button", "Trigger")  # the dialog's submit button (the last visible one)

    token = _get_json(f"{airflow.url}/auth/token", data={"username": "admin", "password": airflow.password()})[
        "access_token"]
    started = time.monotonic()
    run: dict = {}
    while time.monotonic() - started < 900:
        runs = _get_json(f"{airflow.url}/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1", token)
        run = runs["dag_runs"][0] if runs["dag_runs"] else {}
        if run.get("state") in ("success", "failed"):
            break
        time.sleep(5)
    services["timings"]["dag_run_s"] = round(time.monotonic() - started, 1)
    tasks = _get_json(f"{airflow.url}/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances", token)
    states = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
    return {"run": run, "states": states, "token": token}


def test_trigger_retrain_from_the_airflow_ui(services, browser, triggered_run):
    """The run the form started used the form's values and succeeded end to end (Triton included)."""
    from selenium.webdriver.common.by import By

    run, states = triggered_run["run"], triggered_run["states"]
    assert run.get("run_type") == "manual" and run["conf"]["n_products"] == 150, run
    assert run["state"] == "success", f"task states: {states}; logs under {services['root'] / 'airflow' / 'logs'}"
    # The TensorRT engine build runs only on a GPU cluster (gpu.enabled): skipped here, everything else ran.
    assert states.pop("build_tensorrt_engine", "skipped") == "skipped", states
    assert set(states.values()) == {"success"}, states
    browser.get(f"{services['airflow'].url}/dags/{DAG_ID}/runs/{run['dag_run_id']}")
    browser.find_element(By.XPATH, "//*[contains(text(), 'serve_check')]")
    time.sleep(2)
    browser.save_screenshot(str(SHOTS / "airflow_retrain_run.png"))
    assert (SHOTS / "airflow_retrain_run.png").stat().st_size > 10_000


def test_compare_the_dag_runs_models_in_mlflow(services, browser, triggered_run):
    """The DAG run's MLflow parent run and its child run per model family, side by side in the compare view."""
    from selenium.webdriver.common.by import By

    from mlflow import MlflowClient

    dag_run_id = triggered_run["run"]["dag_run_id"]
    client = MlflowClient(tracking_uri=services["mlflow_url"])
    experiment = client.get_experiment_by_name("rxrec")
    parents = client.search_runs([experiment.experiment_id],
                                 f"tags.airflow_dag_run_id = '{dag_run_id}' and tags.`rxrec.pipeline_run` = 'true'")
    assert len(parents) == 1, "one parent run per DAG run"
    parent = parents[0]
    assert parent.data.tags["gate.decision"] == "promote"  # the first model: no champion yet
    runs = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # Under the parent: a child run per model family and one per embedding method (tagged `method`).
    children = [r for r in runs if "model_family" in r.data.tags]
    assert {"gpt4rec", "popularity"} <= {r.data.tags["model_family"] for r in children}
    assert {"prod2vec", "tfidf"} <= {r.data.tags.get("method") for r in runs}
    ids = json.dumps([r.info.run_id for r in children])
    url = f"{services['mlflow_url']}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment.experiment_id])}"
    browser.get(url)
    browser.find_element(By.XPATH, "//*[contains(text(), 'ndcg_at_10')]")
    browser.find_element(By.XPATH, "//*[contains(text(), 'gpt4rec')]")
    time.sleep(3)
    browser.save_screenshot(str(SHOTS / "mlflow_compare_runs.png"))
    assert (SHOTS / "mlflow_compare_runs.png").stat().st_size > 10_000

