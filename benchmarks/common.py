"""What every benchmark report carries: where and how it was measured."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.config import PROJECT_ROOT

REPORTS = PROJECT_ROOT / "reports"


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_report(name: str, payload: dict[str, Any], markdown: str, out_dir: Path = REPORTS) -> Path:
    """reports/<name>.json (payload + machine + command) and reports/<name>.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "command": " ".join(["rxrec", *sys.argv[1:]]), "machine": machine(), **payload}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(body, indent=2, default=str))
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")
    return path
