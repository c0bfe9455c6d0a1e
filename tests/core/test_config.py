import pytest

from pipelines.core.config import (
    PARAMS_FILE,
    RECIPES,
    Settings,
    SettingsError,
    load_settings,
    parse_override,
    recipe_names,
)


def test_params_yaml_holds_every_setting_with_its_default():
    """params.yaml is the one source: every field of Settings appears there, and nothing else."""
    import yaml

    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw.pop(RECIPES)  # named override sets, not settings (tests below)
    defaults = Settings().model_dump(by_alias=True)
    assert set(raw) == set(defaults)
    for section, values in defaults.items():
        assert set(raw[section]) == set(values), section


def test_overrides_are_typed_and_applied():
    s = load_settings(overrides=["gpt4rec.epochs=2", "evaluate.mask_seen=false", "data.n_products=500"])
    assert s.gpt4rec.epochs == 2 and s.evaluate.mask_seen is False and s.data.n_products == 500


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("gpt4rec.epochs=0", "gpt4rec.epochs"),
        ("gpt4rec.max_len=1024", "gpt4rec.max_len"),
        ("gpt4rec.nope=1", "gpt4rec.nope"),
        ("nosection.key=1", "nosection"),
        ("data.seed=abc", "data.seed"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(SettingsError, match=fragment.replace(".", r"\.")):
        load_settings(overrides=[override])


def test_override_syntax_error_says_how_to_write_it():
    with pytest.raises(SettingsError, match="section.key=value"):
        parse_override("epochs")


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_of_params_yaml_is_valid_settings(recipe):
    assert load_settings(recipe=recipe) != load_settings()


def test_a_recipe_applies_before_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_FILE.read_text() + "\n  long:\n    gpt4rec: {epochs: 50, patience: 7}\n")
    s = load_settings(params, overrides=["gpt4rec.epochs=3"], recipe="long")
    assert (s.gpt4rec.epochs, s.gpt4rec.patience) == (3, 7)
    assert recipe_names(params)[-1] == "long"


@pytest.mark.parametrize(
    ("recipes", "recipe", "fragment"),
    [
        ("", "nope", r"no recipe 'nope' in its recipes section \(it has: quality\)"),
        ("\n  typo:\n    gpt4rec: {epochz: 5}\n", "typo", r"gpt4rec\.epochz"),
        ("\n  flat:\n    gpt4rec.epochs: 5\n", "flat", r"recipes\.flat must map sections"),
    ],
)
def test_bad_recipes_are_clear_errors(tmp_path, recipes, recipe, fragment):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_FILE.read_text() + recipes)
    with pytest.raises(SettingsError, match=fragment):
        load_settings(params, recipe=recipe)
