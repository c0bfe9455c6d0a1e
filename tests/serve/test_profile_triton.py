"""deploy, serve_check and the gate reach the profile's Triton named by RXREC_TRITON_URL.

The profile's Triton here is the session's real tritonserver (tests/serve/conftest.py) under the stack
profile: nothing may start a server of its own, the models go through that server's repository API, and
an unreachable URL is one line naming it and the variable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import Paths, load_settings
from pipelines.core.contract import ModelMetadata
from pipelines.data.schema import CATALOGUE_FILE
from pipelines.data.sequences import Sequences, save_sequences
from pipelines.promotion.gate import GATE_MODEL_SUFFIX, triton_latency
from pipelines.repository.versions import write_model_config, write_version
from pipelines.serve.check import check_served_model
from pipelines.serve.client import recommend
from pipelines.serve.endpoint import TritonUnreachable
from pipelines.serve.remote import RemoteTriton, load_deployed
from pipelines.serve.triton_server import TritonModelLoadError, find_free_port
from tests.serve.toy_triton import MAX_SEQ_LEN, N_ITEMS, TOP_K, export_toy_onnx, toy_top_item

pytestmark = pytest.mark.slow  # a real tritonserver (the session's), as the Makefile defines slow

MODEL = "gpt4rec_profile"  # its own name in the session's shared Triton
SESSION = [3, 9, 27]


def _onnx(path: Path, seed: int) -> Path:
    """The toy model with the export's metadata (what deploy, serve_check and the gate read)."""
    import onnx

    export_toy_onnx(path, seed)
    proto = onnx.load(str(path))
    for key, value in ModelMetadata(n_items=N_ITEMS, max_len=MAX_SEQ_LEN, top_k=TOP_K).to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


def _sequences() -> Sequences:
    rng = np.random.default_rng(0)
    items = [rng.integers(1, N_ITEMS + 1, size=int(n)) for n in rng.integers(4, 10, size=30)]
    return Sequences(np.arange(len(items)), items, [np.arange(len(h), dtype=float) for h in items], n_items=N_ITEMS)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {1: _onnx(folder / "v1.onnx", seed=1), 2: _onnx(folder / "v2.onnx", seed=2)}


@pytest.fixture()
def stack_profile(triton, monkeypatch) -> RemoteTriton:
    """RXREC_TRITON_URL names the session's server, RXREC_TRITON_REPO its repository; profile stack."""
    monkeypatch.setenv("RXREC_TRITON_URL", triton.url)
    monkeypatch.setenv("RXREC_TRITON_REPO", str(triton.repo))
    monkeypatch.setenv("RXREC_PROFILE", "stack")
    monkeypatch.delenv("RXREC_TRITON_GRPC_URL", raising=False)
    return RemoteTriton(triton.url)


@pytest.fixture(scope="module")
def deployed(triton, onnx_files) -> dict[int, Path]:
    """Versions 1 and 2 of MODEL in the server's repository (what deploy writes), unloaded after the module."""
    repo = triton.repo
    write_model_config(repo, MODEL, ModelMetadata(n_items=N_ITEMS, max_len=MAX_SEQ_LEN, top_k=TOP_K),
                       max_batch_size=16)
    folders = {v: write_version(repo, MODEL, onnx_files[v], metadata={"model_version": str(v)}) for v in (1, 2)}
    assert [f.name for f in folders.values()] == ["1", "2"]
    yield folders
    if triton.model_ready(MODEL):
        triton.unload(MODEL)


def _settings(*extra: str):
    return load_settings(overrides=[f"serve.model_name={MODEL}", "serve.max_batch_size=16", *extra])


def test_deploy_loads_the_new_version_into_the_profiles_triton(stack_profile, deployed, onnx_files):
    if stack_profile.model_ready(MODEL):
        stack_profile.unload(MODEL)
    first = load_deployed(_settings(), {MODEL: {"triton_version": 2, "new": True}})
    assert first["triton"] == stack_profile.url and first["triton_source"] == "RXREC_TRITON_URL"
    assert first["loaded"] == [MODEL] and first["reloaded_running_server"] is True
    assert first["served_versions"] == {MODEL: 2}
    ((ids, _),) = recommend([SESSION], url=stack_profile.url, model_name=MODEL)
    assert ids[0] == toy_top_item(onnx_files[2], SESSION), "the new version answers"
    again = load_deployed(_settings(), {MODEL: {"triton_version": 2, "new": False}})
    assert again["loaded"] == [] and again["served_versions"] == {MODEL: 2}, "nothing changed: nothing reloaded"


def test_deploy_fails_when_the_profiles_triton_does_not_serve_the_written_version(stack_profile, deployed):
    with pytest.raises(TritonModelLoadError) as caught:
        load_deployed(_settings(), {MODEL: {"triton_version": 7, "new": True}})
    message = str(caught.value)
    assert "\n" not in message and f"version 7 of '{MODEL}' is not ready after loading" in message
    assert "Triton serves versions [1, 2]" in message and "the previous versions keep serving" in message
    assert stack_profile.ready_versions(MODEL) == [1, 2]


def test_unreachable_profile_triton_is_one_line_naming_url_and_variable(monkeypatch, tmp_path, onnx_files):
    url = f"127.0.0.1:{find_free_port()}"
    monkeypatch.setenv("RXREC_TRITON_URL", url)
    monkeypatch.setenv("RXREC_PROFILE", "stack")
    p = Paths(tmp_path)
    expected = f"the Triton at {url} (RXREC_TRITON_URL, profile stack) is unreachable"
    for attempt in (lambda: load_deployed(_settings(), {MODEL: {"triton_version": 1, "new": True}}),
                    lambda: triton_latency(onnx_files[1], _settings(), p, 5, _sequences())):
        with pytest.raises(TritonUnreachable, match=re.escape(expected)) as caught:
            attempt()
        assert "\n" not in str(caught.value) and "point RXREC_TRITON_URL at a running Triton" in str(caught.value)
    assert not (tmp_path / "var" / "gate" / "triton").exists(), "no tritonserver of its own was started"

    monkeypatch.setenv("RXREC_PROFILE", "local")  # the local profile: deploy leaves it to `rxrec serve start`
    skipped = load_deployed(_settings(), {MODEL: {"triton_version": 1, "new": True}})
    assert skipped["reloaded_running_server"] is False and skipped["loaded"] == []


@pytest.fixture()
def checked_workdir(tmp_path, deployed) -> Paths:
    """What serve_check reads: deploy.json for version 2 of MODEL, the sequences and the catalogue."""
    p = Paths(tmp_path)
    save_sequences(_sequences(), p.features)
    p.validated.mkdir(parents=True)
    pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "name": [f"product {i}" for i in range(1, N_ITEMS + 1)]}
                 ).to_parquet(p.validated / CATALOGUE_FILE)
    p.reports.mkdir(parents=True)
    (p.reports / "deploy.json").write_text(json.dumps({
        "version_path": str(deployed[2]), "triton_version": 2, "model_version": "2",
        "models": {MODEL: {"version_path": str(deployed[2]), "triton_version": 2}}}))
    return p


def test_serve_check_asks_the_profiles_triton(stack_profile, checked_workdir):
    summary = check_served_model(_settings(), checked_workdir)
    assert summary["triton"] == stack_profile.url and summary["triton_source"] == "RXREC_TRITON_URL"
    assert summary["matches_onnx_runtime"] and summary["triton_version"] == 2 and summary["server_start_s"] == 0
    assert summary["model_load_s"] == 0, "the version deploy loaded answers: serve_check does not reload it"
    assert not (checked_workdir.var / "triton").exists(), "no tritonserver of its own was started"


def test_serve_check_on_a_remote_profile_never_starts_a_server(checked_workdir, monkeypatch):
    url = f"127.0.0.1:{find_free_port()}"
    monkeypatch.setenv("RXREC_TRITON_URL", url)
    monkeypatch.setenv("RXREC_PROFILE", "kubernetes")
    with pytest.raises(TritonUnreachable, match=re.escape(f"the Triton at {url} (RXREC_TRITON_URL, profile kubernetes) "
                                                          "is unreachable (ConnectionRefusedError")):
        check_served_model(_settings(), checked_workdir)
    assert not (checked_workdir.var / "triton").exists()


def test_cli_asks_the_profiles_triton(stack_profile, deployed, onnx_files, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    load_deployed(_settings(), {MODEL: {"triton_version": 2, "new": False}})
    answer = CliRunner().invoke(app, ["recommend", "--session", ",".join(map(str, SESSION)), "--model", MODEL])
    assert answer.exit_code == 0, answer.output
    assert f"  1. item {toy_top_item(onnx_files[2], SESSION)} " in answer.output
    monkeypatch.setenv("RXREC_TRITON_URL", "triton")
    bad = CliRunner().invoke(app, ["recommend", "--session", "1,2", "--model", MODEL])
    assert bad.exit_code == 1 and "RXREC_TRITON_URL='triton' is not host:port" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_serve_check_fails_when_the_profiles_triton_serves_another_version(stack_profile, checked_workdir):
    deploy_file = checked_workdir.reports / "deploy.json"
    deploy_file.write_text(deploy_file.read_text().replace('"triton_version": 2', '"triton_version": 3'))
    with pytest.raises(RuntimeError, match=f"serves {MODEL} version 2, deploy wrote version 3"):
        check_served_model(_settings(), checked_workdir)


def test_gate_measures_the_challenger_on_the_profiles_triton_and_unloads_it(stack_profile, triton, tmp_path,
                                                                           onnx_files, deployed):
    served_before = stack_profile.ready_versions(MODEL)
    log_start = triton.log_path.stat().st_size
    latency = triton_latency(onnx_files[1], _settings(), Paths(tmp_path), 8, _sequences())
    assert latency["requests"] == 8 and 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["max_ms"]
    candidate = MODEL + GATE_MODEL_SUFFIX

    unloaded = f"successfully unloaded '{candidate}'"
    assert triton.wait_for_log(unloaded, timeout_s=20, offset=log_start), triton.log_since(log_start)
    assert f"successfully loaded '{candidate}'" in triton.log_since(log_start), triton.log_since(log_start)
    assert not stack_profile.model_ready(candidate), "the challenger does not stay loaded"
    assert not (triton.repo / candidate).exists(), "nothing written to the served repository"
    assert stack_profile.ready_versions(MODEL) == served_before, "the served model is untouched"
    assert not (tmp_path / "var" / "gate" / "triton").exists(), "no tritonserver of its own was started"
