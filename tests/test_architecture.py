"""Folders are the dependency rule: the import-linter contracts of pyproject.toml hold on the tree, and they
do catch an import that runs upward (so a green `make lint` means something)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.config import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the packages under `root` (first on the path, ahead of the installed tree)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_tree_keeps_every_contract():
    done = _lint_imports(PROJECT_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "statement", "reported"), [
    ("pipelines/core/retry.py", "from pipelines.stages import run_stage", "pipelines.core.retry -> pipelines.stages"),
    ("pipelines/data/schema.py", "from pipelines.track import lineage", "pipelines.data.schema -> pipelines.track"),
    ("pipelines/graph/walks.py", "from pipelines.validate import gate", "pipelines.graph.walks -> pipelines.validate"),
    ("pipelines/serve/client.py", "import benchmarks.load", "pipelines.serve.client -> benchmarks.load"),
], ids=["core-imports-stages", "data-imports-track", "sibling-imports-sibling", "library-imports-benchmarks"])
def test_an_upward_import_breaks_a_contract(tmp_path, module, statement, reported):
    for package in ("pipelines", "benchmarks"):
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{statement}  # deliberately upward\n")
    done = _lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and reported in done.stdout, done.stdout
