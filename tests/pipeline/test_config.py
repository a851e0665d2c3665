"""pipeline.config: complete recipes, dotted replace, dict round trips, CLI overrides, one seed."""

import dataclasses
import json
import os

import pytest

from pipeline import cli, config
from pipeline.data import job
from pipeline.train import trainer
from tests.support import tiny_tfds


def _fields(value, prefix=""):
    """(dotted name, value) of every leaf field of a config dataclass."""
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if dataclasses.is_dataclass(item):
            yield from _fields(item, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", item


@pytest.mark.parametrize("name", sorted(config.RECIPES))
def test_every_recipe_is_a_complete_config(name):
    recipe = config.recipe(name)
    assert isinstance(recipe, config.Config) and recipe.recipe == name
    assert recipe == config.RECIPES[name]()  # a fresh, equal value on every call
    unset = [field for field, value in _fields(recipe) if value is None]
    assert unset == ["data.input"]  # None there means the synthetic faces, nothing to resolve
    assert config.recipe() == config.recipe(config.DEFAULT_RECIPE)


def test_recipes_differ_in_training_only():
    seed, recommended = config.seed(), config.recommended()
    assert seed.train != recommended.train
    assert (seed.data, seed.evaluate, seed.export) == (
        recommended.data,
        recommended.evaluate,
        recommended.export,
    )


def test_an_unknown_recipe_is_a_value_error():
    with pytest.raises(ValueError, match="unknown recipe 'best'"):
        config.recipe("best")


def test_replace_takes_dotted_names_and_leaves_the_original():
    base = config.seed()
    changed = config.replace(
        base,
        seed=3,
        **{"train.epochs": 1, "train.model.filters": 4, "data.transform.resize_policy": "pad"},
    )
    assert (changed.seed, changed.train.epochs, changed.train.model.filters) == (3, 1, 4)
    assert changed.data.transform.resize_policy == "pad"
    assert changed.train.batch_size == base.train.batch_size
    assert changed.train.model.dense_units == base.train.model.dense_units
    assert base == config.seed()  # frozen: nothing changed in place
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.seed = 1


def test_replace_checks_values_and_names():
    with pytest.raises(ValueError, match="epochs"):
        config.replace(config.seed(), **{"train.epochs": 0})
    with pytest.raises(ValueError, match="add up to 1"):
        config.replace(config.seed(), **{"data.split_fractions": (0.5, 0.5, 0.5)})
    with pytest.raises(TypeError):
        config.replace(config.seed(), **{"train.epoch": 1})


@pytest.mark.parametrize("name", sorted(config.RECIPES))
def test_to_dict_and_from_dict_round_trip_through_json(name):
    original = config.replace(
        config.recipe(name),
        **{"data.input": "photos/", "data.split_fractions": (0.6, 0.2, 0.2), "seed": 9},
    )
    values = json.loads(json.dumps(config.to_dict(original)))
    assert values["data"]["split_fractions"] == [0.6, 0.2, 0.2]
    assert config.from_dict(config.Config, values) == original
    with pytest.raises(ValueError, match="no field 'colour'"):
        config.from_dict(config.Config, {**values, "colour": "blue"})


def test_only_the_top_level_seed_is_a_seed():
    names = [name for name, _ in _fields(config.recommended()) if "seed" in name.split(".")[-1]]
    assert names == ["seed"]


def _train_argv(output_dir, data_dir, *flags):
    return [
        "train",
        "--output-dir",
        str(output_dir),
        "--dataset",
        tiny_tfds.DATASET,
        "--data-dir",
        data_dir,
        *flags,
    ]


@pytest.mark.slow
def test_command_line_flags_override_the_recipe(tiny_data_dir, tmp_path):
    flags = ["--recipe", "seed", "--seed", "7", "--epochs", "1", "--filters", "4"]
    flags += ["--dense-units", "8", "--augment", "--xla", "off", "--validation-split", ""]
    assert cli.main(_train_argv(tmp_path, tiny_data_dir, *flags)) == 0
    with open(os.path.join(tmp_path, "train_params.json"), encoding="utf-8") as handle:
        used = config.from_dict(config.Config, json.load(handle)["config"])
    expected = config.replace(
        config.seed(),
        seed=7,
        **{
            "train.epochs": 1,
            "train.model.filters": 4,
            "train.model.dense_units": 8,
            "train.model.augment": True,
            "train.xla": "off",
            "train.validation_split": "",
        },
    )
    assert used == expected  # every value not given on the command line is the recipe's


def test_an_invalid_flag_value_is_one_line_and_exit_2(tiny_data_dir, tmp_path, capsys):
    argv = _train_argv(tmp_path, tiny_data_dir, "--recipe", "seed", "--learning-rate", "-1")
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["happysad train: error: learning rates must be positive"]
    assert not os.path.exists(tmp_path / "train_params.json")


@pytest.mark.parametrize(
    "recipe, flags, augment",
    [
        ("seed", [], False),
        ("seed", ["--augment"], True),
        ("seed", ["--augment=true"], True),
        ("seed", ["--augment", "false"], False),
        ("seed_augmented", [], True),
        ("seed_augmented", ["--noaugment"], False),
    ],
)
def test_boolean_flags(recipe, flags, augment):
    base = config.recipe(recipe)
    argv = ["--output-dir", "out", "--recipe", recipe, *flags]
    namespace = cli.stage_parser("train", trainer, base).parse_args(argv)
    built = cli.build_config(base, namespace, cli.STAGES["train"])
    assert built.train.model.augment is augment
    assert built == config.replace(base, **{"train.model.augment": augment})


def test_the_seed_flag_draws_other_synthetic_faces(tmp_path):
    manifests = {}
    for seed in (1, 2):
        output = tmp_path / str(seed)
        argv = ["preprocess", "--output", str(output), "--num-images", "4", "--seed", str(seed)]
        assert cli.main(argv) == 0
        manifests[seed] = {row["path"]: row["sha256"] for row in job.read_manifest(str(output))}
    assert manifests[1].keys() == manifests[2].keys()  # the same names: 2 happy, 2 sad
    assert not set(manifests[1].values()) & set(manifests[2].values())  # other faces
