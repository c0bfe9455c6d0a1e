"""Rolling gpt4rec back when recommend scores with its own copy of gpt4rec's model (serve.recommend_scoring:
in_process): the entry point users call must not keep serving the model that was rolled back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import Paths
from pipelines.repository.check import check_repository, rollback, scorer_pairing, snapshot
from pipelines.repository.models import SCORER_FILE, FallbackTables, write_recommend_version
from pipelines.repository.versions import list_versions, sha256_file, write_config, write_version


def _tables() -> FallbackTables:
    return FallbackTables(popularity=np.arange(6, dtype=np.float32), interactions=np.ones(6, np.int64),
                          catalogue=np.ones(6, bool), rules=None)


def _deploy(repo: Path, onnx: Path, *, in_process: bool = True) -> None:
    """What deploy writes for one champion: gpt4rec's version, then recommend's (with its copy of the model)."""
    write_version(repo, "gpt4rec", onnx, metadata={})
    written = list_versions(repo, "gpt4rec")[-1]
    scorer = repo / "gpt4rec" / str(written) / "model.onnx" if in_process else None
    write_recommend_version(repo, _tables(), metadata={}, scorer=scorer)


def _models(tmp_path: Path, *contents: bytes) -> list[Path]:
    paths = []
    for i, content in enumerate(contents):
        path = tmp_path / f"model{i}.onnx"
        path.write_bytes(content)  # the rollback only copies and compares files
        paths.append(path)
    return paths


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "work" / "triton_repo"
    write_config(repo, "gpt4rec", max_batch_size=4, top_k=2, n_items=5)
    return repo


def _scorer_of_newest_recommend(repo: Path) -> str:
    return sha256_file(repo / "recommend" / str(list_versions(repo, "recommend")[-1]) / SCORER_FILE)


def test_rolling_gpt4rec_back_finds_the_recommend_version_that_scores_with_the_restored_model(repo, tmp_path) -> None:
    good, bad = _models(tmp_path, b"champion A", b"champion B, a bad one")
    _deploy(repo, good)
    _deploy(repo, bad)
    assert scorer_pairing(repo, "gpt4rec", None) == ("recommend", 1)
    assert scorer_pairing(repo, "gpt4rec", 1) == ("recommend", 1)
    rollback(repo, "gpt4rec")
    rollback(repo, "recommend", to_version=1)
    assert _scorer_of_newest_recommend(repo) == sha256_file(good) == sha256_file(repo / "gpt4rec" / "3" / "model.onnx")
    assert check_repository(repo).ok


def test_no_pairing_when_recommend_calls_gpt4rec_or_scores_with_another_model(repo, tmp_path) -> None:
    first, second, third = _models(tmp_path, b"A", b"B", b"C")
    _deploy(repo, first, in_process=False)
    _deploy(repo, second, in_process=False)
    assert scorer_pairing(repo, "gpt4rec", None) is None  # bls: recommend follows whatever gpt4rec serves
    write_version(repo, "gpt4rec", third, metadata={})  # gpt4rec moved on without recommend
    write_recommend_version(repo, _tables(), metadata={}, scorer=second)
    assert scorer_pairing(repo, "gpt4rec", None) is None, "recommend's copy is not of gpt4rec's newest version"


def test_a_rollback_recommend_cannot_follow_is_refused_before_anything_is_written(repo, tmp_path) -> None:
    old, new = _models(tmp_path, b"an old champion recommend never scored with", b"the newest")
    write_version(repo, "gpt4rec", old, metadata={})
    _deploy(repo, new)
    before = snapshot(repo)
    with pytest.raises(ValueError, match="none of its versions \\[1\\] holds version 1's: nothing was rolled back"):
        scorer_pairing(repo, "gpt4rec", None)
    assert snapshot(repo) == before


def test_serve_rollback_rolls_both_back(repo, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.serve.triton_server import find_free_port

    good, bad = _models(tmp_path, b"champion A", b"champion B, a bad one")
    _deploy(repo, good)
    _deploy(repo, bad)
    assert Paths(tmp_path / "work").triton_repo == repo
    monkeypatch.setenv("RXREC_WORKDIR", str(tmp_path / "work"))
    out = CliRunner().invoke(app, ["serve", "rollback", "--reason", "bad champion",
                                   "--set", f"serve.http_port={find_free_port()}"])
    assert out.exit_code == 0, out.output
    assert "gpt4rec: version 2 rolled back" in out.output and "recommend: version 2 rolled back" in out.output
    assert "no Triton running" in out.output
    assert _scorer_of_newest_recommend(repo) == sha256_file(good)
    assert list_versions(repo, "recommend") == [1, 2, 3] and list_versions(repo, "gpt4rec") == [1, 2, 3]
