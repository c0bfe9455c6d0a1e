"""One real Airflow (and MLflow server) per test session, and the DAG runs the end-to-end tests share.

Why: every `retrain_and_promote` run on real services costs minutes, and the Airflow tests, the DVC
skip test and the browser test used to start their own Airflow and run the whole pipeline six times.
Here they share:

- `airflow_server`: Airflow 3 (infra/airflow/launcher.py: API server + UI, scheduler with the
  LocalExecutor, DAG processor, and whatever else the launcher starts) and an MLflow tracking server
  (mlflow/server.sh), on free ports of 127.0.0.1 with private state; the DAG's tasks log to that MLflow and
  run one snapshot of the code (RXREC_RUN_CODE), so an edit made while the tests run changes nothing.
  Other tests trigger their own runs with `airflow_server.trigger_and_wait(conf)`.
- `retrain_runs`: two runs back to back, so the second starts from the first one's dvc.lock. The first
  is triggered through the Airflow UI's form by a real browser (through the REST API where Chromium is
  missing) with promotion on: every stage runs, the champion is deployed and served by real Triton.
  The second, through the REST API, changes one model family's param (gpt4rec_epochs) only: DVC skips
  every stage that does not depend on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipelines.serve.triton_server import default_venv, find_free_port
from pipelines.stages.dvc_run import RunWorkspace, remove_workspace, snapshot_commit
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[3]
SHOTS = REPO / "reports" / "screenshots"
DAG_ID = "retrain_and_promote"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,1000"]
# Seconds a test may spend on what it shares: starting the services, then one DAG run each (the limits
# trigger_and_wait enforces). A test's own timeout adds up what it may be the first to set up.
SERVICES_START_S = 420  # MLflow (120 s) and Airflow (migrate, components healthy, DAG parsed)
FULL_RUN_S = 1500  # a run that trains everything on the tiny world, deploys and serves (a loaded CI box)
PARTIAL_RUN_S = 900  # a run that DVC mostly skips
# The tiny world typed into the run form: these fields, then `extra_overrides` (one per line).
FORM = {"n_products": 150, "n_users": 500, "gpt4rec_epochs": 3, "gpt4rec_max_len": 20, "prod2vec_epochs": 1}
FORM_SECTIONS = {"Data": ["n_products", "n_users"], "Training": ["gpt4rec_epochs", "gpt4rec_max_len", "prod2vec_epochs"]}
OVERRIDES = ["data.sessions_per_user=3", "validate.min_products=50", "validate.min_events=200",
             "graph.walks_per_node=4", "graph.walk_length=12", "prod2vec.dim=32", "gpt4rec.dim=32",
             "gpt4rec.batch_size=64", "export.parity_sessions=64", "meta_prod2vec.epochs=1", "ncf.epochs=1",
             "gru4rec.epochs=1", "bert4rec.epochs=1"]
# The second run changes one model family's param only.
CHANGED = {"gpt4rec_epochs": 2}


@dataclass
class DagRun:
    """A finished run of retrain_and_promote: its id, end state, form values and task states."""

    run_id: str
    state: str
    run_type: str
    conf: dict[str, Any]
    states: dict[str, str]
    seconds: float
    task_seconds: dict[str, float] = field(default_factory=dict)  # each task's duration as Airflow recorded it

    @property
    def failure(self) -> str:
        return f"run {self.run_id} {self.state} after {self.seconds:.0f} s; task states {self.states}"


@dataclass
class AirflowServer:
    """The session's Airflow (and MLflow) and how a test drives it over the REST API."""

    url: str
    token: str
    password: str
    home: Path  # AIRFLOW_HOME: airflow.db, logs/ (task logs under logs/dag_id=...)
    work: Path  # RXREC_WORKDIR of the tasks: var/runs/<run> workspaces, var/data_docs, the DVC cache and remote
    triton_repo: Path
    mlflow_url: str
    run_ids: list[str] = field(default_factory=list)  # every run this session triggered (refs removed at the end)

    def api(self, path: str, data: dict | None = None, method: str | None = None) -> Any:
        """One call of Airflow's REST API (`path` under /api/v2), authenticated; the JSON answer."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/{path.lstrip('/')}", data=json.dumps(data).encode() if data is not None else None,
            method=method, headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def trigger(self, conf: dict[str, Any]) -> str:
        """Start a run with the run form's values `conf`; returns its run id."""
        run = self.api(f"dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        self.run_ids.append(run["dag_run_id"])
        return run["dag_run_id"]

    def wait(self, run_id: str, timeout_s: float) -> DagRun:
        """Poll until the run ends (success or failed); fails the test when it takes longer than timeout_s."""
        started = time.monotonic()
        while True:
            run = self.api(f"dags/{DAG_ID}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                break
            assert time.monotonic() - started < timeout_s, (
                f"run {run_id} still {run['state']} after {timeout_s:.0f} s: {self.task_states(run_id)}; "
                f"task logs under {self.home / 'logs'}")
            time.sleep(5)
        tasks = self.api(f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        done = DagRun(run_id, run["state"], run["run_type"], run["conf"], {t["task_id"]: t["state"] for t in tasks},
                      round(time.monotonic() - started, 1),
                      {t["task_id"]: round(t["duration"], 1) for t in tasks if t.get("duration") is not None})
        print(f"\nrun {run_id}: {done.state} in {done.seconds} s; task seconds {done.task_seconds}", flush=True)
        return done

    def trigger_and_wait(self, conf: dict[str, Any], timeout_s: float = FULL_RUN_S) -> DagRun:
        return self.wait(self.trigger(conf), timeout_s)

    def task_states(self, run_id: str) -> dict[str, str | None]:
        tasks = self.api(f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return {t["task_id"]: t["state"] for t in tasks}

    def xcom(self, run_id: str, task_id: str) -> Any:
        """The task's return value (its XCom `return_value`), as the task returned it."""
        return self.api(f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")["value"]

    def workspace(self, run_id: str) -> RunWorkspace:
        """The run's DVC workspace (pipelines/stages/dvc_run.py): `.path` on disk, `.ref` its committed lock."""
        return RunWorkspace(run_id=run_id, state=self.work)


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


def _token(url: str, password: str) -> str:
    request = urllib.request.Request(f"{url}/auth/token", data=json.dumps({"username": "admin", "password": password})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["access_token"]


def _forget_runs(server: AirflowServer) -> None:
    """Drop what the session's runs left in this repository: their refs and git worktrees (the files are tmp)."""
    for run_id in server.run_ids:
        workspace = server.workspace(run_id)
        subprocess.run(["git", "update-ref", "-d", workspace.ref], cwd=REPO, capture_output=True, check=False)
        remove_workspace(REPO, workspace.path)


@pytest.fixture(scope="session")
def airflow_server(tmp_path_factory) -> Iterator[AirflowServer]:
    """MLflow server + Airflow with private state; retrain_and_promote parsed, unpaused, manual runs only."""
    if not (default_venv() / "bin" / "python").exists():
        pytest.skip(f"the DAG deploys to and serves from Triton: serving venv {default_venv()} is missing "
                    "(run infra/triton/setup.sh or set RXREC_TRITON_VENV)")
    root = tmp_path_factory.mktemp("airflow_server")
    timings: dict[str, float] = {}
    mlflow_port = find_free_port()
    env = {**os.environ, "MLFLOW_PORT": str(mlflow_port), "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(root / "mlartifacts"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    mlflow_log = (root / "mlflow.log").open("w")
    mlflow = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh")], env=env, stdout=mlflow_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    launcher = load_script("infra/airflow/launcher.py", "rxrec_airflow_launcher")
    home = root / "airflow"
    server: AirflowServer | None = None
    try:
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        _wait_http(f"{mlflow_url}/health", 120, mlflow)
        timings["mlflow_start_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        airflow = launcher.start(home, find_free_port(), extra_env={
            "RXREC_WORKDIR": str(root / "work"), "RXREC_TRITON_REPO": str(root / "triton_repo"),
            "RXREC_MLFLOW_TRACKING_URI": mlflow_url, "RXREC_RETRAIN_SCHEDULE": "none",
            "RXREC_TRITON_VENV": str(default_venv()), "RXREC_RUN_CODE": snapshot_commit(REPO),
            "RXREC_KEEP_RUN_WORKSPACES": "20"})  # every run of the session stays readable
        server = AirflowServer(airflow.url, _token(airflow.url, airflow.password()), airflow.password(), home,
                               root / "work", root / "triton_repo", mlflow_url)
        deadline = time.monotonic() + 180
        while True:  # the DAG processor parses the dags folder on its own schedule
            try:
                server.api(f"dags/{DAG_ID}")
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, f"{DAG_ID} was not parsed within 180 s: {home / 'logs'}"
                time.sleep(3)
        server.api(f"dags/{DAG_ID}", {"is_paused": False}, method="PATCH")
        timings["airflow_start_s"] = round(time.monotonic() - started, 1)
        yield server
    finally:
        stopped = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(mlflow.pid, signal.SIGTERM)  # stops while Airflow does
        launcher.stop(home)
        try:
            mlflow.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a server that ignores SIGTERM (e.g. with MLflow 3 job consumers switched back on); tmp state only
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mlflow.pid, signal.SIGKILL)
            mlflow.wait(timeout=30)
        mlflow_log.close()
        if server is not None:
            _forget_runs(server)
        timings["stop_s"] = round(time.monotonic() - stopped, 1)
        print(f"\nairflow_server timings: {json.dumps(timings)}")

        def leftovers() -> str:
            return subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True, check=False).stdout.strip()

        gone_by = time.monotonic() + 15  # killed process groups take a moment to be reaped
        while leftovers() and time.monotonic() < gone_by:
            time.sleep(0.5)
        assert not leftovers(), f"processes left behind: {leftovers()}"


@dataclass
class Browser:
    """Headless Chromium driven by Selenium, with the few gestures the tests need."""

    driver: Any  # selenium.webdriver.Chrome

    def _wait_for(self, by: str, value: str, keep: Callable[[Any], bool], what: str, timeout_s: float = 30) -> list:
        """The elements found by (by, value) that `keep` accepts, polled until there are some (the UI
        renders after its API calls return); AssertionError naming `what` after timeout_s."""
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                found = [e for e in self.driver.find_elements(by, value) if keep(e)]
            except StaleElementReferenceException:  # re-rendered while we looked
                found = []
            if found:
                return found
            assert time.monotonic() < deadline, f"{what} on {self.driver.current_url}"
            time.sleep(0.3)

    def click_text(self, tag: str, text: str) -> None:
        """Click the last visible <tag> whose text is `text`."""
        from selenium.webdriver.common.by import By

        matches = self._wait_for(By.TAG_NAME, tag, lambda e: e.text.strip() == text and e.is_displayed(),
                                 f"no visible <{tag}> with text {text!r}")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", matches[-1])
        matches[-1].click()

    def type(self, element: Any, text: str) -> None:
        """Replace a form field's value. Short inputs are typed like a user does; a textarea gets the whole
        text as one input event, like a paste (typing a long text key by key races the form's re-render)."""
        if element.tag_name != "textarea":
            from selenium.webdriver.common.keys import Keys

            element.send_keys(Keys.CONTROL, "a")
            element.send_keys(text)
        else:
            self.driver.execute_script(
                "const [el, value] = arguments;"
                "Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set.call(el, value);"
                "el.dispatchEvent(new Event('input', {bubbles: true}));", element, text)
        assert element.get_attribute("value") == text, f"{element.get_attribute('name')}: {element.get_attribute('value')!r}"

    def usable_field(self, by: str, value: str) -> Any:
        """The form field found by (by, value) once it is displayed and enabled (an accordion section
        that is still opening has it in the page but not yet usable)."""
        return self._wait_for(by, value, lambda e: e.is_displayed() and e.is_enabled(), f"no usable field {value!r}")[0]

    def visible_text(self, text: str, timeout_s: float = 30) -> Any:
        """The innermost displayed element whose text contains `text`, waiting for the page to render it.

        The element's whole text counts, white space ignored: React writes "Model metrics" and "(3)", or a
        dataset's name and digest, as separate nodes that only CSS spaces apart."""
        from selenium.webdriver.common.by import By

        squeezed = json.dumps("".join(text.split()))
        has_text = f"contains(translate(., ' \t\n\r\u00a0', ''), {squeezed})"
        innermost = f"//*[{has_text} and not(*[{has_text}])]"
        return self._wait_for(By.XPATH, innermost, lambda e: e.is_displayed(), f"{text!r} is not shown",
                              timeout_s)[0]

    def screenshot(self, name: str) -> Path:
        """Save the window as reports/screenshots/<name>.png (regenerated by every run of the tests)."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000, f"{path} is nearly empty"
        return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (`make browser-deps`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="rxrec-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def retrain_conf() -> dict[str, Any]:
    """The run form's values of the first run: the tiny world, promotion on, Triton on free ports of this session
    (ports are params: every run that is compared with the first one must use the same)."""
    ports = [f"serve.{name}_port={find_free_port()}" for name in ("http", "grpc", "metrics")]
    return {**FORM, "promote": True, "extra_overrides": OVERRIDES + ports}


def _trigger_from_the_form(browser: Browser, server: AirflowServer, conf: dict[str, Any]) -> str:
    """Log in to the Airflow UI, fill the run form with `conf`, submit; the new run's id (screenshot of the form)."""
    from selenium.webdriver.common.by import By

    driver = browser.driver
    driver.get(server.url + "/")
    driver.find_element(By.NAME, "username").send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(server.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    time.sleep(2)  # the login's redirect, and on a slow machine longer:
    logged_in_by = time.monotonic() + 30
    while "/auth/login" in driver.current_url and time.monotonic() < logged_in_by:
        time.sleep(0.5)
    assert "/auth/login" not in driver.current_url, "login failed"
    before = {r["dag_run_id"] for r in server.api(f"dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]}
    driver.get(f"{server.url}/dags/{DAG_ID}")
    browser.click_text("button", "Trigger")
    # The form's sections are an accordion (one open at a time): open each, fill its fields.
    for section, names in FORM_SECTIONS.items():
        browser.click_text("button", section)
        time.sleep(0.7)  # the section's opening animation; then each field is waited for until usable
        for name in names:
            browser.type(browser.usable_field(By.NAME, f"element_{name}"), str(conf[name]))
    browser.click_text("button", "Advanced")
    time.sleep(0.7)
    browser.type(browser.usable_field(By.CSS_SELECTOR, "textarea[name=element_extra_overrides]"),
                 "\n".join(conf["extra_overrides"]))
    browser.screenshot("airflow_trigger_form")
    browser.click_text("button", "Trigger")  # the dialog's submit button (the last visible one)
    deadline = time.monotonic() + 60
    while True:
        new = [r["dag_run_id"] for r in server.api(f"dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
               if r["dag_run_id"] not in before]
        if new:
            server.run_ids.append(new[0])
            return new[0]
        assert time.monotonic() < deadline, "the form's Trigger started no run within 60 s"
        time.sleep(1)


@dataclass
class RetrainRuns:
    """The session's two runs: `first` from the form (promotion on), `second` with CHANGED, from `first`'s lock."""

    first: DagRun
    second: DagRun


@pytest.fixture(scope="session")
def retrain_runs(airflow_server, retrain_conf, request) -> RetrainRuns:
    """The first run through the UI form (the REST API where Chromium is missing), then the second at once, so
    nothing another test triggers comes between them."""
    if CHROMIUM and CHROMEDRIVER:
        run_id = _trigger_from_the_form(request.getfixturevalue("browser"), airflow_server, retrain_conf)
    else:
        run_id = airflow_server.trigger(retrain_conf)
    first = airflow_server.wait(run_id, FULL_RUN_S)
    assert first.state == "success", first.failure
    second = airflow_server.trigger_and_wait({**retrain_conf, **CHANGED}, PARTIAL_RUN_S)
    assert second.state == "success", second.failure
    print(f"\nretrain runs: first {first.seconds} s, second {second.seconds} s")
    return RetrainRuns(first, second)

