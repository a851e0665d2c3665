"""`happysad tune`: search a recipe's hyperparameters with KerasTuner, then (optionally) train the best.

The search space depends on the model (see SEARCH_SPACES): for the seed CNN the learning rate,
filters, dense width, dropout and augmentation strength; for the backbones the two learning
rates, dropout and augmentation strength. An augmentation strength of 0 means no augmentation.
Every trial trains through `pipeline.train.fit` (head epochs, fine-tuning) on the TFDS train
split and is scored on the validation split. KerasTuner keeps its trials in
`<output_dir>/tuner/`, so an interrupted search resumes where it stopped.

Outputs: best_hyperparameters.json (TrainConfig field values: pass them to `happysad train`),
and with --train-best a full training run of them in `<output_dir>/best/`.
"""

import dataclasses
import logging
import os

import keras
import keras_tuner

from pipeline import errors
from pipeline.train import input_pipeline as data
from pipeline.train import models, recipes
from pipeline.train import trainer as train

TUNERS = ("hyperband", "random", "bayesian")
OBJECTIVES = {"val_loss": "min", "val_accuracy": "max", "val_auc": "max"}
BEST_FILE = "best_hyperparameters.json"
TUNER_DIR = "tuner"
BEST_DIR = "best"

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
class TuneConfig:
    """Where to search, with which tuner, starting from which recipe."""

    output_dir: str = dataclasses.field(
        metadata={"help": "directory for tuner/, best_hyperparameters.json and best/"}
    )
    dataset: str = dataclasses.field(
        default=data.DEFAULT_DATASET,
        metadata={"help": "TFDS name[/config][:version], e.g. happysad_tfds/folder"},
    )
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "TFDS data_dir holding the built dataset"}
    )
    recipe: str = dataclasses.field(
        default="seed_augmented",
        metadata={
            "help": "recipe whose other hyperparameters stay fixed",
            "choices": tuple(recipes.RECIPES),
        },
    )
    model: str | None = dataclasses.field(
        default=None,
        metadata={"help": "architecture (default: the recipe's)", "choices": models.MODELS},
    )
    tuner: str = dataclasses.field(
        default="hyperband", metadata={"help": "KerasTuner search algorithm", "choices": TUNERS}
    )
    objective: str = dataclasses.field(
        default="val_loss",
        metadata={"help": "what the search optimises", "choices": tuple(OBJECTIVES)},
    )
    max_trials: int = dataclasses.field(
        default=10, metadata={"help": "random/bayesian: number of trials"}
    )
    epochs: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "epochs per trial (hyperband: the most any trial gets; default: recipe's)"
        },
    )
    batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "images per step (default: the recipe's)"}
    )
    backbone_weights: str | None = dataclasses.field(
        default=None, metadata={"help": "override the recipe's backbone weights"}
    )
    train_split: str = dataclasses.field(
        default="train", metadata={"help": "TFDS split every trial trains on"}
    )
    validation_split: str = dataclasses.field(
        default="validation", metadata={"help": "TFDS split every trial is scored on"}
    )
    seed: int = dataclasses.field(default=42, metadata={"help": "seed of the search and training"})
    train_best: bool = dataclasses.field(
        default=False, metadata={"help": "train the best hyperparameters into <output_dir>/best"}
    )


class FaceHyperModel(keras_tuner.HyperModel):
    """Builds a pipeline.models model from a trial's values and trains it like `happysad train`."""

    def __init__(self, base: train.TrainConfig):
        super().__init__(name=f"happysad_{base.model}")
        self.base = base

    def trial_config(self, hp: keras_tuner.HyperParameters) -> train.TrainConfig:
        values = SEARCH_SPACES[self.base.model](hp)
        strength = values.pop("augment_strength")
        return dataclasses.replace(
            self.base, augment=strength > 0, augment_strength=strength or 1.0, **values
        )

    def build(self, hp):
        config = self.trial_config(hp)
        return models.build_model(train.model_options(config), seed=config.seed)

    def fit(self, hp, model, *args, **kwargs):
        config = dataclasses.replace(self.trial_config(hp), epochs=kwargs["epochs"])
        return train.fit(
            model,
            config,
            args[0],
            kwargs.get("validation_data"),
            initial_epoch=kwargs.get("initial_epoch", 0),
            callbacks=kwargs.get("callbacks"),
            class_weight=kwargs.get("class_weight"),
            verbose=kwargs.get("verbose", "auto"),
        )


def _tuner(config: TuneConfig, hypermodel: FaceHyperModel, epochs: int) -> keras_tuner.Tuner:
    common = {
        "objective": keras_tuner.Objective(config.objective, OBJECTIVES[config.objective]),
        "seed": config.seed,
        "directory": config.output_dir,
        "project_name": TUNER_DIR,
        "overwrite": False,
    }
    if config.tuner == "hyperband":
        return keras_tuner.Hyperband(hypermodel, max_epochs=epochs, factor=3, **common)
    if config.tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=config.max_trials, **common)
    return keras_tuner.BayesianOptimization(hypermodel, max_trials=config.max_trials, **common)


def _base_config(config: TuneConfig) -> train.TrainConfig:
    overrides = {
        name: getattr(config, name)
        for name in ("model", "epochs", "batch_size", "backbone_weights")
        if getattr(config, name) is not None
    }
    return recipes.train_config(
        config.recipe,
        output_dir=os.path.join(config.output_dir, BEST_DIR),
        dataset=config.dataset,
        data_dir=config.data_dir,
        train_split=config.train_split,
        validation_split=config.validation_split,
        seed=config.seed,
        **overrides,
    )


def run(config: TuneConfig) -> dict:
    """Runs (or resumes) the search; writes best_hyperparameters.json; trains it if asked."""
    if config.max_trials < 1:
        raise errors.UserError(f"max trials must be at least 1, got {config.max_trials}")
    base = _base_config(config)
    if not train.has_validation(base):
        raise errors.UserError(f"dataset {base.dataset!r} has no validation split to tune on")
    os.makedirs(config.output_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    counts = data.label_counts(base.dataset, base.train_split, base.data_dir)
    base = train.adapt_to_data(base, sum(counts.values()))
    hypermodel = FaceHyperModel(base)
    tuner = _tuner(config, hypermodel, base.epochs)
    class_weight = data.class_weights(counts) if base.class_weights else None
    tuner.search(
        data.load_split(
            base.dataset,
            base.train_split,
            base.data_dir,
            base.batch_size,
            shuffle=True,
            seed=base.seed,
        ),
        validation_data=data.load_split(
            base.dataset, base.validation_split, base.data_dir, base.batch_size
        ),
        epochs=base.epochs,
        class_weight=class_weight,
        verbose=2,
    )
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = hypermodel.trial_config(best_hp)
    trial = tuner.oracle.get_best_trials(1)[0]
    searched = sorted(SEARCH_SPACES[base.model](keras_tuner.HyperParameters()))
    chosen = {
        name: getattr(best, name)
        for name in ("recipe", "model", *searched, "augment")
        if hasattr(best, name)
    }
    result = {
        "best_hyperparameters": chosen,
        "objective": config.objective,
        "best_score": trial.score,
        "trials": len(tuner.oracle.trials),
    }
    train.write_json(os.path.join(config.output_dir, BEST_FILE), result)
    if config.train_best:
        result["trained"] = train.run(best)
    return result
