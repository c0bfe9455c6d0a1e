"""`rxrec promote`: a manual promotion with its reason, a rollback, and bad input that changes nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.core.config import load_settings
from pipelines.core.retry import RetryPolicy
from pipelines.promotion.aliases import MANUAL_TAG, history, moves, promote
from pipelines.track.service import CHAMPION, MlflowService


@pytest.fixture()
def store(tmp_path) -> tuple[MlflowService, str, list[str]]:
    """A registry with versions 1..3 of the configured model, v1 champion; the CLI's --set options for it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowService(uri, "rxrec", tmp_path / "mlartifacts", RetryPolicy(attempts=1))
    name = load_settings().mlflow.registered_model
    registry.client.create_registered_model(name)
    for _ in range(3):
        registry.client.create_model_version(name, source="file:///nowhere/model")
    promote(registry, name, "1")
    return registry, name, ["--no-deploy", "--set", f"mlflow.tracking_uri={uri}"]


def _champion(registry: MlflowService, name: str) -> str:
    return str(registry.alias_version(name, CHAMPION).version)


def _state(registry: MlflowService, name: str) -> tuple:
    return _champion(registry, name), history(registry, name), moves(registry, name)


def test_promote_a_version_by_hand_with_its_reason(store):
    registry, name, options = store
    out = CliRunner().invoke(app, ["promote", "--version", "3", "--reason", "hotfix: recalled product", *options])
    assert out.exit_code == 0, out.output
    assert f"champion of {name}: v1 → v3" in out.output and registry.tracking_uri in out.output
    assert _champion(registry, name) == "3" and history(registry, name) == ["1", "3"]
    assert registry.get_version(name, "3").tags[MANUAL_TAG] == "hotfix: recalled product"
    assert moves(registry, name)[-1]["by"] == "manual"

    out = CliRunner().invoke(app, ["promote", "--rollback", *options])
    assert out.exit_code == 0, out.output
    assert "v3 → v1" in out.output and _champion(registry, name) == "1"


def test_promoting_the_champion_again_changes_nothing(store):
    registry, name, options = store
    before = _state(registry, name)
    out = CliRunner().invoke(app, ["promote", "--version", "1", "--reason", "again", *options])
    assert out.exit_code == 0 and "already the champion: nothing changed" in out.output
    assert _state(registry, name) == before


@pytest.mark.parametrize(("args", "message"), [
    (["--version", "7", "--reason", "why"], "has no version 7"),
    (["--version", "nightly", "--reason", "why"], "has no alias 'nightly'"),
    (["--version", "2"], "needs --reason"),
    (["--version", "2", "--reason", "why", "--rollback"], "say what to do"),
    ([], "say what to do"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(store, args, message):
    registry, name, options = store
    before = _state(registry, name)
    out = CliRunner().invoke(app, ["promote", *args, *options])
    assert out.exit_code == 1 and message in out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if args[:1] == ["--version"] and "--reason" in args and "--rollback" not in args:
        assert registry.tracking_uri in lines[0]  # where: the registry it looked in
    assert _state(registry, name) == before
