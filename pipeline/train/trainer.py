"""`happysad train`: fit a model on a TFDS dataset, resumably, with TensorBoard logs.

    trainer.run(config, output_dir=..., dataset="happysad_tfds/synthetic", data_dir=...)

Output directory layout:
  model.keras           the trained model (the best validation epoch when keep_best, else the last)
  checkpoints/          last.keras + state.json (resume), best.keras (lowest validation loss)
  logs/                 TensorBoard event files (train/ and validation/)
  history.csv           one row of loss and metrics per epoch (Keras CSVLogger)
  training_curves.png   loss, accuracy, precision, recall and AUC per epoch, train vs validation
  train_params.json     the whole config, the dataset's name/config/version, label counts, code

Rerunning the same command continues after the last completed epoch; raising --epochs extends
a finished run; changing any other value starts afresh (the old checkpoints are discarded,
with a warning). `fit` is the one training loop: `happysad tune` and cross-validation use it.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence

import keras
import tensorflow as tf

from pipeline import artifacts, contract, plots
from pipeline import config as config_lib
from pipeline.train import input_pipeline, models

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
STATE_FILE = "state.json"
# Fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("epochs", "early_stopping_patience", "keep_best")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainArguments:
    """Where `happysad train` reads and writes."""

    output_dir: str  # directory for model.keras, checkpoints/, logs/, history.csv, ...
    dataset: str = input_pipeline.DEFAULT_DATASET  # TFDS name[/config][:version]
    data_dir: str | None = None  # TFDS data_dir holding the built dataset


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of epochs [start, end) with the backbone frozen or not, at one learning rate."""

    start: int
    end: int
    backbone_trainable: bool
    learning_rate: float


def schedule(config: config_lib.TrainConfig) -> list[Phase]:
    """The phases of a training run, as the Keras transfer-learning guide does it.

    With a pre-trained backbone: `head_epochs` training only the new head (backbone frozen,
    head_learning_rate), then, with fine_tune, the remaining epochs training everything but
    BatchNormalization at the lower learning_rate. Without a backbone: one phase.
    """
    if config.model.model == "seed_cnn":
        return [Phase(0, config.epochs, False, config.learning_rate)]
    head_end = min(config.head_epochs, config.epochs) if config.fine_tune else config.epochs
    phases = []
    if head_end > 0:
        phases.append(Phase(0, head_end, False, config.head_learning_rate))
    if head_end < config.epochs:
        phases.append(Phase(head_end, config.epochs, True, config.learning_rate))
    return phases


def plan(
    config: config_lib.TrainConfig, label_counts: dict[int, int]
) -> tuple[config_lib.TrainConfig, dict[int, float] | None]:
    """The config to train with on a train split of these class counts, and its class weights.

    The one rule for `happysad train`, `happysad tune` and cross-validation:
    - below `fine_tune_min_examples` images, the backbone is not fine-tuned and only the head
      epochs run (a few hundred photos lose more to overfitting than they gain, README);
    - with `class_weights` and unequal counts, Keras `class_weight` makes each class weigh
      as much in the loss (input_pipeline.class_weights); otherwise None.
    """
    examples = sum(label_counts.values())
    if (
        config.model.model != "seed_cnn"
        and config.fine_tune
        and examples < config.fine_tune_min_examples
    ):
        logger.info(
            "%d training images < %d: training the head only, for %d epochs",
            examples,
            config.fine_tune_min_examples,
            config.head_epochs,
        )
        config = dataclasses.replace(
            config, fine_tune=False, epochs=min(config.epochs, config.head_epochs or config.epochs)
        )
    balanced = len(label_counts) < 2 or len(set(label_counts.values())) == 1
    weights = None
    if config.class_weights and not balanced:
        weights = input_pipeline.class_weights(label_counts)
    return config, weights


def _enter_phase(model: keras.Model, config: config_lib.TrainConfig, phase: Phase) -> None:
    """Freezes or unfreezes the backbone and recompiles, unless the model is already there.

    A model resumed from a checkpoint mid-phase keeps its compiled optimizer and its state.
    """
    current_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    same_rate = abs(current_rate - phase.learning_rate) <= 1e-6 * phase.learning_rate
    if models.backbone_trainable(model) == phase.backbone_trainable and same_rate:
        return
    models.set_backbone_trainable(model, phase.backbone_trainable)
    models.compile_model(model, config, phase.learning_rate)


def fit(
    model: keras.Model,
    config: config_lib.TrainConfig,
    train_batches: tf.data.Dataset,
    validation_batches: tf.data.Dataset | None = None,
    *,
    initial_epoch: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    class_weight: dict[int, float] | None = None,
    verbose="auto",
) -> keras.callbacks.History:
    """Trains `model` through the config's schedule from `initial_epoch`.

    Args:
        model: from models.build_model (or a checkpoint of one).
        config: a TrainConfig already passed through `plan`.
        train_batches: (float32 images (B, 256, 256, 3) in [0, 1], int64 labels (B,)).
        validation_batches: the same, or None.

    Returns:
        One History for all phases, as a single model.fit would return it. Stops after a
        phase in which a callback set model.stop_training (early stopping).
    """
    history = keras.callbacks.History()
    history.history, history.epoch = {}, []
    for phase in schedule(config):
        if initial_epoch >= phase.end:
            continue
        _enter_phase(model, config, phase)
        phase_history = model.fit(
            train_batches,
            validation_data=validation_batches,
            epochs=phase.end,
            initial_epoch=max(initial_epoch, phase.start),
            class_weight=class_weight,
            callbacks=list(callbacks),
            verbose=verbose,
            shuffle=False,  # tf.data already reshuffles every epoch
        )
        history.epoch += phase_history.epoch
        for name, values in phase_history.history.items():
            history.history.setdefault(name, []).extend(values)
        if model.stop_training:
            break
    history.set_model(model)
    return history


def _fingerprint(config: config_lib.Config, dataset: str) -> str:
    """What must match for a checkpoint to be resumed (everything but the run's length)."""
    values = config_lib.to_dict(config.train)
    for name in _RESUMABLE_CHANGES:
        values.pop(name)
    values.update(seed=config.seed, dataset=dataset)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _save_model(model: keras.Model, path: str) -> None:
    artifacts.write_with(path, model.save)


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the last and the best epoch, and stops early, keeping all of it across restarts.

    After every epoch: checkpoints/last.keras (model and optimizer), best.keras when the
    monitored value improved, then state.json (epoch, best value, epochs without improvement)
    last, so a resumed run knows exactly where it was, early-stopping patience included.
    """

    def __init__(self, directory: str, state: dict, monitor: str, patience: int):
        super().__init__()
        self.directory = directory
        self.state = state
        self.monitor = monitor
        self.patience = patience

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        best = self.state.get("best_value")
        if value is not None and (best is None or value < best):
            self.state.update(best_value=float(value), best_epoch=epoch + 1, wait=0)
            _save_model(self.model, os.path.join(self.directory, BEST_CHECKPOINT))
        else:
            self.state["wait"] = self.state.get("wait", 0) + 1
        if self.patience and self.state["wait"] >= self.patience:
            self.state["stopped_early"] = True
            self.model.stop_training = True
            logger.info(
                "early stopping: %s has not improved for %d epochs", self.monitor, self.patience
            )
        self.state["epoch"] = epoch + 1
        _save_model(self.model, os.path.join(self.directory, LAST_CHECKPOINT))
        artifacts.write_json(os.path.join(self.directory, STATE_FILE), self.state)


def _read_state(checkpoints: str, fingerprint: str) -> dict | None:
    """The saved state if its checkpoint can be resumed with this config, else None."""
    state_path = os.path.join(checkpoints, STATE_FILE)
    if not os.path.isfile(state_path):
        return None
    state = artifacts.read_json(state_path)
    if state.get("fingerprint") != fingerprint:
        logger.warning(
            "%s holds checkpoints of different hyperparameters: starting afresh", checkpoints
        )
        return None
    if not os.path.isfile(os.path.join(checkpoints, LAST_CHECKPOINT)):
        return None
    return state


def _truncate_history(path: str, epochs: int) -> None:
    """Keeps the history rows of the first `epochs` epochs (a killed run may have written more)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < epochs]
    artifacts.write_text(path, "".join(kept))


def _restore_or_build(
    config: config_lib.Config, output_dir: str, fingerprint: str
) -> tuple[keras.Model, dict]:
    """The model to train and its checkpoint state: resumed when possible, else fresh."""
    checkpoints = os.path.join(output_dir, CHECKPOINT_DIR)
    state = _read_state(checkpoints, fingerprint)
    if state is not None:
        model = keras.models.load_model(os.path.join(checkpoints, LAST_CHECKPOINT))
        _truncate_history(os.path.join(output_dir, contract.HISTORY_FILE), state["epoch"])
        logger.info("resuming %s after epoch %d", output_dir, state["epoch"])
        # A larger patience than the stopped run had lets it go on.
        patience = config.train.early_stopping_patience
        state["stopped_early"] = bool(patience) and state.get("wait", 0) >= patience
        return model, state
    shutil.rmtree(checkpoints, ignore_errors=True)
    for name in (contract.HISTORY_FILE, contract.TRAINING_CURVES_PLOT):
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    os.makedirs(checkpoints)
    model = models.build_model(config.train, seed=config.seed)
    return model, {"fingerprint": fingerprint, "epoch": 0, "wait": 0, "stopped_early": False}


def _callbacks(config: config_lib.TrainConfig, output_dir: str, state: dict, monitor: str):
    return [
        ResumableCheckpoint(
            os.path.join(output_dir, CHECKPOINT_DIR),
            state,
            monitor,
            config.early_stopping_patience,
        ),
        keras.callbacks.CSVLogger(os.path.join(output_dir, contract.HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(os.path.join(output_dir, LOG_DIR), write_graph=False),
    ]


def _has_split(description: dict, split: str) -> bool:
    if not split:
        return False
    parts = input_pipeline.split_names(split)
    return sum(description["splits"].get(name, 0) for name in parts) > 0


def run(
    config: config_lib.Config,
    *,
    output_dir: str,
    dataset: str = input_pipeline.DEFAULT_DATASET,
    data_dir: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
    """Trains (or resumes training) on `dataset` and writes the output directory above.

    Args:
        config: the whole configuration; `config.train` and `config.seed` are used.
        output_dir: where everything goes (local path).
        dataset: TFDS name[/config][:version] of a built dataset.
        data_dir: the TFDS data_dir holding it (None: TFDS's default).
        callbacks: extra Keras callbacks, called after the stage's own each epoch.

    Returns:
        A summary: model path, recipe, architecture, epochs completed, resumed-from epoch,
        best epoch, the epoch model.keras holds, and that epoch's metrics.

    Raises:
        UserError: an unknown dataset or split, or weights that cannot be loaded.
    """
    os.makedirs(output_dir, exist_ok=True)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    description = input_pipeline.describe(dataset, data_dir)
    validate = _has_split(description, config.train.validation_split)
    monitor = "val_loss" if validate else "loss"
    counts = input_pipeline.label_counts(dataset, config.train.train_split, data_dir)
    train_config, class_weight = plan(config.train, counts)
    config = dataclasses.replace(config, train=train_config)

    model, state = _restore_or_build(config, output_dir, _fingerprint(config, dataset))
    resumed_from = state["epoch"]
    keras.utils.set_random_seed(config.seed + resumed_from)
    params = {
        "config": config_lib.to_dict(config),
        "dataset": description,
        "train_label_counts": counts,
        "class_weight": class_weight,
        "monitor": monitor,
        "code_version": artifacts.code_version(),
        "model_parameters": model.count_params(),
    }
    params_path = os.path.join(output_dir, contract.TRAIN_PARAMS_FILE)
    artifacts.write_json(params_path, params)

    if resumed_from < train_config.epochs and not state.get("stopped_early"):
        train_batches = input_pipeline.load_split(
            dataset,
            train_config.train_split,
            data_dir,
            train_config.batch_size,
            shuffle=True,
            seed=config.seed + resumed_from,
        )
        validation_batches = (
            input_pipeline.load_split(
                dataset, train_config.validation_split, data_dir, train_config.batch_size
            )
            if validate
            else None
        )
        fit(
            model,
            train_config,
            train_batches,
            validation_batches,
            initial_epoch=resumed_from,
            class_weight=class_weight,
            callbacks=_callbacks(train_config, output_dir, state, monitor) + list(callbacks),
            verbose=2,
        )

    best_path = os.path.join(output_dir, CHECKPOINT_DIR, BEST_CHECKPOINT)
    use_best = train_config.keep_best and validate and os.path.isfile(best_path)
    final = keras.models.load_model(best_path) if use_best else model
    model_path = os.path.join(output_dir, contract.MODEL_FILE)
    _save_model(final, model_path)
    history = artifacts.read_history(os.path.join(output_dir, contract.HISTORY_FILE))
    if history:
        plots.training_curves(os.path.join(output_dir, contract.TRAINING_CURVES_PLOT), history)
    model_epoch = state.get("best_epoch") if use_best else state["epoch"]
    metrics = _epoch_metrics(history, model_epoch)
    params.update(
        epochs_completed=state["epoch"],
        best_epoch=state.get("best_epoch"),
        stopped_early=bool(state.get("stopped_early")),
        model_epoch=model_epoch,
        final_metrics=metrics,
    )
    artifacts.write_json(params_path, params)
    summary = {
        "model": model_path,
        "recipe": config.recipe,
        "architecture": train_config.model.model,
        "epochs_completed": state["epoch"],
        "resumed_from_epoch": resumed_from,
        "best_epoch": state.get("best_epoch"),
        "model_epoch": model_epoch,
        "metrics": metrics,
    }
    if train_config.alternatives:
        summary = _select(config, summary, output_dir, dataset, data_dir, validate)
    return summary


ALTERNATIVES_DIR = "alternatives"
_SELECTION_METRIC = "val_auc"


def _select(config, summary: dict, output_dir: str, dataset: str, data_dir, validate: bool):
    """Trains the alternative recipes when this one scores under the bar; keeps the best.

    Every candidate is judged by its validation AUC at the epoch its model.keras holds (the
    test split never sees the choice). A winning alternative's model.keras, history and
    curves are copied over this directory's, and train_params.json says which recipe it is
    (`config`) and what was compared (`selection`).
    """
    own = summary["metrics"].get(_SELECTION_METRIC)
    train = config.train
    if not validate or own is None:
        logger.warning("no validation split: the alternatives %s are not tried", train.alternatives)
        return summary
    candidates = [{"recipe": config.recipe, _SELECTION_METRIC: own, "directory": output_dir}]
    if own < train.alternatives_below:
        logger.info(
            "%s: validation AUC %.3f under %.2f: training %s too",
            config.recipe,
            own,
            train.alternatives_below,
            ", ".join(train.alternatives),
        )
        for name in train.alternatives:
            alternative = config_lib.replace(
                config_lib.recipe(name), seed=config.seed, data=config.data
            )
            alternative = config_lib.replace(
                alternative,
                **{
                    "train.alternatives": (),
                    "train.train_split": train.train_split,
                    "train.validation_split": train.validation_split,
                },
            )
            directory = os.path.join(output_dir, ALTERNATIVES_DIR, name)
            result = run(alternative, output_dir=directory, dataset=dataset, data_dir=data_dir)
            score = result["metrics"].get(_SELECTION_METRIC)
            if score is not None:
                candidates.append(
                    {"recipe": name, _SELECTION_METRIC: score, "directory": directory}
                )
    best = max(candidates, key=lambda candidate: candidate[_SELECTION_METRIC])  # ties: first
    params_path = os.path.join(output_dir, contract.TRAIN_PARAMS_FILE)
    params = artifacts.read_json(params_path)
    if best["directory"] != output_dir:
        for name in (contract.MODEL_FILE, contract.HISTORY_FILE, contract.TRAINING_CURVES_PLOT):
            source = os.path.join(best["directory"], name)
            if os.path.isfile(source):
                artifacts.write_with(
                    os.path.join(output_dir, name),
                    lambda temporary, source=source: shutil.copyfile(source, temporary),
                )
        chosen = artifacts.read_json(os.path.join(best["directory"], contract.TRAIN_PARAMS_FILE))
        params.update({key: chosen[key] for key in ("config", "final_metrics", "model_epoch")})
        summary = {**run_summary(chosen, output_dir), "resumed_from_epoch": 0}
    params["selection"] = {
        "metric": _SELECTION_METRIC,
        "split": train.validation_split,
        "chosen": best["recipe"],
        "candidates": [
            {key: value for key, value in candidate.items() if key != "directory"}
            for candidate in candidates
        ],
    }
    artifacts.write_json(params_path, params)
    logger.info("kept %s (validation AUC %.3f)", best["recipe"], best[_SELECTION_METRIC])
    return {**summary, "selection": params["selection"]}


def run_summary(params: dict, output_dir: str) -> dict:
    """What `run` returns, from a finished run's train_params.json."""
    config = params["config"]
    return {
        "model": os.path.join(output_dir, contract.MODEL_FILE),
        "recipe": config["recipe"],
        "architecture": config["train"]["model"]["model"],
        "epochs_completed": params.get("epochs_completed"),
        "best_epoch": params.get("best_epoch"),
        "model_epoch": params.get("model_epoch"),
        "metrics": params.get("final_metrics", {}),
    }


def _epoch_metrics(history: dict[str, list], epoch: int | None) -> dict:
    """The loss and metrics the history holds for `epoch` (counted from 1)."""
    epochs = history.get("epoch") or []
    if epoch is None or (epoch - 1) not in epochs:
        return {}
    row = len(epochs) - 1 - epochs[::-1].index(epoch - 1)
    values = {name: values[row] for name, values in history.items() if name != "epoch"}
    return {name: value for name, value in values.items() if value is not None}
