"""A family is one module: registering it gives it a params section, a dvc stage, a stage function and a
leaderboard row, and the registry trains, saves, loads and scores every family the same way."""

import numpy as np
import pytest
import yaml

from pipelines.core.config import PARAMS_FILE, PROJECT_ROOT, Settings, section_types
from pipelines.models.base import Family, FitContext
from pipelines.models.families import family, family_names, fit_family, load_recommenders
from pipelines.stages import STAGES
from pipelines.stages.train import INPUT_DEPS

# Small enough for a unit test; each family reads the keys its section has.
TINY = {"epochs": 2, "dim": 16, "hidden": 16, "factors": 8, "iterations": 2, "max_len": 10, "batch_size": 64,
        "samples_per_user": 2, "layers": 1}


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def expected_dvc_stage(name: str) -> dict:
    """What dvc.yaml must say for family `name` (paste it when adding a family)."""
    extra = sorted(INPUT_DEPS[which] for which in family(name).inputs if INPUT_DEPS[which] != "data/features")
    return {"cmd": f"rxrec stage train_{name}",
            "deps": ["data/features", *extra, "pipelines/models/base.py", f"pipelines/models/{name}.py",
                     "pipelines/stages/train.py"],
            "params": [name, "data", "evaluate"],
            "outs": [f"artifacts/models/{name}"]}


def test_the_leaderboard_starts_with_1mgs_evolution_then_the_new_families():
    assert family_names()[:5] == ("popularity", "mf", "rules", "ncf", "gpt4rec")
    assert {"gru4rec", "bert4rec"} <= set(family_names()[5:])


@pytest.mark.parametrize("name", family_names())
def test_a_registered_family_has_its_section_stage_and_leaderboard_row(name):
    cls = family(name)
    assert issubclass(cls, Family) and cls.family == name
    assert name in yaml.safe_load(PARAMS_FILE.read_text()), f"params.yaml needs a {name}: section"
    assert section_types()[name] is cls.settings_type  # its module types its section
    stage = _dvc_stages().get(f"train_{name}")
    assert stage == expected_dvc_stage(name), f"dvc.yaml train_{name} should be:\n" + yaml.safe_dump(
        {f"train_{name}": expected_dvc_stage(name)}, sort_keys=False)
    assert f"train_{name}" in STAGES
    assert f"artifacts/models/{name}" in _dvc_stages()["evaluate"]["deps"]  # evaluation waits for it


def test_only_registered_families_have_train_stages():
    trained = [stage.removeprefix("train_") for stage in _dvc_stages() if stage.startswith("train_")]
    assert trained == list(family_names()) == [s.removeprefix("train_") for s in STAGES if s.startswith("train_")]


def test_an_unknown_family_is_named_with_the_known_ones():
    with pytest.raises(KeyError, match="unknown model family 'sasrec'; families are: popularity, mf"):
        family("sasrec")


@pytest.mark.parametrize("name", family_names())
def test_fit_save_load_score_round_trip(name, cyclic_world, tmp_path):
    section = getattr(Settings(), name)
    settings = Settings(**{name: section.model_copy(update={k: v for k, v in TINY.items()
                                                            if k in type(section).model_fields})})
    model, info = fit_family(name, cyclic_world, settings, FitContext(seed=0, progress=False))
    assert info["train_seconds"] >= 0 and model.name == name
    histories = [np.array([3, 4, 5]), np.array([7]), np.arange(1, 30)]
    scores = model.score(histories)
    assert scores.shape == (3, cyclic_world.n_items + 1) and np.isfinite(scores).all()
    model.save(tmp_path / name)
    again = load_recommenders(tmp_path)  # what the evaluate stage does
    assert list(again) == [name]
    np.testing.assert_allclose(again[name].score(histories), scores, rtol=1e-5, atol=1e-5)


def test_the_epoch_loop_reports_each_epoch_as_it_ends(cyclic_world):
    """FitContext.on_epoch is how live tracking sees training: once per epoch, loss and validation metrics."""
    from pipelines.models.gru4rec import GRU4Rec, GRU4RecSettings

    seen: list[dict[str, float]] = []
    settings = GRU4RecSettings(dim=16, max_len=10, dropout=0.0, epochs=3, batch_size=64, patience=5)
    _, info = GRU4Rec.fit(cyclic_world, settings, FitContext(seed=0, progress=False, on_epoch=seen.append))
    assert [row["epoch"] for row in seen] == [1, 2, 3] == [row["epoch"] for row in info["history"]]
    assert all({"loss", "valid_hr_at_10", "valid_ndcg_at_10"} <= set(row) for row in seen)
