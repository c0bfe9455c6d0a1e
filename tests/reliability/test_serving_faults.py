"""Serving faults, injected into a real tritonserver: each test one fault class of reports/reliability.md.

1. The server SIGKILLed while clients send >= 100 requests/s: every call ends within its timeout,
   either answered or with the client's ServerUnavailableError naming the server and what to do;
   `rxrec serve start` (daemon.start_background) notices the dead pid and starts a new server;
   answers afterwards equal those before; no version folder changed.
2. A stale newest version (an older model's files deployed again): `rxrec serve rollback` copies the
   previous good version into a new folder, the running server loads it while answering, answers
   return to the good model's, and no existing folder is touched.
3. Interrupted or broken version writes (a writer SIGKILLed half-way; a numbered folder missing its
   model file; one whose file was changed after writing): never a version Triton serves, the
   integrity check names each, `rxrec serve start` refuses the repository, quarantine moves the
   folders aside, and the next write succeeds and removes the leftovers.

The toy model (tests/serve/toy_triton.py) has the served contract and runs in the real backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest
from tritonclient.utils import InferenceServerException

from pipelines.core.config import Paths, load_settings
from pipelines.repository.check import check_repository, quarantine, snapshot
from pipelines.repository.versions import list_versions, write_config, write_version
from pipelines.serve.client import ServerUnavailableError, recommend
from pipelines.serve.daemon import running_server, start_background, stop_background
from pipelines.serve.triton_server import PROJECT_ROOT, TritonStartError, find_free_port
from tests.serve.toy_triton import (
    MAX_BATCH,
    MAX_SEQ_LEN,
    N_ITEMS,
    TOP_K,
    export_toy_onnx,
    require_serving_venv,
    toy_top_item,
)
from tests.serve.toy_triton import (
    running_server as toy_server,
)

MODEL = "gpt4rec"
SESSIONS = [[i, (i * 7) % N_ITEMS + 1, (i * 13) % N_ITEMS + 1] for i in range(1, 9)]
CALL_TIMEOUT_S = 2.0


def _toy_repo(repo: Path, onnx: Path) -> None:
    write_config(repo, MODEL, max_batch_size=MAX_BATCH, top_k=TOP_K, n_items=N_ITEMS, max_seq_len=MAX_SEQ_LEN)
    write_version(repo, MODEL, onnx, metadata={"source": onnx.name})


def _answers(url: str) -> list[list[int]]:
    return [ids for ids, _ in recommend(SESSIONS, url=url, timeout_s=10)]


def _served_versions(http_port: int) -> dict[str, str]:
    """Triton's repository index for MODEL: version -> state."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        index = json.loads(response.read())
    return {str(m.get("version")): m.get("state", "") for m in index if m["name"] == MODEL and "version" in m}


@dataclass
class Call:
    sent: float
    seconds: float
    outcome: str  # ok | unavailable | rejected | unclear
    message: str = ""
    first_item: int = -1


@dataclass
class SteadyLoad:
    """Open-loop unary calls of the rxrec HTTP client at `rate` per second from a thread pool."""

    url: str
    rate: float
    session: list[int]
    workers: int = 48
    calls: list[Call] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _one(self, sent: float) -> None:
        t0 = time.monotonic()
        try:
            ((ids, _),) = recommend([self.session], url=self.url, timeout_s=CALL_TIMEOUT_S)
            call = Call(sent, time.monotonic() - t0, "ok", first_item=ids[0])
        except ServerUnavailableError as exc:
            call = Call(sent, time.monotonic() - t0, "unavailable", str(exc))
        except InferenceServerException as exc:
            call = Call(sent, time.monotonic() - t0, "rejected", exc.message() or str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else is an unclear error: counted and asserted 0
            call = Call(sent, time.monotonic() - t0, "unclear", f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.calls.append(call)

    def _run(self) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            start, n = time.monotonic(), 0
            while not self._stop.is_set():
                due = start + n / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self._one, time.monotonic())
                n += 1

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the load did not finish: a client call hung"

    def between(self, t0: float, t1: float) -> list[Call]:
        return [c for c in self.calls if t0 <= c.sent < t1]


# --------------------------------------------------------------------------------------------- 1
@pytest.mark.slow
@pytest.mark.timeout(600)  # two tritonserver starts under load
@pytest.mark.reliability(kind="fault", name="Triton server killed (SIGKILL) under load")
def test_triton_killed_under_load_clients_get_clear_errors_and_serve_start_restarts_it(tmp_path, ledger) -> None:
    require_serving_venv()
    onnx = export_toy_onnx(tmp_path / "model.onnx", seed=1)
    paths = Paths(tmp_path / "work")
    repo = paths.triton_repo
    _toy_repo(repo, onnx)
    settings = load_settings(overrides=[f"serve.http_port={find_free_port()}", f"serve.grpc_port={find_free_port()}",
                                        f"serve.metrics_port={find_free_port()}", "serve.startup_timeout_s=120"])
    url = f"127.0.0.1:{settings.serve.http_port}"
    rate = 120.0
    try:
        first = start_background(settings, paths, repo=repo)
        before_answers, before_files = _answers(url), snapshot(repo)
        with SteadyLoad(url, rate, SESSIONS[0]) as load:
            time.sleep(3.0)
            killed_at = time.monotonic()
            os.kill(first["pid"], signal.SIGKILL)  # a crash: no shutdown, no cleanup
            time.sleep(1.5)  # clients keep calling a dead server
            assert running_server(paths) is None
            restart_t0 = time.monotonic()
            restarted = start_background(settings, paths, repo=repo)  # what `rxrec serve start` runs
            restart_s = time.monotonic() - restart_t0
            time.sleep(3.0)
        after_answers = _answers(url)
        check = check_repository(repo)
    finally:
        stop_background(paths)

    calls = load.calls
    counts = Counter(c.outcome for c in calls)
    span = max(c.sent for c in calls) - min(c.sent for c in calls)
    ok_after = [c for c in calls if c.outcome == "ok" and c.sent > killed_at]
    longest = max(c.seconds for c in calls)
    served_again_s = min(c.sent + c.seconds for c in ok_after) - killed_at if ok_after else float("nan")
    print(f"\n{len(calls)} calls in {span:.1f}s ({len(calls) / span:.0f}/s): {dict(counts)}; `serve start` took {restart_s:.1f}s, "
          f"answering again {served_again_s:.1f}s after the kill; "
          f"longest call {longest:.2f}s; sample errors: {sorted({c.message[:150] for c in calls if c.outcome != 'ok'})[:3]}")
    assert len(calls) / span >= 100, "the load must be at least 100 requests/s"
    assert counts["unclear"] == 0, [c.message for c in calls if c.outcome == "unclear"][:5]
    assert counts["unavailable"] > 0, "the kill must have been seen by clients"
    assert all(url in c.message and "rxrec serve start" in c.message for c in calls if c.outcome == "unavailable")
    # A request that reached the new server before its model was loaded is a rejection naming the model.
    assert all(MODEL in c.message for c in calls if c.outcome == "rejected")
    assert longest <= CALL_TIMEOUT_S + 1.5, f"a call took {longest:.2f}s: calls must end within their timeout"
    assert not any(c.outcome == "ok" for c in load.between(killed_at + 0.2, killed_at + 1.5))
    assert ok_after, "no call succeeded after the restart"
    top = toy_top_item(onnx, SESSIONS[0])
    assert all(c.first_item == top for c in calls if c.outcome == "ok")
    assert restarted["recovered"] and restarted["recovered"]["stale_pid"] == first["pid"]
    assert restarted["pid"] != first["pid"] and not restarted["reused"]
    assert after_answers == before_answers
    assert check.ok, check.summary()
    assert snapshot(repo) == before_files
    ledger.record(
        cases=len(calls),
        outcome=(f"{len(calls)} calls at {len(calls) / span:.0f}/s; SIGKILL mid-load: {counts['ok']} answered, "
                 f"{counts['unavailable']} got ServerUnavailableError naming {url} and `rxrec serve start`, "
                 f"{counts['rejected']} got 'model not ready' while reloading, 0 unclear, longest call {longest:.1f}s; "
                 f"`rxrec serve start` (run 1.5 s after the kill) cleaned up pid {first['pid']} and restarted in "
                 f"{restart_s:.1f}s, answering again {served_again_s:.1f}s after the kill "
                 f"with the same answers for {len(SESSIONS)} sessions; repository unchanged "
                 f"({len(before_files)} files, checksums equal)"),
        nothing_lost=check.ok and snapshot(repo) == before_files,
        nothing_promoted=list_versions(repo, MODEL) == [1],
        requests=len(calls), ok=counts["ok"], unavailable_clear=counts["unavailable"],
        model_not_ready=counts["rejected"], unclear=counts["unclear"], restart_s=round(restart_s, 2),
        served_again_after_kill_s=round(served_again_s, 2),
        longest_call_s=round(longest, 2), orphan_stubs_killed=restarted["recovered"]["orphan_stubs_killed"],
    )


# --------------------------------------------------------------------------------------------- 2
@pytest.mark.slow
@pytest.mark.timeout(600)  # a tritonserver start, version loads and a rollback under load
@pytest.mark.reliability(kind="fault", name="Stale triton_repo version deployed, rolled back")
def test_stale_version_is_rolled_back_to_a_new_folder_while_serving(tmp_path, ledger, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    old = export_toy_onnx(tmp_path / "old.onnx", seed=1)
    good = export_toy_onnx(tmp_path / "good.onnx", seed=2)
    session = next(s for s in SESSIONS if toy_top_item(old, s) != toy_top_item(good, s))
    old_top, good_top = toy_top_item(old, session), toy_top_item(good, session)
    work = tmp_path / "work"
    repo = Paths(work).triton_repo
    _toy_repo(repo, old)  # version 1: an older model
    write_version(repo, MODEL, good, metadata={"source": "good"})  # version 2: the good champion
    monkeypatch.setenv("RXREC_WORKDIR", str(work))
    with toy_server(repo, tmp_path) as server:
        server.load(MODEL)
        url = server.url
        assert recommend([session], url=url)[0][0][0] == good_top
        stale = write_version(repo, MODEL, old, metadata={"source": "old, deployed again by mistake"})  # version 3
        server.load(MODEL)
        assert recommend([session], url=url)[0][0][0] == old_top, "the stale version is what is served now"
        before = snapshot(repo)
        with SteadyLoad(url, 40.0, session, workers=8) as load:
            time.sleep(1.0)
            t0 = time.monotonic()
            out = CliRunner().invoke(app, ["serve", "rollback", "--reason", "stale version",
                                           "--set", f"serve.http_port={server.http_port}"])
            rolled_at = time.monotonic()
            time.sleep(1.5)
        assert out.exit_code == 0, out.output
        served = _served_versions(server.http_port)
        answers_after = [ids for ids, _ in recommend(SESSIONS, url=url)]
    after = snapshot(repo)
    versions = list_versions(repo, MODEL)
    lineage = json.loads((repo / MODEL / "4" / "lineage.json").read_text())
    calls = load.calls
    counts = Counter(c.outcome for c in calls)
    settled = [c for c in calls if c.sent > rolled_at + 0.2]
    print(f"\n{out.output.strip()}\n{len(calls)} calls during rollback: {dict(counts)}; served {served}; "
          f"rollback took {rolled_at - t0:.2f}s")
    assert stale.name == "3" and versions == [1, 2, 3, 4]
    assert {k: v for k, v in after.items() if k in before} == before, "an existing folder was changed"
    # The rolled-back version's full file set, the backend's shared helper included (copied with model.py).
    new_files = ("model.onnx", "model.py", "rxrec_backend.py", "lineage.json")
    assert set(after) - set(before) == {f"{MODEL}/4/{n}" for n in new_files}
    assert after[f"{MODEL}/4/model.onnx"] == before[f"{MODEL}/2/model.onnx"]
    assert lineage["metadata"]["rollback_of"] == 3 and lineage["metadata"]["restored_from"] == 2
    assert served.get("4") == "READY"
    assert counts["ok"] == len(calls) and len(calls) >= 80, dict(counts)
    assert settled and all(c.first_item == good_top for c in settled)
    assert all(ids[0] == toy_top_item(good, s) for ids, s in zip(answers_after, SESSIONS, strict=True))
    assert check_repository(repo).ok
    ledger.record(
        cases=len(SESSIONS) + len(calls),
        outcome=(f"version 3 (an older model's files) was served; `rxrec serve rollback` wrote version 2's files as "
                 f"new version 4 in {rolled_at - t0:.2f}s while {len(calls)} calls ran with {len(calls) - counts['ok']} "
                 f"errors; answers for all {len(SESSIONS)} sessions are version 2's again; folders 1-3 unchanged "
                 f"({len(before)} files, checksums equal)"),
        nothing_lost=all(after.get(k) == v for k, v in before.items()),
        nothing_promoted=lineage["metadata"]["restored_from"] == 2,
        calls_during_rollback=len(calls), errors_during_rollback=len(calls) - counts["ok"],
        rollback_s=round(rolled_at - t0, 2), served_versions=served,
    )


# --------------------------------------------------------------------------------------------- 3
_HALF_WRITER = """
import shutil, sys, time
from pathlib import Path
import pipelines.repository.versions as tr

real = shutil.copyfile
def half_copy(src, dst, *a, **k):
    if str(dst).endswith("model.onnx"):
        data = Path(src).read_bytes()
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        print("HALF", flush=True)
        time.sleep(600)  # killed here
    return real(src, dst, *a, **k)
tr.shutil.copyfile = half_copy
tr.write_version(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), metadata={"writer": "killed"})
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # a tritonserver start and several version loads
@pytest.mark.reliability(kind="fault", name="Version write interrupted or broken on disk")
def test_interrupted_and_broken_version_writes_are_never_served(tmp_path, ledger) -> None:
    v1 = export_toy_onnx(tmp_path / "v1.onnx", seed=1)
    v2 = export_toy_onnx(tmp_path / "v2.onnx", seed=2)
    work = tmp_path / "work"
    repo = Paths(work).triton_repo
    _toy_repo(repo, v1)
    model_dir = repo / MODEL
    with toy_server(repo, tmp_path) as server:
        server.load(MODEL)
        baseline = _answers(server.url)

        # a) a writer SIGKILLed half-way through copying model.onnx
        writer = subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(repo), MODEL, str(v2)],
                                  stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "HALF"
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(timeout=30)
        leftovers = sorted(model_dir.glob(".tmp-version-*"))
        assert len(leftovers) == 1 and leftovers[0].name.startswith(f".tmp-version-{writer.pid}-")
        assert (leftovers[0] / "model.onnx").stat().st_size < v2.stat().st_size
        assert list_versions(repo, MODEL) == [1], "a killed write must not leave a numbered folder"

        # b) a numbered folder without its model file, c) one whose model file was changed after writing
        (model_dir / "2").mkdir()
        for name in ("model.py", "lineage.json"):
            (model_dir / "2" / name).write_bytes((model_dir / "1" / name).read_bytes())
        (model_dir / "3").mkdir()
        for name in ("model.py", "lineage.json", "model.onnx"):
            (model_dir / "3" / name).write_bytes((model_dir / "1" / name).read_bytes())
        lineage3 = json.loads((model_dir / "3" / "lineage.json").read_text())
        (model_dir / "3" / "lineage.json").write_text(json.dumps({**lineage3, "version": 3}))
        with open(model_dir / "3" / "model.onnx", "ab") as f:
            f.write(b"\0" * 64)

        check = check_repository(repo)
        named: dict[str, str] = {}
        for problem in check.problems:
            named[Path(problem.path).name] = named.get(Path(problem.path).name, "") + problem.problem + "; "
        print("\n" + check.summary())
        assert leftovers[0].name in named and "killed half-way" in named[leftovers[0].name]
        assert "model.onnx is missing" in named["2"]
        assert "does not match the sha256" in named["3"]

        # the running server asked to reload: Triton refuses the broken versions, version 1 keeps answering
        try:
            server.load(MODEL, timeout_s=60)
            reload_refused = False
        except Exception:  # noqa: BLE001 - TritonModelLoadError: what we want to see
            reload_refused = True
        served_broken = _served_versions(server.http_port)
        answers_broken = _answers(server.url)
        assert answers_broken == baseline
        assert served_broken.get("2") != "READY"

        # `rxrec serve start` refuses to start Triton on this repository and says what to do
        settings = load_settings(overrides=[f"serve.http_port={find_free_port()}",
                                            f"serve.grpc_port={find_free_port()}",
                                            f"serve.metrics_port={find_free_port()}"])
        with pytest.raises(TritonStartError, match="rxrec serve check --quarantine") as refused:
            start_background(settings, Paths(work), repo=repo)
        assert f"{model_dir / '2'}: model.onnx is missing" in str(refused.value)

        moved = quarantine(check)
        assert sorted(Path(m).name.split("-")[1] for m in moved) == ["2", "3"]
        written = write_version(repo, MODEL, v2, metadata={"writer": "next"})
        server.load(MODEL, timeout_s=60)
        served_after = _served_versions(server.http_port)
        answers_after = _answers(server.url)
        final = check_repository(repo)

    assert written.name == "2" and list_versions(repo, MODEL) == [1, 2]
    assert not list(model_dir.glob(".tmp-version-*")), "the next write must remove the killed write's temp folder"
    assert final.ok, final.summary()
    assert served_after.get("2") == "READY"
    assert [a[0] for a in answers_after] == [toy_top_item(v2, s) for s in SESSIONS]
    assert all(Path(m).is_dir() for m in moved), "quarantine renames, never deletes"
    ledger.record(
        cases=3,
        outcome=(f"a writer SIGKILLed half-way left only {leftovers[0].name[:22]}… (never a numbered folder), a folder "
                 f"without model.onnx and one with a changed model.onnx: the integrity check named all 3, the running "
                 f"Triton {'refused the reload' if reload_refused else 'reloaded'} and kept answering with version 1 "
                 f"({len(SESSIONS)} sessions unchanged), `rxrec serve start` refused the repository, quarantine moved "
                 f"2 folders aside, and the next write became version 2, removed the temp folder and was served"),
        nothing_lost=final.ok and all(Path(m).is_dir() for m in moved),
        nothing_promoted=served_broken.get("2") != "READY" and served_broken.get("3") != "READY",
        reload_refused=reload_refused, served_while_broken=served_broken, served_after=served_after,
    )


# ------------------------------------------------------------------ fast checks of the pieces (no server)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_says_which_server_is_unreachable_and_what_to_do(protocol) -> None:
    from pipelines.serve.client import recommend_session

    url = f"127.0.0.1:{find_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=f"{url} \\({protocol}\\) is unreachable.*rxrec serve start"):
        recommend_session([[1, 2]], url=url, protocol=protocol, timeout_s=1.0)
    assert time.monotonic() - t0 < 5


def test_abandoned_temp_folders_are_told_from_live_writes_and_removed(tmp_path) -> None:
    from pipelines.repository.versions import abandoned_tmp_folders, remove_abandoned_tmp, tmp_writer_pid

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f".tmp-version-{os.getpid()}-abc"
    gone = tmp_path / f".tmp-version-{dead.pid}-def"
    old_unnamed, new_unnamed = tmp_path / ".tmp-version-xyz", tmp_path / ".tmp-version-uvw"
    for folder in (live, gone, old_unnamed, new_unnamed):
        folder.mkdir()
    os.utime(old_unnamed, (time.time() - 3600, time.time() - 3600))
    assert tmp_writer_pid(gone) == dead.pid and tmp_writer_pid(old_unnamed) is None
    assert abandoned_tmp_folders(tmp_path) == sorted([gone, old_unnamed])
    assert sorted(remove_abandoned_tmp(tmp_path)) == sorted([gone, old_unnamed])
    assert live.is_dir() and new_unnamed.is_dir() and not gone.exists()


def test_rollback_refuses_with_a_reason_and_never_rewrites(tmp_path) -> None:
    from pipelines.repository.check import rollback

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx, the rollback only copies files")
    repo = tmp_path / "repo"
    write_config(repo, MODEL, max_batch_size=4, top_k=2, n_items=5)
    write_version(repo, MODEL, onnx, metadata={"n": 1})
    with pytest.raises(ValueError, match="nothing earlier to roll back to"):
        rollback(repo, MODEL)
    write_version(repo, MODEL, onnx, metadata={"n": 2})  # same files: no version differs
    with pytest.raises(ValueError, match="no earlier version is intact and different"):
        rollback(repo, MODEL)
    with pytest.raises(ValueError, match=r"choose one of \[1\]"):
        rollback(repo, MODEL, to_version=7)
    before = snapshot(repo)
    done = rollback(repo, MODEL, to_version=1, reason="test")
    assert done["new_version"] == 3 and {k: snapshot(repo)[k] for k in before} == before
    assert check_repository(repo).ok
