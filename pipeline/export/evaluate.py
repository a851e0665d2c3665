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

import dataclasses
import logging
import math
import os

import numpy as np
import tensorflow as tf
import tqdm

from pipeline import artifacts, contract, errors, plots
from pipeline import config as config_lib
from pipeline.train import input_pipeline, models

CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
ROC_CURVE_PLOT = "roc_curve.png"
_BATCH_SIZE = 64
_Z_95 = 1.959964  # the standard normal's 97.5th percentile: two-sided 95% intervals

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluateArguments:
    """What `happysad evaluate` evaluates, on which data, against which pushed model."""

    model_path: str  # the training output directory, or its model.keras file
    output_dir: str  # where metrics.json, blessing.json and the PNG plots go
    dataset: str = input_pipeline.DEFAULT_DATASET  # TFDS name[/config][:version]
    data_dir: str | None = None  # TFDS data_dir (default: TFDS's own)
    # serving base path of the pushed model; its latest version is the baseline the candidate
    # must not be worse than (none yet: thresholds only)
    baseline: str | None = None


def model_file(model_path: str) -> str:
    """The model.keras of a training directory (or `model_path` itself if it is a file).

    Raises:
        UserError: there is no such file.
    """
    path = (
        os.path.join(model_path, contract.MODEL_FILE) if os.path.isdir(model_path) else model_path
    )
    if not os.path.isfile(path):
        raise errors.UserError(
            f"no trained model at {path} (expected a Keras {contract.MODEL_FILE})"
        )
    return path


def read_train_params(model_path: str) -> dict:
    """train_params.json beside the model ({} when there is none)."""
    path = os.path.join(os.path.dirname(model_file(model_path)), contract.TRAIN_PARAMS_FILE)
    return artifacts.read_json(path) if os.path.isfile(path) else {}


def wilson_interval(successes: int, n: int, z: float = _Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (Wilson 1927; Brown, Cai & DasGupta 2001).

    Returns (low, high) within [0, 1]; None for n = 0. With z = 1.96 it is the 95% interval
    for the accuracy of n independent test images.
    """
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


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
    true labels as rows and the predictions as columns, in `contract.LABELS` order;
    `accuracy_ci95` is accuracy's 95% Wilson interval.
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
        "accuracy_ci95": wilson_interval(true_positives + true_negatives, n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": roc_auc(labels, probabilities),
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_labels": list(contract.LABELS),
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
        card_path = os.path.join(version_dir, contract.MODEL_CARD_PATH)
        self.card = artifacts.read_json(card_path) if tf.io.gfile.exists(card_path) else {}
        self._loaded = tf.saved_model.load(version_dir)
        if contract.IMAGES_SIGNATURE not in self._loaded.signatures:
            raise errors.UserError(
                f"the pushed model {version_dir} has no {contract.IMAGES_SIGNATURE!r} signature"
            )
        self._predict = self._loaded.signatures[contract.IMAGES_SIGNATURE]

    def __call__(self, images: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(P(happy), class ids by its own threshold) for uint8 images (N, 256, 256, 3)."""
        outputs = self._predict(**{contract.IMAGES_INPUT: tf.cast(images, tf.float32)})
        return (
            outputs[contract.PROBABILITY_OUTPUT].numpy(),
            outputs[contract.CLASS_ID_OUTPUT].numpy(),
        )


def _predict_split(
    model, examples: tf.data.Dataset, total: int, baseline: Baseline | None
) -> dict[str, np.ndarray]:
    """One pass over the split: labels, the candidate's and the baseline's predictions."""
    batches = examples.map(
        lambda features: (
            features[input_pipeline.IMAGE_KEY],
            features[input_pipeline.LABEL_KEY],
        ),
        num_parallel_calls=input_pipeline.AUTOTUNE,
    )
    batches = batches.batch(_BATCH_SIZE).prefetch(input_pipeline.AUTOTUNE)
    results = {"labels": [], "probabilities": [], "baseline": [], "baseline_classes": []}
    progress = tqdm.tqdm(total=total, unit="image", desc="evaluate", leave=False)
    with progress:
        for images, labels in batches:
            scores = model.predict_on_batch(input_pipeline.scale_images(images))
            results["labels"].append(labels.numpy())
            results["probabilities"].append(np.reshape(scores, [-1]))
            if baseline is not None:
                probabilities, classes = baseline(images)
                results["baseline"].append(probabilities)
                results["baseline_classes"].append(classes)
            progress.update(int(labels.shape[0]))
    return {name: np.concatenate(parts) if parts else None for name, parts in results.items()}


def _split_size(dataset: str, data_dir: str | None, split: str) -> int:
    return input_pipeline.builder(dataset, data_dir).info.splits[split].num_examples


def _decision_threshold(
    config: config_lib.EvaluateConfig, model, dataset: str, data_dir: str | None
) -> tuple[float, str]:
    if config.threshold_policy == "fixed":
        return config.threshold, "fixed (--threshold)"
    examples = input_pipeline.load_examples(dataset, "validation", data_dir)
    total = _split_size(dataset, data_dir, "validation")
    predictions = _predict_split(model, examples, total, baseline=None)
    threshold = choose_threshold(predictions["labels"], predictions["probabilities"])
    logger.info("decision threshold %.4f chosen on the validation split (Youden's J)", threshold)
    return threshold, "validation split, max Youden's J"


def _load_baseline(serving_base: str | None) -> Baseline | None:
    if not serving_base:
        return None
    version_dir = artifacts.latest_version_dir(serving_base)
    if version_dir is None:
        logger.info("no model pushed to %s yet: blessing on thresholds only", serving_base)
        return None
    logger.info("baseline: %s", version_dir)
    return Baseline(version_dir)


def _summary(metrics: dict) -> dict:
    keys = ("n", "accuracy", "accuracy_ci95", "precision", "recall", "f1", "auc", "threshold")
    return {key: metrics[key] for key in keys}


def _plot(output_dir: str, model_path: str, metrics: dict, predictions: dict, baseline) -> dict:
    files = {
        "confusion_matrix": plots.confusion_matrix(
            os.path.join(output_dir, CONFUSION_MATRIX_PLOT),
            metrics["confusion_matrix"],
            contract.LABELS,
            metrics["threshold"],
        )
    }
    labels = predictions["labels"]
    curves = {"candidate": (*roc_points(labels, predictions["probabilities"]), metrics["auc"])}
    if baseline is not None:
        baseline_auc = baseline["metrics"]["auc"]
        curves["pushed model"] = (*roc_points(labels, predictions["baseline"]), baseline_auc)
    files["roc_curve"] = plots.roc_curve(os.path.join(output_dir, ROC_CURVE_PLOT), curves)
    history_path = os.path.join(os.path.dirname(model_file(model_path)), contract.HISTORY_FILE)
    history = artifacts.read_history(history_path)
    if not history:
        logger.warning("no %s beside the model: no training curves plotted", contract.HISTORY_FILE)
    else:
        path = os.path.join(output_dir, contract.TRAINING_CURVES_PLOT)
        files["training_curves"] = plots.training_curves(path, history)
    return files


def run(
    config: config_lib.Config,
    *,
    model_path: str,
    output_dir: str,
    dataset: str = input_pipeline.DEFAULT_DATASET,
    data_dir: str | None = None,
    baseline: str | None = None,
) -> dict:
    """Evaluates, plots, blesses; writes metrics.json, blessing.json and plots to output_dir.

    Args:
        config: `config.evaluate` holds the split, the bar and the threshold policy.
        model_path: a training directory or its model.keras.
        output_dir: where the outputs go.
        dataset, data_dir: the TFDS dataset (the same the model was trained on).
        baseline: a serving base path whose latest version the candidate must not be worse
            than (None or empty: thresholds only).

    Returns:
        {"output_dir", "blessed", "reasons", "metrics" (n, accuracy and its 95% interval,
        precision, recall, f1, auc, threshold), "threshold_source", "baseline", "files"}.

    Raises:
        UserError: no model, an unknown dataset or an empty split.
    """
    evaluation = config.evaluate
    path = model_file(model_path)
    description = input_pipeline.describe(dataset, data_dir)
    if tuple(description["labels"]) != contract.LABELS:
        raise errors.UserError(
            f"dataset {dataset!r} has labels {description['labels']}, expected {contract.LABELS}"
        )
    model = models.load_model(path)
    threshold, threshold_source = _decision_threshold(evaluation, model, dataset, data_dir)
    baseline_model = _load_baseline(baseline)

    examples = input_pipeline.load_examples(dataset, evaluation.test_split, data_dir)
    total = _split_size(dataset, data_dir, evaluation.test_split)
    predictions = _predict_split(model, examples, total, baseline_model)
    if predictions["labels"] is None:
        raise errors.UserError(f"split {evaluation.test_split!r} of {dataset!r} is empty")
    metrics = compute_metrics(predictions["labels"], predictions["probabilities"], threshold)
    model_sha256 = artifacts.file_sha256(path)
    metrics.update(
        threshold_policy=evaluation.threshold_policy,
        threshold_source=threshold_source,
        model=path,
        model_sha256=model_sha256,
        dataset={**description, "split": evaluation.test_split},
    )
    baseline_result = None
    if baseline_model is not None:
        baseline_metrics = compute_metrics(
            predictions["labels"],
            predictions["baseline"],
            baseline_model.card.get("threshold", contract.DEFAULT_THRESHOLD),
            predictions=predictions["baseline_classes"],
        )
        baseline_result = {"model": baseline_model.path, "metrics": baseline_metrics}

    verdict = bless(
        metrics,
        baseline_result and baseline_result["metrics"],
        evaluation.min_accuracy,
        evaluation.min_auc,
        evaluation.max_regression,
    )
    blessing = {
        **verdict,
        "model": path,
        "model_sha256": model_sha256,
        "candidate": _summary(metrics),
        "baseline": baseline_result
        and {**baseline_result, "metrics": _summary(baseline_result["metrics"])},
        "thresholds": {
            "min_accuracy": evaluation.min_accuracy,
            "min_auc": evaluation.min_auc,
            "max_regression": evaluation.max_regression,
        },
        "dataset": metrics["dataset"],
    }
    os.makedirs(output_dir, exist_ok=True)
    files = _plot(output_dir, model_path, metrics, predictions, baseline_result)
    artifacts.write_json(os.path.join(output_dir, contract.METRICS_FILE), metrics)
    artifacts.write_json(os.path.join(output_dir, contract.BLESSING_FILE), blessing)
    low, high = metrics["accuracy_ci95"]
    logger.info(
        "accuracy %.3f (95%% CI %.3f-%.3f, n=%d) at threshold %.3f (%s)",
        metrics["accuracy"],
        low,
        high,
        metrics["n"],
        threshold,
        threshold_source,
    )
    for reason in verdict["reasons"]:
        logger.warning("not blessed: %s", reason)
    return {
        "output_dir": output_dir,
        "blessed": verdict["blessed"],
        "reasons": verdict["reasons"],
        "metrics": _summary(metrics),
        "threshold_source": threshold_source,
        "baseline": baseline_result and baseline_result["model"],
        "files": sorted(os.path.basename(name) for name in files.values()),
    }
