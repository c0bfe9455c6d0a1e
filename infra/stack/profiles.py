"""The deployment profiles (local, stack, kubernetes): infra/profiles/<name>.env, read in one place.

A profile is the environment the services and the DAG tasks run with: which executor, which metadata
DB, where MLflow and its artifacts live, which DVC remote, where Triton's model repository is. It is
plain `KEY=VALUE` lines (what docker compose's env_file and a ConfigMap hold too); `${NAME}` is filled in
from the variables the launcher passes (ports chosen at start, the work directory). Secrets never appear:
`RXREC_SECRETS` lists the environment variables that carry them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
PROFILES = ("local", "stack", "kubernetes")
SECRETS_KEY = "RXREC_SECRETS"
_LINE = re.compile(r"^(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and line."""


def profile_path(name: str) -> Path:
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; profiles are: {', '.join(PROFILES)}")
    return PROFILES_DIR / f"{name}.env"


def read_profile(name: str) -> dict[str, str]:
    """The raw KEY=VALUE pairs of a profile, placeholders left as written."""
    path = profile_path(name)
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ProfileError(f"{path}:{number}: expected KEY=VALUE (upper-case key), got {line!r}")
        if match["key"] in out:
            raise ProfileError(f"{path}:{number}: {match['key']} is set twice")
        out[match["key"]] = match["value"]
    return out


def placeholders(values: Mapping[str, str]) -> set[str]:
    """The ${NAME} variables a profile needs filled in."""
    return {name for value in values.values() for name in _PLACEHOLDER.findall(value)}


def load_profile(name: str, variables: Mapping[str, str | int]) -> dict[str, str]:
    """The profile with every ${NAME} filled in from `variables`; ProfileError names what is missing."""
    raw = read_profile(name)
    missing = sorted(placeholders(raw) - set(variables))
    if missing:
        raise ProfileError(f"profile {name!r} ({profile_path(name)}) needs values for: {', '.join(missing)}")
    return {key: _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value) for key, value in raw.items()}


def secret_names(values: Mapping[str, str]) -> list[str]:
    """The environment variables that must carry this profile's secrets."""
    return [n for n in values.get(SECRETS_KEY, "").split(",") if n]
