"""One declaration per stage: dvc.yaml follows from it, and a stage that reads past it fails."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipelines.core.config import Paths, load_settings
from pipelines.stages import STAGES, run_stage
from pipelines.stages.declare import (
    DVC_YAML,
    DeclaredSettings,
    UndeclaredInput,
    declared_stages,
    render_dvc_yaml,
    watch_io,
)


def _spec(name: str):
    return next(s for s in declared_stages() if s.name == name)


def test_dvc_yaml_is_rendered_from_the_declarations():
    assert DVC_YAML.read_text() == render_dvc_yaml(), "dvc.yaml differs: run `rxrec dvc-yaml --write`"


def test_every_library_stage_is_declared_in_pipeline_order():
    assert [s.name for s in declared_stages()] == list(STAGES)
    assert list(yaml.safe_load(DVC_YAML.read_text())["stages"]) == list(STAGES)


def test_declared_params_are_params_yaml_sections():
    sections = set(load_settings().model_dump(by_alias=True))
    for spec in declared_stages():
        assert set(spec.params) <= sections, spec.name


def test_a_training_stage_declares_its_family_module_and_section():
    spec = _spec("train_gru4rec")
    assert "pipelines/models/gru4rec.py" in spec.deps and "gru4rec" in spec.params
    assert spec.outputs[0].path == "artifacts/models/gru4rec"


def test_reading_an_undeclared_section_names_it():
    view = DeclaredSettings(load_settings(), _spec("train_mf"))
    assert view.mf.factors > 0 and view.data.seed >= 0 and view.mlflow is not None  # declared, or a service
    with pytest.raises(UndeclaredInput, match=r"stage 'train_mf' reads params section 'gate'"):
        view.gate  # noqa: B018
    assert {key.split(".")[0] for key in view.flat()} == {"mf", "data", "evaluate"}


def test_a_wrong_declaration_of_a_real_stage_fails_on_its_params(trained_workdir, tiny_overrides):
    """The evaluate stage, declared without the `evaluate` section it reads, stops on that read."""
    wrong = dataclasses.replace(_spec("evaluate"), params=())
    settings = DeclaredSettings(load_settings(overrides=tiny_overrides), wrong)
    with pytest.raises(UndeclaredInput, match="'evaluate'"):
        STAGES["evaluate"](settings, Paths(trained_workdir))  # type: ignore[arg-type]


def test_a_wrong_declaration_of_a_real_stage_fails_on_its_files(trained_workdir, tiny_overrides, tmp_path):
    """export_onnx, declared without the trained model it reads, is caught by the IO guard."""
    import shutil

    root = tmp_path / "work"
    shutil.copytree(trained_workdir, root)
    spec = _spec("export_onnx")
    wrong = dataclasses.replace(spec, deps=tuple(d for d in spec.deps if d != "artifacts/models/gpt4rec"))
    settings = DeclaredSettings(load_settings(overrides=tiny_overrides), wrong)
    with pytest.raises(UndeclaredInput, match="artifacts/models/gpt4rec"), watch_io(wrong, root):
        STAGES["export_onnx"](settings, Paths(root))  # type: ignore[arg-type]


def test_the_right_declaration_passes_the_io_guard(trained_workdir, tiny_overrides, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "work"
    shutil.copytree(trained_workdir, root)
    monkeypatch.setenv("RXREC_STRICT_IO", "1")
    assert run_stage("export_onnx", tiny_overrides, workdir=root)["passed"] is True
