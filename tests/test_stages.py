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


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_output_is_replaced_whole_or_not_at_all(tmp_path):
    import pytest

    from pipelines.core.files import published_dir

    out = tmp_path / "features"
    out.mkdir()
    (out / "meta.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), published_dir(out) as staging:
        (staging / "meta.json").write_text("half")
        raise RuntimeError("disk full")
    assert _tree(out) == {"meta.json": "old"} and [p.name for p in tmp_path.iterdir()] == ["features"]
    with published_dir(out) as staging:
        (staging / "sequences.parquet").write_text("new")
    assert _tree(out) == {"sequences.parquet": "new"}  # nothing of the old output mixed in
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


def test_a_kill_between_the_renames_is_repaired_by_the_next_attempt(tmp_path):
    from pipelines.core.files import published_dir

    out = tmp_path / "raw"
    backup = tmp_path / ".raw.old-123"  # killed after moving the old output aside, before the new one went in
    backup.mkdir()
    (backup / "events.parquet").write_text("old")
    (tmp_path / ".raw.staging-123").mkdir()  # and the complete-or-not staging folder of that attempt
    with published_dir(out) as staging:
        assert _tree(out) == {"events.parquet": "old"}  # readers see the old output again meanwhile
        (staging / "events.parquet").write_text("new")
    assert _tree(out) == {"events.parquet": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
