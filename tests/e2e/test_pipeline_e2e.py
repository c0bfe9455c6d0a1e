"""The end of the chain on the real Triton server: register → deploy → serve_check."""

import json
import shutil

import pytest

from pipelines.serve.triton_server import default_venv, find_free_port
from pipelines.stages import run_stage

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                    reason="Triton serving venv missing: run `make setup`")
@pytest.mark.timeout(1200)  # may run the tiny pipeline of the session (trained_workdir) first
def test_registered_champion_is_served_by_triton_and_matches_onnx(trained_workdir, tmp_path, tiny_overrides):
    root = tmp_path / "work"
    shutil.copytree(trained_workdir, root)
    ports = [f"serve.http_port={find_free_port()}", f"serve.grpc_port={find_free_port()}",
             f"serve.metrics_port={find_free_port()}"]
    overrides = tiny_overrides + ports + ["serve.recommend_instances=3", "serve.recommend_queue_delay_us=700"]
    run_stage("register", overrides, workdir=root)
    deployed = run_stage("deploy", overrides, workdir=root)
    version_dir = root / "triton_repo" / "gpt4rec" / "1"
    # recommend gets its own instance count and batcher wait (params.yaml serve.recommend_*)
    recommend_config = (root / "triton_repo" / "recommend" / "config.pbtxt").read_text()
    assert "count: 3" in recommend_config and "max_queue_delay_microseconds: 700" in recommend_config
    # by default recommend scores with its own copy of the champion's model (no BLS hop into gpt4rec)
    assert 'key: "gpt4rec_scoring" value: { string_value: "in_process" }' in recommend_config
    scorer = root / "triton_repo" / "recommend" / "1" / "gpt4rec.onnx"
    assert scorer.read_bytes() == (root / "triton_repo" / "gpt4rec" / "1" / "model.onnx").read_bytes()
    assert "count: 1" in (root / "triton_repo" / "gpt4rec" / "config.pbtxt").read_text()
    assert deployed["new"] and (version_dir / "model.onnx").exists() and (version_dir / "model.py").exists()
    lineage = json.loads((version_dir / "lineage.json").read_text())["metadata"]
    assert lineage["model_version"] == "1" and lineage["run_id"] and lineage["git_commit"]
    # deploying the same champion again writes nothing new
    assert not run_stage("deploy", overrides, workdir=root)["new"]
    served = run_stage("serve_check", overrides, workdir=root)
    assert served["matches_onnx_runtime"] is True
    assert len(served["sessions"]) == 3
    assert all(len(s["recommended"]) == 10 and s["recommended"][0]["name"] != "?" for s in served["sessions"])
