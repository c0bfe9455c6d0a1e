"""Pipeline faults, injected into the real components, each recorded in the reliability ledger.

- A corrupt or incompatible challenger artifact reaches the `register` stage: the gate rejects it
  before anything is registered, with the reason; the champion alias, the registry and the Triton
  model repository are untouched and `deploy` still serves the champion.
- A `register` / `export_onnx` task is SIGKILLed at the moment it writes (a model version row in
  the MLflow store, the model artifact, the ONNX file), then run again as Airflow's retry would:
  one model version per fingerprint, gate decided, no half-written file anywhere.
- The MLflow tracking server (a real `mlflow server`, SQLite store) is down during `register` and
  `deploy`: the registry calls retry with backoff, then fail naming the URL and what to do; the
  registry is unchanged once the server is back; an outage shorter than the retry window is ridden out.
- The S3 remote (moto, infra/s3/server.py) is down during `dvc push`: retries, then a clear failure;
  the workspace, the DVC cache and `dvc status` are unchanged; the push succeeds once S3 is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipelines.core.config import PROJECT_ROOT
from pipelines.core.retry import ServiceUnavailable
from pipelines.serve.triton_server import find_free_port
from pipelines.stages import run_stage

BIN = Path(sys.executable).parent
MODEL = "gpt4rec"
NO_LATENCY = ["gate.latency_budget_ms=0"]  # the Triton latency check is the serving engineers' ground


# --------------------------------------------------------------------------- helpers


def _tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file under folder (names starting with skip left out)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(skip)}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _registry_state(uri: str) -> dict:
    """Versions (with fingerprint and gate decision), aliases and champion history of the model."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        model = client.get_registered_model(MODEL)
    except MlflowException:
        return {"versions": [], "aliases": {}, "history": None}
    versions = sorted((int(v.version), v.tags.get("fingerprint", ""), v.tags.get("gate_decision", ""))
                      for v in client.search_model_versions(f"name='{MODEL}'"))
    return {"versions": versions, "aliases": {k: str(v) for k, v in model.aliases.items()}, "history": model.tags.get("champion_history")}


@pytest.fixture()
def world(trained_workdir, tmp_path, tiny_overrides, monkeypatch) -> dict:
    """A private copy of the trained tiny world, its own SQLite MLflow store and Triton repository."""
    root = tmp_path / "world"
    shutil.copytree(trained_workdir, root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "triton_repo"))
    repo = tmp_path / "triton_repo"
    monkeypatch.setenv("RXREC_TRITON_REPO", str(repo))
    monkeypatch.setenv("RXREC_WORKDIR", str(root))
    ports = [f"serve.{n}_port={find_free_port()}" for n in ("http", "grpc", "metrics")]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = tiny_overrides + NO_LATENCY + ports + [f"mlflow.tracking_uri={uri}"]
    return {"root": root, "repo": repo, "uri": uri, "db": tmp_path / "mlflow.db", "overrides": overrides}


# --------------------------------------------------------------------------- corrupt / incompatible artifacts


def _rename_input(proto: onnx.ModelProto, old: str, new: str) -> None:
    for node in proto.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    for value in proto.graph.input:
        if value.name == old:
            value.name = new


def _bad_artifacts(good: Path, tmp: Path, n_items: int) -> dict[str, tuple[Path, str]]:
    """Case name -> (bad ONNX file, the gate check that must reject it)."""
    data = good.read_bytes()
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, payload: bytes | onnx.ModelProto, check: str) -> None:
        path = tmp / f"{name}.onnx"
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            onnx.save(payload, str(path))
        out[name] = (path, check)

    put("truncated to half", data[: len(data) // 2], "artifact is valid ONNX")
    put("truncated to 1 KiB", data[:1024], "artifact is valid ONNX")
    put("random bytes", np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes(),
        "artifact is valid ONNX")
    put("empty file", b"", "artifact file")
    flipped = bytearray(data)
    for i in range(16, len(flipped), 97):  # every 97th byte flipped: a bit-rotten copy
        flipped[i] ^= 0xFF
    put("bit-flipped bytes", bytes(flipped), "artifact is valid ONNX")

    proto = onnx.load(str(good))
    for entry in proto.metadata_props:
        if entry.key == "n_items":
            entry.value = str(n_items + 7)
    put("wrong n_items (catalogue + 7)", proto, "catalogue size")

    proto = onnx.load(str(good))
    del proto.metadata_props[:]
    put("no rxrec metadata", proto, "artifact metadata")

    proto = onnx.load(str(good))
    _rename_input(proto, "input_ids", "tokens")
    put("input renamed input_ids -> tokens", proto, "serving contract")

    proto = onnx.load(str(good))  # int32 input_ids, cast to int64 inside: valid ONNX, wrong contract
    _rename_input(proto, "input_ids", "input_ids_int64")
    first = next(v for v in proto.graph.input if v.name == "input_ids_int64")
    first.name = "input_ids"
    first.type.tensor_type.elem_type = onnx.TensorProto.INT32
    proto.graph.node.insert(0, onnx.helper.make_node("Cast", ["input_ids"], ["input_ids_int64"],
                                                     to=onnx.TensorProto.INT64))
    put("input dtype int32", proto, "serving contract")
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)  # may run the tiny pipeline of the session (trained_workdir) first
@pytest.mark.reliability(kind="fault", name="Corrupt or incompatible challenger model artifact at the promotion gate")
def test_corrupt_or_incompatible_artifact_is_rejected_and_champion_kept(world, ledger, tmp_path):
    from pipelines.data.sequences import load_sequences

    root, uri, overrides = world["root"], world["uri"], world["overrides"]
    first = run_stage("register", overrides, workdir=root)
    assert first["promoted"] and first["version"] == "1", first["reason"]
    deployed = run_stage("deploy", overrides, workdir=root)
    assert deployed["model_version"] == "1" and deployed["triton_version"] == 1
    registry_before = _registry_state(uri)
    served_before = _tree_digest(world["repo"])
    good = root / "artifacts" / "onnx" / MODEL / "model.onnx"
    good_bytes = good.read_bytes()
    n_items = load_sequences(root / "data" / "features").n_items
    cases = _bad_artifacts(good, tmp_path, n_items)
    outcomes: dict[str, str] = {}
    try:
        for i, (name, (bad, check)) in enumerate(cases.items()):
            shutil.copyfile(bad, good)
            # A new challenger: other params, so another fingerprint (the same one would be a registry no-op).
            result = run_stage("register", overrides + [f"gpt4rec.dropout={0.21 + i / 100:.2f}"], workdir=root)
            gate = json.loads((root / "reports" / "pipeline" / "gate.json").read_text())
            failed = [c for c in gate["checks"] if not c["passed"]]
            assert not result["promoted"] and result["version"] == "", (name, result)
            assert [c["name"] for c in failed] == [check], (name, failed)
            assert result["reason"].startswith("rejected (champion v1 kept): " + check), (name, result["reason"])
            assert _registry_state(uri) == registry_before, name  # nothing registered, no alias moved
            again = run_stage("deploy", overrides, workdir=root)  # the DAG's next task: still the champion
            assert again["model_version"] == "1" and not again["new"], name
            assert _tree_digest(world["repo"]) == served_before, name
            outcomes[name] = failed[0]["detail"].replace(str(good), "model.onnx")[:120]
    finally:
        good.write_bytes(good_bytes)
    ledger.record(cases=len(cases), nothing_lost=_tree_digest(world["repo"]) == served_before,
                  nothing_promoted=_registry_state(uri) == registry_before,
                  outcome=f"all {len(cases)} bad artifacts (truncated, random, empty, bit-flipped, wrong n_items, "
                          f"no metadata, renamed input, int32 input) rejected before registration with the failing "
                          f"check named; champion v1 alias, {len(registry_before['versions'])} registry version(s) "
                          f"and Triton repository unchanged, deploy kept serving v1",
                  rejections=outcomes)


# --------------------------------------------------------------------------- tasks killed mid-write


def _stage_cmd(stage: str, overrides: list[str]) -> list[str]:
    return [str(BIN / "rxrec"), "stage", stage, *[a for o in overrides for a in ("--set", o)]]


def _stage_env(world: dict, dag_run_id: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RXREC_WORKDIR": str(world["root"]),
            "RXREC_TRITON_REPO": str(world["repo"]), "AIRFLOW_CTX_DAG_RUN_ID": dag_run_id}


def _kill_when(cmd: list[str], env: dict[str, str], ready, timeout_s: float = 240) -> float:
    """Start cmd in its own process group, SIGKILL the group as soon as ready() is true; seconds it ran."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        while time.monotonic() - started < timeout_s:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return time.monotonic() - started
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace")[-2000:]
                pytest.fail(f"{cmd[2:4]} finished (exit {proc.returncode}) before the kill point:\n{out}")
            time.sleep(0.005)
        pytest.fail(f"kill point of {cmd[2:4]} not reached in {timeout_s} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    raise AssertionError("unreachable")


def _db_rows(db: Path, sql: str) -> list[tuple]:
    """A quick look while a writer runs: nothing when the table is not there yet or the writer holds the lock."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # table not created yet, or a writer holds the lock
        return []


def _db_rows_after_kill(db: Path, sql: str) -> list[tuple]:
    """The rows once the writer is dead: a read-write connection rolls back the journal a killed writer left
    (a read-only one cannot, and would read as nothing)."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # several tasks killed and rerun (240 s each at most)
@pytest.mark.reliability(kind="fault", name="DAG task killed mid-run (SIGKILL) and retried")
def test_task_killed_mid_write_and_retried_leaves_no_duplicate_or_half_file(world, ledger, monkeypatch):
    root, uri, db = world["root"], world["uri"], world["db"]
    env = _stage_env(world, "manual__fault_kill_1")
    register = _stage_cmd("register", world["overrides"])
    kills: dict[str, float] = {}

    def retry(stage: str, overrides: list[str], dag_run_id: str) -> dict:
        """What Airflow's retry does: the same stage, same dag run id (run in-process to save an import)."""
        monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", dag_run_id)
        return run_stage(stage, overrides, workdir=root)

    # 1. register killed while MLflow writes the model artifact (before the version exists).
    artifacts = root / "var" / "mlartifacts"
    kills["register: model artifact being written"] = _kill_when(
        register, env, lambda: any(artifacts.rglob("model.onnx")) if artifacts.exists() else False)
    assert len(_registry_state(uri)["versions"]) <= 1
    retry("register", world["overrides"], "manual__fault_kill_1")
    state = _registry_state(uri)
    assert [v[0] for v in state["versions"]] == [1] and state["versions"][0][2], state
    assert state["aliases"].get("champion") == "1"

    # 2. register of a new model (other params) killed the moment its version row is committed,
    #    before the gate has decided; the retry must reuse that version and finish the gate.
    overrides = world["overrides"] + ["gpt4rec.dropout=0.25"]  # another fingerprint, same ONNX file
    register2 = _stage_cmd("register", overrides)
    env2 = _stage_env(world, "manual__fault_kill_2")
    kills["register: version row just committed, gate not decided"] = _kill_when(
        register2, env2, lambda: len(_db_rows(db, f"select version from model_versions where name='{MODEL}'")) >= 2)
    undecided = _db_rows_after_kill(
        db, "select version from model_version_tags where key='gate_decision' and version=2")
    assert _db_rows_after_kill(db, "select count(*) from model_versions")[0][0] == 2
    assert not undecided, "the kill came after the gate decided: the resume path was not exercised"
    resumed = retry("register", overrides, "manual__fault_kill_2")
    assert resumed["version"] == "2" and not resumed["reused"], resumed
    state = _registry_state(uri)
    assert [v[0] for v in state["versions"]] == [1, 2], state
    assert len({v[1] for v in state["versions"]}) == 2 and all(v[2] for v in state["versions"]), state
    registry_json = json.loads((root / "reports" / "pipeline" / "registry.json").read_text())
    assert registry_json["version"] == "2" and registry_json["champion_version"] == state["aliases"]["champion"]
    gate_json = json.loads((root / "reports" / "pipeline" / "gate.json").read_text())
    assert gate_json["challenger_version"] == "2"

    # 3. export_onnx killed while the new ONNX file is being written: the old model stays whole.
    onnx_dir = root / "artifacts" / "onnx" / MODEL
    before = _tree_digest(onnx_dir)
    parity_before = (root / "reports" / "pipeline" / "parity.json").read_bytes()
    export = _stage_cmd("export_onnx", world["overrides"])
    kills["export_onnx: model.onnx being written"] = _kill_when(
        export, env, lambda: any(p.name.endswith(".onnx") for p in onnx_dir.parent.glob(".gpt4rec.staging-*/*")))
    assert _tree_digest(onnx_dir) == before, "the killed export changed the published ONNX model"
    assert (root / "reports" / "pipeline" / "parity.json").read_bytes() == parity_before
    from pipelines.promotion.gate import artifact_checks

    assert all(c.passed for c in artifact_checks(onnx_dir / "model.onnx", _n_items(root)))
    retry("export_onnx", world["overrides"], "manual__fault_kill_1")
    assert all(c.passed for c in artifact_checks(onnx_dir / "model.onnx", _n_items(root)))
    assert json.loads((root / "reports" / "pipeline" / "parity.json").read_text())["passed"]
    leftovers = [p.name for p in onnx_dir.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    half_written = [str(p) for p in (root / "reports").rglob("*.tmp")]
    assert not half_written, half_written

    versions = [v[0] for v in state["versions"]]
    ledger.record(cases=len(kills), nothing_lost=not half_written and not leftovers,
                  nothing_promoted=state["aliases"].get("champion") == "1",  # v2 (same ONNX) does not beat v1
                  outcome=f"{len(kills)} SIGKILLs at write points (model artifact upload, version row committed "
                          f"before the gate, ONNX file write), each followed by Airflow-style re-runs: "
                          f"{len(versions)} model versions for 2 fingerprints (no duplicate), every version gated, "
                          f"the published ONNX model byte-identical after the killed export, no .tmp left",
                  kill_after_s={k: round(v, 1) for k, v in kills.items()},
                  champion=state["aliases"].get("champion"))


def _n_items(root: Path) -> int:
    from pipelines.data.sequences import load_sequences

    return load_sequences(root / "data" / "features").n_items


# --------------------------------------------------------------------------- MLflow server down


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store; stop() and start() keep the store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> float:
        started = time.monotonic()
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: "
                                   f"{(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server at {self.url} not healthy after {timeout_s} s")

    def hang(self, frozen: bool) -> None:
        """Freeze (SIGSTOP) or thaw the server: connections are accepted, nothing answers meanwhile."""
        os.killpg(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture()
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # an MLflow server started twice, retries of up to 300 s
@pytest.mark.reliability(kind="fault", name="MLflow tracking server down during register and deploy tasks")
def test_mlflow_down_retries_then_fails_clearly_and_registry_unchanged(world, mlflow_server, ledger, caplog):
    root, server = world["root"], mlflow_server
    base = [o for o in world["overrides"] if not o.startswith("mlflow.tracking_uri=")]
    up = base + [f"mlflow.tracking_uri={server.url}"]
    retry = ["service_retries.attempts=3", "service_retries.backoff_s=0.5", "service_retries.max_backoff_s=2",
             "service_retries.timeout_s=5"]
    assert run_stage("register", up, workdir=root)["promoted"]
    assert run_stage("deploy", up, workdir=root)["model_version"] == "1"
    before, served = _registry_state(server.url), _tree_digest(world["repo"])
    runs_before = len(_client(server.url).search_runs(
        [_client(server.url).get_experiment_by_name("rxrec").experiment_id]))

    server.stop()
    failures: dict[str, ServiceUnavailable] = {}
    elapsed: dict[str, float] = {}
    for stage, extra in (("register", ["gpt4rec.dropout=0.25"]), ("deploy", [])):
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            run_stage(stage, up + retry + extra, workdir=root)
        elapsed[stage] = time.monotonic() - started
        exc = failures[stage] = caught.value
        message = str(exc)
        assert exc.service == "MLflow" and exc.url == server.url and exc.attempts == 3, message
        assert len(exc.delays_s) == 2 and all(0.25 <= d <= 1.5 for d in exc.delays_s), exc.delays_s
        assert elapsed[stage] >= sum(exc.delays_s), (elapsed, exc.delays_s)
        assert elapsed[stage] < 60, "the retries did not stop"
        assert server.url in message and "3 attempts" in message and "mlflow/server.sh" in message, message
    assert _tree_digest(world["repo"]) == served  # the failed deploy wrote nothing

    restart_s = server.start()
    after = _registry_state(server.url)
    runs_after = len(_client(server.url).search_runs(
        [_client(server.url).get_experiment_by_name("rxrec").experiment_id]))
    assert after == before and runs_after == runs_before

    # A short outage (the server hangs, then answers again within the retry window): the task rides it out.
    caplog.set_level(logging.WARNING, logger="rxrec.retry")
    long_retry = ["service_retries.attempts=10", "service_retries.backoff_s=1", "service_retries.max_backoff_s=4",
                  "service_retries.timeout_s=3"]
    outcome: dict = {}

    def task() -> None:
        try:
            outcome["result"] = run_stage("register", up + long_retry + ["gpt4rec.dropout=0.25"], workdir=root)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=task)
    server.hang(True)
    started = time.monotonic()

    def retries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "rxrec.retry" and server.url in r.getMessage()]

    try:
        worker.start()
        deadline = time.monotonic() + 120  # frozen until the task's calls have timed out and been retried
        while not retries():
            assert worker.is_alive() and time.monotonic() < deadline, f"no retry while the server hung: {outcome}"
            time.sleep(0.2)
    finally:
        server.hang(False)
    hung_s = time.monotonic() - started
    worker.join(timeout=300)
    ridden_out_s = time.monotonic() - started
    assert "error" not in outcome, outcome.get("error")
    retried = retries()
    assert retried, "the short outage caused no retry: the server was never down for the task"
    final = _registry_state(server.url)
    assert [v[0] for v in final["versions"]] == [1, 2] and outcome["result"]["version"] == "2"
    ledger.record(
        cases=len(failures) + 1, nothing_lost=after == before and _tree_digest(world["repo"]) == served,
        nothing_promoted=after["aliases"] == before["aliases"],
        outcome=f"server stopped: register and deploy each made 3 attempts with backoff "
                f"({', '.join(f'{s} {elapsed[s]:.1f} s' for s in elapsed)}) then failed with ServiceUnavailable "
                f"naming {server.url} and mlflow/server.sh; after restart ({restart_s:.1f} s) the registry had the "
                f"same {len(before['versions'])} version(s), aliases and {runs_before} runs; a {hung_s:.0f} s hang "
                f"(server frozen, requests timing out) inside the retry window was ridden out after {len(retried)} "
                f"retries, the task finished in {ridden_out_s:.0f} s and registered v2 once",
        delays_s={s: [round(d, 2) for d in e.delays_s] for s, e in failures.items()},
        short_outage_retries=len(retried))


# --------------------------------------------------------------------------- S3 down during dvc push


class S3Emulator:
    """moto's S3 server through the project's launcher (infra/s3/server.py) on a fixed free port."""

    def __init__(self) -> None:
        self.port = find_free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> None:
        self.proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "infra" / "s3" / "server.py"),
                                      "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        for line in self.proc.stdout:
            if "ready at" in line:
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"S3 emulator did not start (exit {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


def _dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a dvc push with retries (600 s at most) and a second push
@pytest.mark.reliability(kind="fault", name="S3 remote down during dvc push")
def test_s3_down_during_dvc_push_retries_fails_clearly_and_keeps_local_data(tmp_path, ledger):
    from pipelines.core.retry import RetryPolicy
    from pipelines.data.remote import push

    s3 = S3Emulator()
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "AWS_ENDPOINT_URL_S3": s3.endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "RXREC_WORKDIR": str(repo)}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, env, "init", "-q")
    _dvc(repo, env, "remote", "add", "s3", "s3://rxrec-dvc/dvcstore")
    data = repo / "data" / "raw"
    data.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(5):
        (data / f"part-{i}.bin").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    _dvc(repo, env, "add", "data/raw")
    local_before = _tree_digest(data)
    cache_before = _tree_digest(repo / ".dvc" / "cache")
    assert "up to date" in _dvc(repo, env, "status").lower()

    try:
        s3.start()
        s3.stop()  # the remote is down (nothing listens on its endpoint)
        started = time.monotonic()
        cli = subprocess.run([str(BIN / "rxrec"), "data", "push", "--remote", "s3",
                              "--set", "service_retries.attempts=3", "--set", "service_retries.backoff_s=0.5",
                              "--set", "service_retries.max_backoff_s=2", "--set", "service_retries.timeout_s=60"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False)
        cli_s = time.monotonic() - started
        message = " ".join(cli.stderr.split())
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert "DVC remote 's3' at s3://rxrec-dvc/dvcstore (endpoint " + s3.endpoint in message, message
        assert "3 attempts" in message and "intact" in message and "rxrec data push --remote s3" in message, message
        assert "Traceback" not in cli.stderr
        delays = [float(d) for d in re.findall(r"attempt [12]/3 failed .*?; retrying in ([0-9.]+) s", cli.stderr)]
        assert len(delays) == 2 and all(0.25 <= d <= 1.5 for d in delays) and cli_s >= sum(delays), cli.stderr
        local_after, cache_after = _tree_digest(data), _tree_digest(repo / ".dvc" / "cache")
        status = _dvc(repo, env, "status").lower()
        assert local_after == local_before and cache_after == cache_before and "up to date" in status

        s3.start()  # back (empty bucket: moto keeps data in memory)
        result = push("s3", repo=repo, policy=RetryPolicy(attempts=3, backoff_s=0.5, timeout_s=60), env=env)
        assert result.attempts == 1
        remote_status = _dvc(repo, env, "status", "-c", "-r", "s3").lower()
        assert "in sync" in remote_status or "up to date" in remote_status, remote_status
    finally:
        s3.stop()
    ledger.record(cases=2, nothing_lost=local_after == local_before and cache_after == cache_before,
                  outcome=f"with S3 down, `rxrec data push --remote s3` made 3 attempts with backoff "
                          f"({cli_s:.1f} s) and failed naming s3://rxrec-dvc/dvcstore, the endpoint and "
                          f"that local data are intact; {len(local_before)} data files and {len(cache_before)} cache "
                          f"files byte-identical, `dvc status` clean; once S3 was back the push succeeded in "
                          f"{result.attempts} attempt ({result.elapsed_s:.1f} s) and `dvc status -c` was up to date",
                  delays_s=delays)
