"""pipeline.train.tune: a tiny KerasTuner search, its best hyperparameters, training the best."""

import glob
import json
import os

import keras_tuner
import pytest

from pipeline import config, errors
from pipeline.train import tune
from tests.support import tiny_tfds


def _config(**changes) -> config.Config:
    values = {
        "tune.tuner": "random",
        "tune.max_trials": 2,
        "train.epochs": 1,
        "train.batch_size": 8,
        "train.xla": "off",
        **changes,
    }
    return config.replace(config.seed(), **values)


def _tune(cfg, output_dir, data_dir):
    return tune.run(cfg, output_dir=str(output_dir), dataset=tiny_tfds.DATASET, data_dir=data_dir)


def _trial_scores(output_dir) -> list[float]:
    """The scores KerasTuner recorded for each trial in <output_dir>/tuner/."""
    scores = []
    for path in glob.glob(os.path.join(output_dir, tune.TUNER_DIR, "trial_*", "trial.json")):
        with open(path, encoding="utf-8") as handle:
            scores.append(json.load(handle)["score"])
    return scores


@pytest.mark.slow
def test_search_writes_the_best_hyperparameters_and_trains_them(tiny_data_dir, tmp_path):
    result = _tune(_config(**{"tune.train_best": True}), tmp_path, tiny_data_dir)
    assert result["trials"] == 2 and result["objective"] == "val_loss"
    with open(tmp_path / tune.BEST_FILE, encoding="utf-8") as handle:
        saved = json.load(handle)
    best = config.from_dict(config.TrainConfig, saved["best_hyperparameters"])
    assert 1e-4 <= best.learning_rate <= 3e-3 and best.model.filters in (8, 16, 32)
    assert best.model.dense_units in (64, 128, 256) and 0.0 <= best.model.dropout <= 0.5
    scores = _trial_scores(tmp_path)
    assert len(scores) == 2 and saved["best_score"] == min(scores)  # val_loss: lower is better
    trained = result["trained"]
    assert os.path.isfile(trained["model"]) and trained["architecture"] == "seed_cnn"
    with open(tmp_path / "best" / "train_params.json", encoding="utf-8") as handle:
        used = config.from_dict(config.Config, json.load(handle)["config"])
    assert used.train == best


@pytest.mark.slow
def test_a_finished_search_resumes_without_new_trials(tiny_data_dir, tmp_path):
    first = _tune(_config(**{"tune.max_trials": 1}), tmp_path, tiny_data_dir)
    again = _tune(_config(**{"tune.max_trials": 1}), tmp_path, tiny_data_dir)
    assert first["trials"] == again["trials"] == 1
    assert again["best_hyperparameters"] == first["best_hyperparameters"]


def test_backbone_models_search_their_own_space():
    base = config.recommended().train
    hyperparameters = keras_tuner.HyperParameters()
    trial = tune.FaceHyperModel(base, seed=0).trial_config(hyperparameters)
    assert set(hyperparameters.values) == {
        "learning_rate",
        "head_learning_rate",
        "dropout",
        "augment_strength",
    }
    assert trial.model.model == "fer_transfer" and trial.head_epochs == base.head_epochs
    assert trial.model.augment == (hyperparameters.get("augment_strength") > 0)


def test_bad_settings_are_user_errors(tiny_data_dir, tmp_path):
    with pytest.raises(errors.UserError, match="max trials"):
        _tune(_config(**{"tune.max_trials": 0}), tmp_path, tiny_data_dir)
    with pytest.raises(errors.UserError, match="no validation split"):
        _tune(_config(**{"train.validation_split": "nope"}), tmp_path, tiny_data_dir)
