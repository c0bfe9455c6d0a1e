"""deploy writes all three models, `rxrec serve` runs them, a changed model is promoted into the live server."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.data.sequences import load_sequences
from pipelines.serve.triton_server import default_venv, find_free_port
from pipelines.stages import run_stage

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="Triton serving venv missing: run `make setup`"),
]


@pytest.mark.timeout(1200)  # may run the tiny pipeline of the session (trained_workdir) first
def test_deploy_serve_promote_and_check(trained_workdir, tmp_path, tiny_overrides, monkeypatch):
    root = tmp_path / "work"
    shutil.copytree(trained_workdir, root)
    monkeypatch.setenv("RXREC_WORKDIR", str(root))
    monkeypatch.delenv("RXREC_TRITON_REPO", raising=False)
    ports = [f"serve.{name}_port={find_free_port()}" for name in ("http", "grpc", "metrics")]
    overrides = [*tiny_overrides, *ports, "similar.method=prod2vec", "gate.latency_budget_ms=0"]
    run_stage("train_rules", overrides, workdir=root)
    run_stage("register", overrides, workdir=root)

    deployed = run_stage("deploy", overrides, workdir=root)
    models = deployed["models"]
    assert list(models) == ["gpt4rec", "similar_items", "recommend"]
    assert all(m["new"] and m["triton_version"] == 1 for m in models.values())
    assert models["similar_items"]["mode"] == "exact" and models["recommend"]["rules"] is True
    stored = load_sequences(root / "data" / "features").user_ids  # the champion's run stored a vector for each
    assert models["recommend"]["users"].startswith(f"{len(stored)} users, dim ")
    assert not any(m["new"] for m in run_stage("deploy", overrides, workdir=root)["models"].values())

    cli = CliRunner()
    sets = [arg for o in ports for arg in ("--set", o)]
    started = cli.invoke(app, ["serve", "start", *sets])
    try:
        assert started.exit_code == 0, started.output
        assert "models: gpt4rec, similar_items, recommend" in started.output
        status = cli.invoke(app, ["serve", "status", "--json"])
        states = {m["name"]: m["state"] for m in json.loads(status.output)["models"]}
        assert states == {"gpt4rec": "READY", "similar_items": "READY", "recommend": "READY"}

        # promotion: new popularity tables -> a new recommend folder, loaded into the running server
        run_stage("train_popularity", [*overrides, "popularity.window_days=3"], workdir=root)
        promoted = run_stage("deploy", overrides, workdir=root)
        assert promoted["models"]["recommend"]["new"] and promoted["models"]["recommend"]["triton_version"] == 2
        assert not promoted["models"]["gpt4rec"]["new"] and not promoted["models"]["similar_items"]["new"]
        assert promoted["loaded"] == ["recommend"] and promoted["load_errors"] == {}

        checked = run_stage("serve_check", overrides, workdir=root)  # attaches to the running server
        assert checked["matches_onnx_runtime"] and checked["similar_items"]["matches_onnx_runtime"]
        assert checked["recommend"]["cold_session"]["source"] == "popularity"

        http = next(o.split("=")[1] for o in ports if o.startswith("serve.http"))
        history = [h["item_id"] for h in checked["sessions"][0]["history"]]
        answer = cli.invoke(app, ["recommend", "--session", ",".join(map(str, history)), "--url", f"127.0.0.1:{http}"])
        assert answer.exit_code == 0 and "source: " in answer.output and " 1. item " in answer.output
        known = cli.invoke(app, ["recommend", "--session", "", "--user", str(stored[0]), "--url", f"127.0.0.1:{http}"])
        assert known.exit_code == 0 and " 1. item " in known.output, known.output
        assert "[history] picked for you from your history with us" in known.output
        stranger = cli.invoke(app, ["recommend", "--session", "", "--user", str(int(stored.max()) + 1),
                                    "--url", f"127.0.0.1:{http}"])
        assert stranger.exit_code == 1 and "has no stored vector" in stranger.output, stranger.output
        similar = cli.invoke(app, ["similar", "--item", str(history[-1]), "--url", f"127.0.0.1:{http}"])
        assert similar.exit_code == 0 and "cosine" in similar.output
        unknown = cli.invoke(app, ["similar", "--item", "999999", "--url", f"127.0.0.1:{http}"])
        assert unknown.exit_code == 1 and "is not an item id" in unknown.output
    finally:
        stopped = cli.invoke(app, ["serve", "stop"])
    assert stopped.exit_code == 0 and "stopped tritonserver" in stopped.output
    assert cli.invoke(app, ["serve", "status"]).exit_code == 3
