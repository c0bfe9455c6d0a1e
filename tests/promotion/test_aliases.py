"""Alias moves on a local SQLite registry: promote (by the gate or by hand), challenger, champion history,
the log of moves and rollback."""

from __future__ import annotations

import json

import pytest

from pipelines.promotion.aliases import (
    MANUAL_TAG,
    MOVES_MAX_CHARS,
    RollbackError,
    UnknownVersion,
    history,
    mark_challenger,
    moves,
    promote,
    promote_manually,
    rollback,
)
from pipelines.track.service import CHALLENGER, CHAMPION, MlflowService


@pytest.fixture()
def model(registry, request) -> str:
    """A registered model of its own per test, with versions 1..4."""
    name = request.node.name
    registry.client.create_registered_model(name)
    for _ in range(4):
        registry.client.create_model_version(name, source="file:///nowhere/model")
    return name


def _alias(registry: MlflowService, name: str, alias: str) -> str | None:
    found = registry.alias_version(name, alias)
    return str(found.version) if found is not None else None


def test_promote_moves_champion_records_history_and_drops_its_challenger_alias(registry, model):
    mark_challenger(registry, model, "1")
    promote(registry, model, "1")
    assert _alias(registry, model, CHAMPION) == "1" and _alias(registry, model, CHALLENGER) is None
    mark_challenger(registry, model, "2")
    mark_challenger(registry, model, "3")  # a newer challenger replaces the older one
    promote(registry, model, "2")
    assert _alias(registry, model, CHAMPION) == "2" and _alias(registry, model, CHALLENGER) == "3"
    assert history(registry, model) == ["1", "2"]
    promote(registry, model, "2")  # again: no duplicate in the history
    assert history(registry, model) == ["1", "2"]


def test_history_keeps_a_champion_set_outside_the_gate(registry, model):
    registry.set_alias(model, CHAMPION, "1")  # e.g. by hand in the MLflow UI: no history tag yet
    promote(registry, model, "3")
    assert history(registry, model) == ["1", "3"]


def test_rollback_walks_the_history_back_one_champion_at_a_time(registry, model):
    for version in ("1", "2", "3"):
        promote(registry, model, version)
    assert rollback(registry, model) == ("3", "2")
    assert _alias(registry, model, CHAMPION) == "2" and history(registry, model) == ["1", "2"]
    assert registry.get_version(model, "3").tags["rolled_back"] == "champion moved back to v2"
    assert rollback(registry, model) == ("2", "1")
    with pytest.raises(RollbackError, match="v1 is the first champion"):
        rollback(registry, model)
    assert _alias(registry, model, CHAMPION) == "1"
    promote(registry, model, "4")  # promoting after a rollback continues from the rolled-back state
    assert history(registry, model) == ["1", "4"] and rollback(registry, model) == ("4", "1")


def test_rollback_without_a_champion_says_so(registry, model):
    with pytest.raises(RollbackError, match="has no 'champion' alias"):
        rollback(registry, model)


def test_a_manual_promotion_keeps_its_reason_on_the_version_and_in_the_moves(registry, model):
    promote(registry, model, "1", by="gate", reason="promoted: challenger 0.3 > champion 0.2")
    assert promote_manually(registry, model, "3", "hotfix: v1 recommends a recalled product") == ("1", "3")
    assert _alias(registry, model, CHAMPION) == "3" and history(registry, model) == ["1", "3"]
    assert registry.get_version(model, "3").tags[MANUAL_TAG] == "hotfix: v1 recommends a recalled product"
    assert [(m["version"], m["by"]) for m in moves(registry, model)] == [("1", "gate"), ("3", "manual")]
    assert moves(registry, model)[-1]["reason"] == "hotfix: v1 recommends a recalled product"
    assert rollback(registry, model) == ("3", "1")  # a manual promotion is undone like any other
    assert moves(registry, model)[-1] == {**moves(registry, model)[-1], "version": "1", "by": "rollback",
                                          "reason": "rolled back from v3"}


def test_a_manual_promotion_by_alias_and_of_the_current_champion(registry, model):
    mark_challenger(registry, model, "2")
    assert promote_manually(registry, model, "challenger", "reviewed by hand") == (None, "2")
    assert _alias(registry, model, CHALLENGER) is None  # the promoted challenger is no longer one
    assert promote_manually(registry, model, "2", "again") == ("2", "2")  # already champion: nothing changes
    assert len(moves(registry, model)) == 1 and registry.get_version(model, "2").tags[MANUAL_TAG] == "reviewed by hand"


@pytest.mark.parametrize(("target", "message"), [("9", "has no version 9"), ("nightly", "has no alias 'nightly'")])
def test_an_unknown_version_or_alias_names_the_registry_and_changes_nothing(registry, model, target, message):
    promote(registry, model, "1")
    before = (moves(registry, model), history(registry, model))
    with pytest.raises(UnknownVersion, match=message) as raised:
        promote_manually(registry, model, target, "why not")
    assert registry.tracking_uri in str(raised.value) and repr(model) in str(raised.value)
    assert _alias(registry, model, CHAMPION) == "1" and (moves(registry, model), history(registry, model)) == before


def test_a_manual_promotion_needs_a_reason(registry, model):
    with pytest.raises(ValueError, match="needs a reason"):
        promote_manually(registry, model, "2", "  ")
    assert _alias(registry, model, CHAMPION) is None


def test_the_moves_stay_under_the_registry_tag_limit(registry, model):
    for i in range(16):
        promote(registry, model, str(1 + i % 4), by="manual", reason="x" * 400)
    logged = moves(registry, model)
    assert 1 < len(logged) < 16 and len(json.dumps(logged)) <= MOVES_MAX_CHARS
    assert logged[-1]["version"] == "4" and len(logged[-1]["reason"]) == 300
