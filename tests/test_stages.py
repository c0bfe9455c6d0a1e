"""The graph is written once: dvc.yaml, the stage functions and the CLI agree."""

import yaml

from pipelines.cli import PIPELINE
from pipelines.core.config import PROJECT_ROOT, Settings
from pipelines.stages import STAGES


def _dvc():
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_stages_are_the_library_stages_in_order():
    assert list(_dvc()) == list(STAGES) == list(PIPELINE)  # same names, same order
    for name, stage in _dvc().items():
        assert stage["cmd"] == f"rxrec stage {name}"


def test_dvc_params_and_code_deps_exist():
    sections = set(Settings().model_dump(by_alias=True))
    for name, stage in _dvc().items():
        assert set(stage.get("params", [])) <= sections, name
        for dep in stage.get("deps", []):
            if dep.startswith("pipelines"):
                assert (PROJECT_ROOT / dep).exists(), f"{name}: {dep}"


def test_every_dep_is_produced_by_an_earlier_stage_or_is_code():
    produced: list[str] = []
    for name, stage in _dvc().items():
        for dep in stage.get("deps", []):
            if not dep.startswith("pipelines"):
                assert any(dep == out or dep.startswith(out + "/") for out in produced), f"{name}: {dep}"
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []):
                produced.append(out if isinstance(out, str) else next(iter(out)))

