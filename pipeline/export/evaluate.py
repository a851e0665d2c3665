"""Evaluate a trained model on the test split, plot, and bless it (or not), as TFX's Evaluator.

A candidate is blessed when it clears the absolute thresholds (accuracy, AUC) and is not worse
than the model currently pushed, measured on the same test split in the same run: the
baseline is the latest version under the serving base path, called through its exported
`predict_images` signature and judged by its own stored decision threshold.

Decision threshold (`--threshold-policy`):
  fixed       P(happy) >= --threshold (default 0.5) is "happy".
  validation  the threshold that maximises Youden's J (true positive rate minus false
              positive rate) on the validation split, ties going to the one nearest 0.5; the
              test split never sees the choice, so its metrics stay unbiased.
The threshold is written to metrics.json; `happysad export --evaluation-dir` stores it with the
model, and the served `label` uses it.
"""

import csv
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import uuid

import numpy as np
import tensorflow as tf
import tqdm

from pipeline import errors, plots
from pipeline.data import schema
from pipeline.export import push
from pipeline.train import input_pipeline as data

MODEL_FILE = "model.keras"
TRAIN_PARAMS_FILE = "train_params.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
ROC_CURVE_PLOT = "roc_curve.png"
TRAINING_CURVES_PLOT = "training_curves.png"
THRESHOLD_POLICIES = ("fixed", "validation")
# The exported signature that takes the dataset's pixels as they are (see pipeline.export).
BASELINE_SIGNATURE = "predict_images"
# Custom layers register themselves with Keras when this module is imported.
_CUSTOM_OBJECTS_MODULE = "pipeline.train.models"
_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate, on which data, and the bar a candidate must clear to be blessed."""

    model_path: str = dataclasses.field(
        metadata={"help": "the training output directory, or its model.keras file"}
    )
    output_dir: str = dataclasses.field(
        metadata={"help": "where metrics.json, blessing.json and the PNG plots go"}
    )
    dataset: str = dataclasses.field(
        default=data.DEFAULT_DATASET,
        metadata={"help": "TFDS dataset name, with config and version if needed"},
    )
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "TFDS data_dir (default: TFDS's own)"}
    )
    split: str = dataclasses.field(default="test", metadata={"help": "the split to evaluate on"})
    baseline: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "serving base path of the pushed model; its latest version is the baseline "
            "the candidate must not be worse than (none yet: thresholds only)"
        },
    )
    min_accuracy: float = dataclasses.field(
        default=0.6, metadata={"help": "lowest test accuracy that can be blessed"}
    )
    min_auc: float = dataclasses.field(
        default=0.7, metadata={"help": "lowest test ROC AUC that can be blessed (0 to skip)"}
    )
    max_regression: float = dataclasses.field(
        default=0.0,
        metadata={"help": "how much lower than the baseline's accuracy and AUC may still pass"},
    )
    threshold_policy: str = dataclasses.field(
        default="fixed",
        metadata={
            "help": "fixed: use --threshold; validation: maximise Youden's J on the "
            "validation split",
            "choices": THRESHOLD_POLICIES,
        },
    )
    threshold: float = dataclasses.field(
        default=0.5, metadata={"help": "decision threshold on P(happy) for the fixed policy"}
    )
    batch_size: int = dataclasses.field(default=64, metadata={"help": "images per batch"})


def model_file(model_path: str) -> str:
    """The model.keras file of a training directory (or `model_path` itself if it is one)."""
    path = os.path.join(model_path, MODEL_FILE) if os.path.isdir(model_path) else model_path
    if not os.path.isfile(path):
        raise errors.UserError(f"no trained model at {path} (expected a Keras {MODEL_FILE})")
    return path


def load_model(model_path: str):
    """Loads the Keras model, registering the project's custom layers first."""
    import keras

    try:
        importlib.import_module(_CUSTOM_OBJECTS_MODULE)
    except ModuleNotFoundError as error:
        if error.name != _CUSTOM_OBJECTS_MODULE:
            raise
    return keras.saving.load_model(model_file(model_path), compile=False)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file: ties a blessing and a model card to the exact model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_train_params(model_path: str) -> dict:
    """train_params.json beside the model ({} when there is none)."""
    path = os.path.join(os.path.dirname(model_file(model_path)), TRAIN_PARAMS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_history(model_path: str) -> dict[str, list[float]] | None:
    """The Keras history.csv beside the model as column → values (None when there is none)."""
    path = os.path.join(os.path.dirname(model_file(model_path)), HISTORY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    return {name: [float(row[name]) for row in rows] for name in rows[0]}


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, kind="stable")
    ranked_labels, ranked = labels[order], probabilities[order]
    # The last index of each run of equal scores: ties move the curve diagonally.
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1] if ranked.size else []
    true_positives = np.cumsum(ranked_labels)[last_of_tie]
    false_positives = np.cumsum(~ranked_labels)[last_of_tie]
    positives, negatives = labels.sum(), (~labels).sum()
    true_positive_rates = np.r_[0.0, true_positives / positives] if positives else None
    false_positive_rates = np.r_[0.0, false_positives / negatives] if negatives else None
    if true_positive_rates is None or false_positive_rates is None:
        return np.zeros(0), np.zeros(0)
    return false_positive_rates, true_positive_rates


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Exact area under the ROC curve; None when the labels hold only one class."""
    false_positive_rates, true_positive_rates = roc_points(labels, probabilities)
    if not false_positive_rates.size:
        return None
    return float(np.trapezoid(true_positive_rates, false_positive_rates))


def compute_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    predictions: np.ndarray | None = None,
) -> dict:
    """Accuracy, precision, recall, F1 and AUC for "happy" (class 1), and the confusion matrix.

    `predictions` are class ids when the model decided them itself (a served model applies its
    own threshold); otherwise P(happy) >= `threshold` is happy. The confusion matrix has the
    true labels as rows and the predictions as columns, in `schema.LABELS` order.
    """
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if predictions is None:
        predictions = (probabilities >= threshold).astype(np.int64)
    predictions = np.asarray(predictions).astype(np.int64)
    matrix = np.zeros((2, 2), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    (true_negatives, false_positives), (false_negatives, true_positives) = matrix.tolist()
    n = int(labels.size)
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, true_positives + false_negatives)
    f1 = _ratio(2 * precision * recall, precision + recall) if precision and recall else 0.0
    return {
        "n": n,
        "n_happy": int(labels.sum()),
        "n_sad": n - int(labels.sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(true_positives + true_negatives, n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": roc_auc(labels, probabilities),
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_labels": list(schema.LABELS),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold that maximises Youden's J = TPR - FPR, ties going to the one nearest 0.5.

    Candidates are the midpoints between neighbouring distinct probabilities (and 0.5), so the
    threshold sits between two examples rather than on one.

    Raises:
        UserError: the labels do not hold both classes.
    """
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.all() or not labels.any():
        raise errors.UserError(
            "the validation split must hold both classes to choose a threshold on it "
            "(use --threshold-policy fixed)"
        )
    distinct = np.unique(probabilities)
    candidates = np.r_[(distinct[:-1] + distinct[1:]) / 2, 0.5]
    above = probabilities[None, :] >= candidates[:, None]
    youden = above[:, labels].mean(axis=1) - above[:, ~labels].mean(axis=1)
    best = np.flatnonzero(np.isclose(youden, youden.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def bless(
    candidate: dict,
    baseline: dict | None,
    min_accuracy: float,
    min_auc: float,
    max_regression: float = 0.0,
) -> dict:
    """The blessing verdict: every check with whether it passed, and why not.

    Args:
        candidate: the candidate's `compute_metrics` on the evaluation split.
        baseline: the pushed model's metrics on the same split, or None if none is pushed.
        min_accuracy, min_auc: absolute thresholds (a min_auc <= 0 skips the AUC check).
        max_regression: how far below the baseline's accuracy and AUC still passes.

    Returns:
        {"blessed": bool, "reasons": [failed checks' messages], "checks": [...]}.
    """
    checks = [_at_least("accuracy", candidate["accuracy"], min_accuracy)]
    if min_auc > 0:
        checks.append(_at_least("auc", candidate["auc"], min_auc))
    if baseline is not None:
        for name in ("accuracy", "auc"):
            if baseline.get(name) is not None:
                checks.append(_not_worse(name, candidate[name], baseline[name], max_regression))
    reasons = [check["message"] for check in checks if not check["passed"]]
    return {"blessed": not reasons, "reasons": reasons, "checks": checks}


def _at_least(name: str, value: float | None, minimum: float) -> dict:
    if value is None:
        message = f"{name} is undefined on this split (it holds only one class)"
        return {"check": f"min_{name}", "passed": False, "message": message}
    passed = value >= minimum
    relation = ">=" if passed else "<"
    message = f"{name} {value:.4f} {relation} the minimum {minimum:.4f}"
    return {"check": f"min_{name}", "passed": passed, "message": message}


def _not_worse(name: str, value: float | None, baseline: float, max_regression: float) -> dict:
    passed = value is not None and value >= baseline - max_regression
    shown = "undefined" if value is None else f"{value:.4f}"
    verdict = "not worse than" if passed else "worse than"
    allowance = f" (allowing {max_regression:.4f})" if max_regression else ""
    message = f"{name} {shown} is {verdict} the pushed model's {baseline:.4f}{allowance}"
    return {"check": f"baseline_{name}", "passed": passed, "message": message}


class Baseline:
    """The latest pushed SavedModel version, called through its exported signatures."""

    def __init__(self, version_dir: str):
        self.path = version_dir
        self.card = push.read_model_card(version_dir)
        self._loaded = tf.saved_model.load(version_dir)
        if BASELINE_SIGNATURE not in self._loaded.signatures:
            raise errors.UserError(
                f"the pushed model {version_dir} has no {BASELINE_SIGNATURE!r} signature"
            )
        self._predict = self._loaded.signatures[BASELINE_SIGNATURE]

    def __call__(self, images: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(P(happy), class ids by its own threshold) for uint8 images (N, 256, 256, 3)."""
        outputs = self._predict(images=tf.cast(images, tf.float32))
        return outputs["happy_probability"].numpy(), outputs["class_id"].numpy()


def _predict_split(
    model, examples: tf.data.Dataset, batch_size: int, total: int, baseline: Baseline | None
) -> dict[str, np.ndarray]:
    """One pass over the split: labels, the candidate's and the baseline's predictions."""
    batches = examples.map(
        lambda features: (features[data.IMAGE_KEY], features[data.LABEL_KEY]),
        num_parallel_calls=data.AUTOTUNE,
    )
    batches = batches.batch(batch_size).prefetch(data.AUTOTUNE)
    results = {"labels": [], "probabilities": [], "baseline": [], "baseline_classes": []}
    progress = tqdm.tqdm(total=total, unit="image", desc="evaluate", leave=False)
    with progress:
        for images, labels in batches:
            scores = model.predict_on_batch(data.scale_images(images))
            results["labels"].append(labels.numpy())
            results["probabilities"].append(np.reshape(scores, [-1]))
            if baseline is not None:
                probabilities, classes = baseline(images)
                results["baseline"].append(probabilities)
                results["baseline_classes"].append(classes)
            progress.update(int(labels.shape[0]))
    return {name: np.concatenate(parts) if parts else None for name, parts in results.items()}


def _split_size(config: EvaluateConfig, split: str) -> int:
    return data.builder(config.dataset, config.data_dir).info.splits[split].num_examples


def _decision_threshold(config: EvaluateConfig, model) -> tuple[float, str]:
    if config.threshold_policy == "fixed":
        if not 0.0 <= config.threshold <= 1.0:
            raise errors.UserError(f"threshold must be within [0, 1], got {config.threshold}")
        return config.threshold, "fixed"
    examples = data.load_examples(config.dataset, "validation", config.data_dir)
    total = _split_size(config, "validation")
    predictions = _predict_split(model, examples, config.batch_size, total, baseline=None)
    threshold = choose_threshold(predictions["labels"], predictions["probabilities"])
    logger.info("decision threshold %.4f chosen on the validation split (Youden's J)", threshold)
    return threshold, "validation split, max Youden's J"


def _load_baseline(serving_base: str | None) -> Baseline | None:
    if not serving_base:
        return None
    version_dir = push.latest_version_dir(serving_base)
    if version_dir is None:
        logger.info("no model pushed to %s yet: blessing on thresholds only", serving_base)
        return None
    logger.info("baseline: %s", version_dir)
    return Baseline(version_dir)


def _write_json(path: str, content: dict) -> None:
    partial_path = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(partial_path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(partial_path, path)


def _summary(metrics: dict) -> dict:
    keys = ("n", "accuracy", "precision", "recall", "f1", "auc", "threshold")
    return {key: metrics[key] for key in keys}


def _plot(config: EvaluateConfig, metrics: dict, predictions: dict, baseline) -> dict:
    output = config.output_dir
    files = {
        "confusion_matrix": plots.confusion_matrix(
            os.path.join(output, CONFUSION_MATRIX_PLOT),
            metrics["confusion_matrix"],
            schema.LABELS,
            metrics["threshold"],
        )
    }
    labels = predictions["labels"]
    curves = {"candidate": (*roc_points(labels, predictions["probabilities"]), metrics["auc"])}
    if baseline is not None:
        baseline_auc = baseline["metrics"]["auc"]
        curves["pushed model"] = (*roc_points(labels, predictions["baseline"]), baseline_auc)
    files["roc_curve"] = plots.roc_curve(os.path.join(output, ROC_CURVE_PLOT), curves)
    history = read_history(config.model_path)
    if history is None:
        logger.warning("no %s beside the model: no training curves plotted", HISTORY_FILE)
    else:
        path = os.path.join(output, TRAINING_CURVES_PLOT)
        files["training_curves"] = plots.training_curves(path, history)
    return files


def run(config: EvaluateConfig) -> dict:
    """Evaluates, plots, blesses; writes everything under `config.output_dir`."""
    path = model_file(config.model_path)
    dataset = data.describe(config.dataset, config.data_dir)
    if tuple(dataset["labels"]) != schema.LABELS:
        raise errors.UserError(
            f"dataset {config.dataset!r} has labels {dataset['labels']}, expected {schema.LABELS}"
        )
    model = load_model(path)
    threshold, threshold_source = _decision_threshold(config, model)
    baseline_model = _load_baseline(config.baseline)

    examples = data.load_examples(config.dataset, config.split, config.data_dir)
    total = _split_size(config, config.split)
    predictions = _predict_split(model, examples, config.batch_size, total, baseline_model)
    if predictions["labels"] is None:
        raise errors.UserError(f"split {config.split!r} of {config.dataset!r} is empty")
    metrics = compute_metrics(predictions["labels"], predictions["probabilities"], threshold)
    model_sha256 = file_sha256(path)
    metrics.update(
        threshold_policy=config.threshold_policy,
        threshold_source=threshold_source,
        model=path,
        model_sha256=model_sha256,
        dataset={**dataset, "split": config.split},
    )
    baseline = None
    if baseline_model is not None:
        baseline_metrics = compute_metrics(
            predictions["labels"],
            predictions["baseline"],
            baseline_model.card.get("threshold", 0.5),
            predictions=predictions["baseline_classes"],
        )
        baseline = {"model": baseline_model.path, "metrics": baseline_metrics}

    verdict = bless(
        metrics,
        baseline and baseline["metrics"],
        config.min_accuracy,
        config.min_auc,
        config.max_regression,
    )
    blessing = {
        **verdict,
        "model": path,
        "model_sha256": model_sha256,
        "candidate": _summary(metrics),
        "baseline": baseline and {**baseline, "metrics": _summary(baseline["metrics"])},
        "thresholds": {
            "min_accuracy": config.min_accuracy,
            "min_auc": config.min_auc,
            "max_regression": config.max_regression,
        },
        "dataset": metrics["dataset"],
    }
    os.makedirs(config.output_dir, exist_ok=True)
    files = _plot(config, metrics, predictions, baseline)
    _write_json(os.path.join(config.output_dir, METRICS_FILE), metrics)
    _write_json(os.path.join(config.output_dir, BLESSING_FILE), blessing)
    for reason in verdict["reasons"]:
        logger.warning("not blessed: %s", reason)
    return {
        "output_dir": config.output_dir,
        "blessed": verdict["blessed"],
        "reasons": verdict["reasons"],
        "metrics": _summary(metrics),
        "baseline": baseline and baseline["model"],
        "files": sorted(os.path.basename(name) for name in files.values()),
    }
