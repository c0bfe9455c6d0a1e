"""The run key that groups one pipeline run's stages, and where the DVC remote keeps the training data."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.track.live import current_run_key, dvc_remote_path, dvc_remote_url


def test_the_run_key_is_airflows_then_rxrec_run_id_then_this_invocations(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    monkeypatch.delenv("RXREC_RUN_ID", raising=False)
    local = current_run_key()
    assert local.startswith("local-") and current_run_key() == local  # stable within one invocation
    monkeypatch.setenv("RXREC_RUN_ID", "nightly-42")
    assert current_run_key() == "nightly-42"
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-12-02")
    assert current_run_key() == "manual__2026-12-02"


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("RXREC_DVC_REMOTE", raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = local\n['remote \"local\"']\n    url = ../var/dvc-remote\n"
        "['remote \"s3\"']\n    url = s3://rxrec-dvc/dvcstore\n")
    return tmp_path


def test_the_remote_is_the_default_or_the_named_one_relative_to_dot_dvc(project, monkeypatch):
    assert dvc_remote_url(project) == str((project / "var" / "dvc-remote").resolve())
    monkeypatch.setenv("RXREC_DVC_REMOTE", "s3")
    assert dvc_remote_url(project) == "s3://rxrec-dvc/dvcstore"


def test_the_remote_path_of_an_output_follows_its_dvc_lock_hash(project, monkeypatch):
    monkeypatch.setenv("RXREC_DVC_REMOTE", "s3")
    assert dvc_remote_path(project, "data/features") == "s3://rxrec-dvc/dvcstore"  # not run under DVC yet
    (project / "dvc.lock").write_text("stages:\n  sequences:\n    outs:\n    - path: data/features\n"
                                      "      md5: 0123456789abcdef.dir\n")
    assert dvc_remote_path(project, "data/features") == "s3://rxrec-dvc/dvcstore/files/md5/01/23456789abcdef.dir"
