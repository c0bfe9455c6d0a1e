"""Write a Triton model repository: one config.pbtxt per model and numbered version folders.

Layout written here (what Triton's explicit model control loads)::

    repo/<model_name>/config.pbtxt
    repo/<model_name>/<version>/model.onnx      the exported model (top-k inside the graph)
    repo/<model_name>/<version>/model.py        Python-backend wrapper (pipelines/serve/backend/model.py)
    repo/<model_name>/<version>/rxrec_backend.py    what every rxrec backend imports (beside each model.py)
    repo/<model_name>/<version>/lineage.json    MLflow run, git commit, DVC data hash, ...

Version folders are created atomically (built in a hidden temp folder inside the model folder,
then renamed) so a running Triton never sees a half-written version, and an existing version is
never overwritten: what was served once stays traceable. A write killed half-way leaves only its
temp folder (named with the writer's pid); the next write removes it once that pid is gone.

Pure functions of the filesystem; no Triton or MLflow import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core.contract import EVENT_TYPES_NAME, INPUT_NAME, OUTPUT_IDS, OUTPUT_SCORES, ModelMetadata
from pipelines.core.files import atomic_write_text
from pipelines.core.processes import pid_alive

BACKEND_DIR = Path(__file__).resolve().parents[1] / "serve" / "backend"
#: The Python-backend model copied beside each model.onnx.
BACKEND_MODEL_PY = BACKEND_DIR / "model.py"
#: Names and helpers shared by every backend: copied beside each model.py (the stub's sys.path holds
#: the version folder), so a version carries the helpers it was written with.
BACKEND_COMMON_PY = BACKEND_DIR / "rxrec_backend.py"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TMP_PREFIX = ".tmp-version-"
#: A temp folder without a writer pid in its name (older writers) counts as abandoned after this long.
STALE_TMP_AGE_S = 15 * 60


def tmp_prefix() -> str:
    """Prefix of this process's temp version folders: the pid tells a live write from an abandoned one."""
    return f"{_TMP_PREFIX}{os.getpid()}-"


def tmp_writer_pid(folder: Path) -> int | None:
    """The pid of the process that created a temp version folder, or None if its name does not say."""
    rest = Path(folder).name.removeprefix(_TMP_PREFIX)
    head = rest.split("-", 1)[0]
    return int(head) if rest != Path(folder).name and head.isdigit() and "-" in rest else None


def abandoned_tmp_folders(model_dir: Path, *, now: float | None = None) -> list[Path]:
    """Temp version folders left by a write that was killed half-way (its writer is gone).

    They were never renamed to a number, so Triton never saw them; they only take disk space. A
    folder whose writer pid is alive is a write in progress and is not listed.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    now = time.time() if now is None else now
    out = []
    for folder in sorted(model_dir.glob(_TMP_PREFIX + "*")):
        pid = tmp_writer_pid(folder)
        if pid is not None:
            if pid != os.getpid() and not pid_alive(pid):
                out.append(folder)
        elif now - folder.stat().st_mtime > STALE_TMP_AGE_S:
            out.append(folder)
    return out


def remove_abandoned_tmp(model_dir: Path) -> list[Path]:
    """Delete abandoned temp version folders (see abandoned_tmp_folders); return what was removed."""
    removed = abandoned_tmp_folders(model_dir)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _check_name(model_name: str) -> None:
    """Model names become folder names and URL path segments: keep them plain."""
    if not _NAME_RE.match(model_name):
        raise ValueError(f"invalid model name {model_name!r}: use letters, digits, '_', '.', '-'")


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def write_config(
    repo: Path,
    model_name: str,
    *,
    max_batch_size: int,
    top_k: int,
    n_items: int,
    instance_count: int = 1,
    intra_op_threads: int = 1,
    max_queue_delay_us: int = 1000,
    max_seq_len: int | None = None,
    preferred_batch_sizes: tuple[int, ...] = (),
    event_kinds: int = 0,
) -> Path:
    """Write repo/model_name/config.pbtxt for the Python backend and return its path.

    The parameters block carries what the backend needs at load time: ``n_items`` (ids above it
    are rejected; a model whose ONNX metadata has ``n_items`` overrides it per version),
    ``top_k``, ``intra_op_num_threads`` for onnxruntime and optionally ``max_seq_len``.
    ``event_kinds`` > 0 (a model trained with event kinds) adds the optional input ``event_types``.
    """
    _check_name(model_name)
    for name, value in [
        ("max_batch_size", max_batch_size),
        ("top_k", top_k),
        ("n_items", n_items),
        ("instance_count", instance_count),
        ("intra_op_threads", intra_op_threads),
    ]:
        _positive(name, value)
    if max_seq_len is not None:
        _positive("max_seq_len", max_seq_len)
    if isinstance(event_kinds, bool) or not isinstance(event_kinds, int) or event_kinds < 0:
        raise ValueError(f"event_kinds must be a non-negative integer (0: no event_types input), got {event_kinds!r}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    for size in preferred_batch_sizes:
        _positive("preferred_batch_sizes item", size)
        if size > max_batch_size:
            raise ValueError(f"preferred batch size {size} is above max_batch_size={max_batch_size}")
    preferred = (
        f"\n  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]" if preferred_batch_sizes else ""
    )

    params = {
        "n_items": n_items,
        "top_k": top_k,
        "intra_op_num_threads": intra_op_threads,
    }
    if max_seq_len is not None:
        params["max_seq_len"] = max_seq_len
    kinds_input = ""
    if event_kinds:
        params["event_kinds"] = event_kinds
        kinds_input = f""",
  {{
    name: "{EVENT_TYPES_NAME}"
    data_type: TYPE_INT64
    dims: [ -1 ]
    optional: true
  }}"""
    param_lines = "\n".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    text = f"""# Written by pipelines/repository/versions.py; regenerate rather than edit by hand.
name: "{model_name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }}{kinds_input}
]
output [
  {{
    name: "{OUTPUT_IDS}"
    data_type: TYPE_INT64
    dims: [ {top_k} ]
  }},
  {{
    name: "{OUTPUT_SCORES}"
    data_type: TYPE_FP32
    dims: [ {top_k} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}{preferred}
}}
instance_group [
  {{
    count: {instance_count}
    kind: KIND_CPU
  }}
]
version_policy: {{ latest: {{ num_versions: 2 }} }}
{param_lines}
"""
    model_dir = Path(repo) / model_name
    path = model_dir / "config.pbtxt"
    atomic_write_text(path, text)
    return path


def write_model_config(
    repo: Path,
    model_name: str,
    metadata: ModelMetadata,
    *,
    max_batch_size: int,
    instance_count: int = 1,
    intra_op_threads: int = 1,
    max_queue_delay_us: int = 1000,
    preferred_batch_sizes: tuple[int, ...] = (),
) -> Path:
    """config.pbtxt of a served model: its shape facts from its ONNX metadata, the rest from serve settings.

    Every deploy path writes the config through here, so top_k, n_items, max_seq_len and event
    kinds (the optional event_types input) always match the model.onnx beside it.
    """
    return write_config(repo, model_name, max_batch_size=max_batch_size, top_k=metadata.top_k,
                        n_items=metadata.n_items, max_seq_len=metadata.max_len, event_kinds=metadata.event_kinds,
                        instance_count=instance_count, intra_op_threads=intra_op_threads,
                        max_queue_delay_us=max_queue_delay_us, preferred_batch_sizes=preferred_batch_sizes)


def list_versions(repo: Path, model_name: str) -> list[int]:
    """Version numbers present in repo/model_name, ascending (numeric folder names only)."""
    model_dir = Path(repo) / model_name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repo: Path, model_name: str) -> int:
    """The number the next version folder gets: one above the highest existing one (first is 1)."""
    versions = list_versions(repo, model_name)
    return versions[-1] + 1 if versions else 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_version(repo: Path, model_name: str, onnx_path: Path, *, metadata: dict[str, Any]) -> Path:
    """Add a new version folder holding model.onnx, model.py, rxrec_backend.py and lineage.json; return its path.

    The folder is assembled under a hidden temp name in the model folder (same filesystem) and
    renamed into place, so it appears complete or not at all. Existing versions are never
    touched: if another writer takes the number first, the next free number is used.
    ``metadata`` (JSON-serialisable: MLflow run id, git commit, DVC hash, ...) goes to lineage.json.
    """
    _check_name(model_name)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    for source in (BACKEND_MODEL_PY, BACKEND_COMMON_PY):
        if not source.is_file():
            raise FileNotFoundError(f"backend file not found: {source}")
    json.dumps(metadata)  # fail before writing anything if metadata is not serialisable

    def fill(folder: Path) -> dict[str, Any]:
        shutil.copyfile(onnx_path, folder / "model.onnx")
        shutil.copyfile(BACKEND_MODEL_PY, folder / "model.py")
        shutil.copyfile(BACKEND_COMMON_PY, folder / BACKEND_COMMON_PY.name)
        return {"onnx_sha256": sha256_file(folder / "model.onnx"), "source_onnx": str(onnx_path.resolve()),
                "files": {name: sha256_file(folder / name) for name in ("model.py", BACKEND_COMMON_PY.name)},
                "metadata": metadata}

    return publish_version(repo, model_name, fill)


def publish_version(repo: Path, model_name: str, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a version folder under a hidden temp name, then rename it to the next free number.

    `fill(folder)` writes the files and returns the lineage facts; lineage.json gets them plus
    model_name, version and created_at. The folder appears complete or not at all, and existing
    versions are never touched: if another writer takes the number first, the next one is used.
    Temp folders a killed writer left behind are removed first (`remove_abandoned_tmp`).
    """
    model_dir = Path(repo) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_tmp(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(), dir=model_dir))
    try:
        facts = fill(tmp)
        for _ in range(100):
            version = next_version(repo, model_name)
            lineage = {"model_name": model_name, "version": version,
                       "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **facts}
            (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
            target = model_dir / str(version)
            if target.exists():  # taken between next_version and here: try the next number
                continue
            try:
                os.rename(tmp, target)  # fails on a non-empty existing target: never overwrites
            except OSError:
                if target.exists():
                    continue
                raise
            target.chmod(0o755)  # mkdtemp creates it 0700
            return target
        raise RuntimeError(f"could not allocate a new version folder in {model_dir}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
