"""What every benchmark report carries: where and how it was measured."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core.config import PROJECT_ROOT
from pipelines.track.lineage import provenance, provenance_line

REPORTS = PROJECT_ROOT / "reports"
_STARTED: dict[str, Any] | None = None  # the code when this benchmark started (capture_start)


def _command() -> str:
    return " ".join(["rxrec", *sys.argv[1:]])


def capture_start() -> None:
    """Record the code a benchmark measures as it starts (`rxrec bench` calls this before any command):
    a report then names the commit it ran on, not whatever the tree holds when it finishes an hour later."""
    global _STARTED
    _STARTED = provenance(PROJECT_ROOT, _command())


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_report(name: str, payload: dict[str, Any], markdown: str, out_dir: Path = REPORTS) -> Path:
    """reports/<name>.json (payload + machine + command + code commit) and reports/<name>.md (ending in the same)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = _command()
    code = provenance(PROJECT_ROOT, command)
    if _STARTED is not None and _STARTED["git_commit"] != code["git_commit"]:
        # The tree changed while it ran: the figures belong to the start's code; say what it was at the end.
        code = {**_STARTED, "git_commit_at_write": code["git_commit"]}
    body = {"benchmark": name, "command": command, "code": code, "machine": machine(), **payload}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(body, indent=2, default=str))
    footer = f"{provenance_line(code)} Measured {body['machine']['measured_at']} on {body['machine']['platform']}, " \
             f"{body['machine']['cpu_count']} CPUs."
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n\n" + footer + "\n")
    return path


def load_dataset(dataset: str, settings: Any) -> tuple[str, Any, Any]:
    """(name, world tables, ground truth or None) for 'synthetic' or an S3-Rec file/folder.

    One loader for every benchmark, through the same adapter the pipeline ingests with, so a
    dataset is read identically wherever it is measured.
    """
    import typer

    if dataset == "synthetic":
        from pipelines.data.generate import generate_world
        from pipelines.data.ground_truth import GroundTruth

        world = generate_world(settings.data)
        return "synthetic", world, GroundTruth(world.ground_truth)
    from pipelines.data.adapters.s3rec import read_s3rec

    path = Path(dataset)
    path = path if path.is_absolute() else (Path.cwd() / path)
    if path.is_dir():
        candidates = sorted(path.glob("*.txt"))
        if len(candidates) != 1:
            raise typer.BadParameter(f"{path} must hold exactly one S3-Rec .txt file, found {len(candidates)}")
        path = candidates[0]
    if not path.is_file():
        raise typer.BadParameter(f"dataset {dataset!r} is neither 'synthetic' nor an existing S3-Rec file/folder")
    attributes = path.with_name(f"{path.stem}_item2attributes.json")
    world = read_s3rec(path, attributes if attributes.exists() else None, dataset=path.stem)
    return path.stem.lower(), world, None
