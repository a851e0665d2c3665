"""`happysad tune`: search a recipe's hyperparameters with KerasTuner, then (optionally) train the best.

The search space depends on the model (see SEARCH_SPACES): for the seed CNN the learning rate,
filters, dense width, dropout and augmentation strength; for the backbones the two learning
rates, dropout and augmentation strength. An augmentation strength of 0 means no augmentation.
Every trial trains through `pipeline.train.trainer.fit` (head epochs, fine-tuning) on the TFDS train
split and is scored on the validation split. KerasTuner keeps its trials in
`<output_dir>/tuner/`, so an interrupted search resumes where it stopped.

Outputs: best_hyperparameters.json (the best TrainConfig: pass its values to `happysad train`),
and with --train-best a full training run of them in `<output_dir>/best/`.
"""

import dataclasses
import logging
import os

import keras
import keras_tuner

from pipeline import artifacts, errors
from pipeline import config as config_lib
from pipeline.train import input_pipeline, models, trainer

OBJECTIVES = {"val_loss": "min", "val_accuracy": "max", "val_auc": "max"}
BEST_FILE = "best_hyperparameters.json"
TUNER_DIR = "tuner"
BEST_DIR = "best"
_MODEL_FIELDS = ("filters", "dense_units", "dropout")  # searched values that live in ModelConfig

logger = logging.getLogger(__name__)


def _seed_cnn_space(hp: keras_tuner.HyperParameters) -> dict:
    return {
        "learning_rate": hp.Float("learning_rate", 1e-4, 3e-3, sampling="log"),
        "filters": hp.Choice("filters", [8, 16, 32]),
        "dense_units": hp.Choice("dense_units", [64, 128, 256]),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1),
        "augment_strength": hp.Float("augment_strength", 0.0, 2.0, step=0.5),
    }


def _backbone_space(hp: keras_tuner.HyperParameters) -> dict:
    return {
        "learning_rate": hp.Float("learning_rate", 1e-5, 1e-3, sampling="log"),
        "head_learning_rate": hp.Float("head_learning_rate", 1e-3, 1e-1, sampling="log"),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1),
        "augment_strength": hp.Float("augment_strength", 0.0, 2.0, step=0.5),
    }


SEARCH_SPACES = {
    "seed_cnn": _seed_cnn_space,
    "fer_transfer": _backbone_space,
    "mobilenet_v2": _backbone_space,
    "resnet50": _backbone_space,
}


@dataclasses.dataclass(frozen=True)
class TuneArguments:
    """Where `happysad tune` reads and writes."""

    output_dir: str  # directory for tuner/, best_hyperparameters.json and best/
    dataset: str = input_pipeline.DEFAULT_DATASET  # TFDS name[/config][:version]
    data_dir: str | None = None  # TFDS data_dir holding the built dataset


class FaceHyperModel(keras_tuner.HyperModel):
    """Builds a pipeline.train.models model from a trial's values and trains it with `fit`."""

    def __init__(self, base: config_lib.TrainConfig, seed: int):
        super().__init__(name=f"happysad_{base.model.model}")
        self.base = base
        self.seed = seed

    def trial_config(self, hp: keras_tuner.HyperParameters) -> config_lib.TrainConfig:
        """The base TrainConfig with this trial's values (augment_strength 0: no augmentation)."""
        values = SEARCH_SPACES[self.base.model.model](hp)
        strength = values.pop("augment_strength")
        model_values = {name: values.pop(name) for name in _MODEL_FIELDS if name in values}
        model = dataclasses.replace(
            self.base.model, augment=strength > 0, augment_strength=strength or 1.0, **model_values
        )
        return dataclasses.replace(self.base, model=model, **values)

    def build(self, hp):
        return models.build_model(self.trial_config(hp), seed=self.seed)

    def fit(self, hp, model, *args, **kwargs):
        config = dataclasses.replace(self.trial_config(hp), epochs=kwargs["epochs"])
        return trainer.fit(
            model,
            config,
            args[0],
            kwargs.get("validation_data"),
            initial_epoch=kwargs.get("initial_epoch", 0),
            callbacks=kwargs.get("callbacks") or (),
            class_weight=kwargs.get("class_weight"),
            verbose=kwargs.get("verbose", "auto"),
        )


def _tuner(
    config: config_lib.Config, hypermodel: FaceHyperModel, output_dir: str
) -> keras_tuner.Tuner:
    tune = config.tune
    common = {
        "objective": keras_tuner.Objective(tune.objective, OBJECTIVES[tune.objective]),
        "seed": config.seed,
        "directory": output_dir,
        "project_name": TUNER_DIR,
        "overwrite": False,
    }
    if tune.tuner == "hyperband":
        return keras_tuner.Hyperband(
            hypermodel, max_epochs=hypermodel.base.epochs, factor=3, **common
        )
    if tune.tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=tune.max_trials, **common)
    return keras_tuner.BayesianOptimization(hypermodel, max_trials=tune.max_trials, **common)


def run(
    config: config_lib.Config,
    *,
    output_dir: str,
    dataset: str = input_pipeline.DEFAULT_DATASET,
    data_dir: str | None = None,
) -> dict:
    """Runs (or resumes) the search; writes best_hyperparameters.json; trains it if asked.

    Every trial trains through `trainer.fit` with `trainer.plan`'s rules on the train split
    and is scored on the validation split; KerasTuner keeps the trials in output_dir/tuner.

    Returns:
        {"best_hyperparameters", "objective", "best_score", "trials"} (+ "trained": the
        summary of `trainer.run` on the best values, with `config.tune.train_best`).

    Raises:
        UserError: no validation split, fewer than one trial, an unknown dataset.
    """
    if config.tune.max_trials < 1:
        raise errors.UserError(f"max trials must be at least 1, got {config.tune.max_trials}")
    train = config.train
    description = input_pipeline.describe(dataset, data_dir)
    if not train.validation_split or not description["splits"].get(train.validation_split):
        raise errors.UserError(f"dataset {dataset!r} has no validation split to tune on")
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    counts = input_pipeline.label_counts(dataset, train.train_split, data_dir)
    train, class_weight = trainer.plan(train, counts)
    hypermodel = FaceHyperModel(train, config.seed)
    tuner = _tuner(config, hypermodel, output_dir)
    tuner.search(
        input_pipeline.load_split(
            dataset, train.train_split, data_dir, train.batch_size, shuffle=True, seed=config.seed
        ),
        validation_data=input_pipeline.load_split(
            dataset, train.validation_split, data_dir, train.batch_size
        ),
        epochs=train.epochs,
        class_weight=class_weight,
        verbose=2,
    )
    best = hypermodel.trial_config(tuner.get_best_hyperparameters(1)[0])
    trial = tuner.oracle.get_best_trials(1)[0]
    result = {
        "best_hyperparameters": config_lib.to_dict(best),
        "objective": config.tune.objective,
        "best_score": trial.score,
        "trials": len(tuner.oracle.trials),
    }
    artifacts.write_json(os.path.join(output_dir, BEST_FILE), result)
    if config.tune.train_best:
        best_config = dataclasses.replace(config, train=best)
        result["trained"] = trainer.run(
            best_config,
            output_dir=os.path.join(output_dir, BEST_DIR),
            dataset=dataset,
            data_dir=data_dir,
        )
    return result
