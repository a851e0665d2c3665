"""pipeline.tune: a tiny KerasTuner search, its best hyperparameters, training the best, resuming."""

import json
import os

import keras_tuner
import pytest

from pipeline import errors
from pipeline.train import tune
from tests.support import tiny_tfds


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tiny_tfds.build(directory)
    return directory


def _config(data_dir, output_dir, **fields):
    values = {
        "output_dir": str(output_dir),
        "dataset": tiny_tfds.DATASET,
        "data_dir": data_dir,
        "tuner": "random",
        "max_trials": 2,
        "epochs": 1,
        "batch_size": 8,
    }
    return tune.TuneConfig(**{**values, **fields})


def test_search_writes_the_best_hyperparameters_and_trains_them(data_dir, tmp_path):
    result = tune.run(_config(data_dir, tmp_path, train_best=True))
    assert result["trials"] == 2
    saved = json.loads((tmp_path / tune.BEST_FILE).read_text())
    best = saved["best_hyperparameters"]
    assert set(best) >= {"learning_rate", "filters", "dense_units", "dropout", "augment_strength"}
    assert 1e-4 <= best["learning_rate"] <= 3e-3 and best["filters"] in (8, 16, 32)
    assert best["augment"] == (best["augment_strength"] > 0)
    trials = {
        trial.score
        for trial in keras_tuner.RandomSearch(
            tune.FaceHyperModel(tune._base_config(_config(data_dir, tmp_path))),
            objective="val_loss",
            directory=str(tmp_path),
            project_name=tune.TUNER_DIR,
            overwrite=False,
            max_trials=2,
        ).oracle.trials.values()
    }
    assert saved["best_score"] == min(trials)  # val_loss: lower is better
    trained = result["trained"]
    assert os.path.isfile(trained["model"]) and trained["architecture"] == "seed_cnn"
    params = json.loads((tmp_path / "best" / "train_params.json").read_text())
    assert params["hyperparameters"]["filters"] == best["filters"]


def test_a_finished_search_resumes_without_new_trials(data_dir, tmp_path):
    first = tune.run(_config(data_dir, tmp_path, max_trials=1))
    again = tune.run(_config(data_dir, tmp_path, max_trials=1))
    assert first["trials"] == again["trials"] == 1
    assert again["best_hyperparameters"] == first["best_hyperparameters"]


def test_backbone_models_search_their_own_space():
    space = tune.SEARCH_SPACES["fer_transfer"](keras_tuner.HyperParameters())
    assert set(space) == {"learning_rate", "head_learning_rate", "dropout", "augment_strength"}


def test_bad_settings_are_user_errors(data_dir, tmp_path):
    with pytest.raises(errors.UserError, match="max trials"):
        tune.run(_config(data_dir, tmp_path, max_trials=0))
    with pytest.raises(errors.UserError, match="no validation split"):
        tune.run(_config(data_dir, tmp_path, validation_split="nope"))
