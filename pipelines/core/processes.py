"""Is a process still there? One answer for everything that supervises processes by pid.

A zombie (exited, not yet reaped by its parent) counts as dead: it runs nothing and holds no port,
yet `kill(pid, 0)` still succeeds on it.
"""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state first), or None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether pid is a running process (ours or another user's); zombies count as dead."""
    if pid <= 0:
        return False  # 0 and negatives address process groups, not a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    fields = _stat_fields(pid)
    return fields is None or fields[0] != "Z"  # no /proc (not Linux): the signal's answer stands


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group `pgid` (Linux /proc; [] elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(int(stat.parent.name))
        if fields is not None and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members
