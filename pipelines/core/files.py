"""Atomic writes of files and whole folders: a reader (Triton polling its repository, a retried task) sees the
old content or the new one, never half of it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) as the new content of `path`, replaced atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace a file atomically (tmp file in the same folder + rename); never half of one on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """`payload` as indented JSON, written atomically (a task killed mid-write leaves the previous file)."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


# --------------------------------------------------------------------------- whole folders


def _staging_dir(path: Path) -> Path:
    """An empty sibling folder to write a stage output into before `_swap_in` makes it the output."""
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    for old in path.parent.glob(f".{path.name}.staging-*"):  # left by a killed attempt
        shutil.rmtree(old, ignore_errors=True)
    backups = sorted(path.parent.glob(f".{path.name}.old-*"))
    if backups and not path.exists():  # killed between the two renames of `_swap_in`: put the old output back
        os.replace(backups[-1], path)
    staging.mkdir(parents=True)
    return staging


def _swap_in(staging: Path, path: Path) -> None:
    """Replace the folder `path` by the complete `staging` folder with renames only.

    A kill at any point leaves either the old complete output or the new one at `path` (at worst, between
    the two renames, the old one under `.<name>.old-*`, which the next attempt puts back), never a
    half-written file.
    """
    backup = path.with_name(f".{path.name}.old-{os.getpid()}")
    for old in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, backup)
    os.replace(staging, path)
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def published_dir(path: Path) -> Iterator[Path]:
    """A stage output folder written in a staging sibling and swapped in whole only once complete.

    An error or a kill mid-write leaves the previous output untouched (the staging folder is removed on an
    error, by the next attempt after a kill), so a retried task never reads a half-written input.
    """
    staging = _staging_dir(path)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, path)


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it first (see dvc.yaml)")
    return json.loads(path.read_text())


def fresh_dir(path: Path) -> Path:
    """An emptied scratch folder (downloads); stage outputs go through `published_dir` instead."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def file_md5(path: Path) -> str:
    """md5 of a file's bytes, read in 1 MiB chunks (the hash DVC records for a file, and an input's version)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
