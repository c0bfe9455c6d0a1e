"""The registry's aliases: `challenger` is the newest registered model, `champion` the one served.

The registered model keeps the list of past champions in a tag, oldest first, which is what
`rollback` walks back, and a log of every move of `champion` (who moved it: the gate, a person with
`rxrec promote --version`, or a rollback; and why). Each registry call retries on its own (the
service's policy), so a retried step never repeats one that already succeeded.
"""

from __future__ import annotations

import json
import time

from pipelines.core.retry import is_transient
from pipelines.track.service import CHALLENGER, CHAMPION, MlflowService

HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of versions that were champion, oldest first
MOVES_TAG = "champion_moves"  # registered-model tag: JSON list of {version, by, reason, at}, oldest first
MANUAL_TAG = "promoted_manually"  # model-version tag: the reason a person gave for making it champion
MOVES_MAX_CHARS = 4500  # registry tag values are bounded (5000 on some stores): the oldest moves drop out
REASON_MAX_CHARS = 300


class RollbackError(RuntimeError):
    """There is no earlier champion to go back to."""


class UnknownVersion(LookupError):
    """The registry has no such version or alias of the model."""


def history(service: MlflowService, model_name: str) -> list[str]:
    """Versions that were champion, oldest first."""
    raw = service.model_tag(model_name, HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


def mark_challenger(service: MlflowService, model_name: str, version: str) -> None:
    service.set_alias(model_name, CHALLENGER, version)


def moves(service: MlflowService, model_name: str) -> list[dict[str, str]]:
    """Every recorded move of `champion`, oldest first: version, by (gate, manual, rollback), reason, at (UTC)."""
    raw = service.model_tag(model_name, MOVES_TAG)
    return list(json.loads(raw)) if raw else []


def _record_move(service: MlflowService, model_name: str, version: str, by: str, reason: str) -> None:
    logged = moves(service, model_name) + [{"version": version, "by": by, "reason": reason[:REASON_MAX_CHARS],
                                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    while len(logged) > 1 and len(json.dumps(logged)) > MOVES_MAX_CHARS:
        logged.pop(0)
    service.set_model_tag(model_name, MOVES_TAG, json.dumps(logged))


def resolve(service: MlflowService, model_name: str, version_or_alias: str) -> str:
    """The version number a version number or an alias names; UnknownVersion (naming the registry) if none."""
    from mlflow.exceptions import MlflowException

    where = f"registered model {model_name!r} in {service.tracking_uri}"
    text = version_or_alias.strip()
    if not text.isdigit():
        found = service.alias_version(model_name, text)
        if found is None:
            raise UnknownVersion(f"{where} has no alias {text!r} (and it is not a version number)")
        return str(found.version)
    try:
        return str(service.get_version(model_name, text).version)
    except MlflowException as exc:
        if is_transient(exc):
            raise
        raise UnknownVersion(f"{where} has no version {text}") from exc


def promote(service: MlflowService, model_name: str, version: str, *, by: str = "gate", reason: str = "") -> None:
    """Move `champion` to `version`, drop its `challenger` alias, remember it in the champion history."""
    past = history(service, model_name)
    current = service.alias_version(model_name, CHAMPION)
    if current is not None and (not past or past[-1] != str(current.version)):
        past.append(str(current.version))
    service.set_alias(model_name, CHAMPION, version)
    if not past or past[-1] != version:
        past.append(version)
    service.set_model_tag(model_name, HISTORY_TAG, json.dumps(past))
    _record_move(service, model_name, version, by, reason)
    challenger = service.alias_version(model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        service.delete_alias(model_name, CHALLENGER)


def promote_manually(service: MlflowService, model_name: str, version_or_alias: str,
                     reason: str) -> tuple[str | None, str]:
    """A person makes a registered version champion; returns (previous champion or None, new champion).

    The reason is kept as the version's `promoted_manually` tag and in the champion moves. An
    unknown version or alias raises UnknownVersion before anything changes; the current champion
    again changes nothing.
    """
    if not reason.strip():
        raise ValueError("a manual promotion needs a reason (--reason \"...\"); it is kept in the registry")
    version = resolve(service, model_name, version_or_alias)
    current = service.alias_version(model_name, CHAMPION)
    previous = str(current.version) if current is not None else None
    if previous == version:
        return previous, version
    service.tag_version(model_name, version, MANUAL_TAG, reason)
    promote(service, model_name, version, by="manual", reason=reason)
    return previous, version


def rollback(service: MlflowService, model_name: str) -> tuple[str, str]:
    """Move `champion` back to the previous champion; returns (from_version, to_version)."""
    current = service.alias_version(model_name, CHAMPION)
    if current is None:
        raise RollbackError(f"model {model_name!r} has no {CHAMPION!r} alias: nothing to roll back")
    past = history(service, model_name)
    if past and past[-1] == str(current.version):
        past.pop()
    if not past:
        raise RollbackError(f"model {model_name!r}: v{current.version} is the first champion, "
                            "there is no previous one to roll back to")
    target = past[-1]
    service.set_alias(model_name, CHAMPION, target)
    service.set_model_tag(model_name, HISTORY_TAG, json.dumps(past))
    service.tag_version(model_name, str(current.version), "rolled_back", f"champion moved back to v{target}")
    _record_move(service, model_name, target, "rollback", f"rolled back from v{current.version}")
    return str(current.version), target
