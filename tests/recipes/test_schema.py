import pytest

from pare.errors import ConfigError
from pare.recipes import builtin_recipes, load_recipe, recipe_from_dict


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_builtin_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    # to_dict is what results.json records; it must read back to the same recipe
    assert recipe_from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


def test_default_recipe_is_digits_cnn():
    recipe = load_recipe(None)
    assert (recipe.data.source, recipe.model.name) == ("digits", "cnn")


def test_misspelt_keys_all_reported_with_suggestions(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data: {sorce: digits}\n"
        "model: {name: cnnn}\n"
        "train: {epochs: ten, optimiser: adam}\n"
        "stages:\n  - {technique: zero_smalest}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    text = str(e.value)
    assert str(path) in text
    assert "data.sorce: unknown key (did you mean 'source'?)" in text
    assert "model.name: 'cnnn' is not a zoo model (did you mean 'cnn'?)" in text
    assert "train.epochs: expected a whole number, got 'ten'" in text
    assert "train.optimiser: unknown key (did you mean 'optimizer'?)" in text
    assert "stages[0].technique: unknown technique 'zero_smalest' (did you mean 'zero_smallest'?)" in text


def test_unknown_zoo_model_and_option():
    with pytest.raises(ConfigError, match=r"model.name: 'cnnn' is not a zoo model \(did you mean 'cnn'\?\)"):
        recipe_from_dict({"model": {"name": "cnnn"}})
    with pytest.raises(
        ConfigError, match=r"model.args.widht: 'mlp' has no option 'widht' \(did you mean 'width'\?\)"
    ):
        recipe_from_dict({"model": {"name": "mlp", "args": {"widht": 3}}})


def test_factory_that_does_not_import():
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.models'"):
        recipe_from_dict({"model": {"factory": "no_such_pkg.models:build"}})
    with pytest.raises(ConfigError, match="not of the form 'package.module:function'"):
        recipe_from_dict({"model": {"factory": "just_a_name"}})


def test_stage_config_validated_by_its_technique():
    recipe = recipe_from_dict({"stages": [{"technique": "zero_smallest", "fraction": 0.3}]})
    assert recipe.stages[0].name == "zero_smallest-1"
    assert recipe.stages[0].config.fraction == 0.3
    with pytest.raises(ConfigError, match=r"stages\[0\].fraction: 1.5 must be < 1"):
        recipe_from_dict({"stages": [{"technique": "zero_smallest", "fraction": 1.5}]})
    with pytest.raises(ConfigError, match="the name 'a' is used more than once"):
        recipe_from_dict({"stages": [{"technique": "zero_smallest", "name": "a"}] * 2})


def test_data_cross_field_rules():
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"data": {"source": "csv"}})
    assert "data.path: source 'csv' needs a path" in str(e.value)
    assert "data.label_column: a CSV source needs" in str(e.value)


def test_unknown_recipe_name():
    with pytest.raises(ConfigError, match=r"no built-in recipe of that name \(did you mean 'default'\?\)"):
        load_recipe("defualt")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)
