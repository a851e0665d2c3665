"""Export a trained Keras model as a TF Serving SavedModel version: the serving contract.

`<export_base>/<version>/` holds:
  serving_default  image_bytes (DT_STRING [-1]: encoded JPEG/PNG/GIF/BMP/WebP of any size,
                   colour, grayscale or with alpha) -> happy_probability (DT_FLOAT [-1]),
                   label (DT_STRING [-1], b"happy"/b"sad"), class_id (DT_INT64 [-1]).
  predict_images   images (DT_FLOAT [-1, 256, 256, 3], RGB pixels 0..255) -> the same outputs.
  assets/labels.txt, assets/model_card.json, assets.extra/tf_serving_warmup_requests.

`serving_default` runs THE transform (pipeline.data.transform.transform_batch) with the options
the training dataset was built with (from its metadata, recorded in train_params.json): the
same function that made every training example, so a raw file served gets the probability its
training example gets, and a file the data job refused is answered 400 with its reason. The
headers' pixel budgets (per image and per request) are checked in the graph before anything is
decoded, so the real TF Serving serving this export is protected too. `label` and `class_id`
apply the decision threshold stored with the model (P(happy) >= threshold is happy). Serving
needs TensorFlow only: every op is a core op.
"""

import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence

import tensorflow as tf

from pipeline import artifacts, contract, errors
from pipeline import config as config_lib
from pipeline.data import transform
from pipeline.export import evaluate, warmup
from pipeline.train import models

IMAGE_SIZE = contract.IMAGE_SIZE
_MAX_REQUEST_PIXELS = config_lib.ExportConfig.max_request_pixels
# What the model card keeps of input_pipeline.describe(): no local paths.
_DATASET_KEYS = ("name", "config", "version", "splits")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportArguments:
    """Which trained model `happysad export` exports, where, and what its card records."""

    model_path: str  # the training output directory, or its model.keras file
    export_base: str  # base path; the model goes to <export_base>/<version>/
    # version number (default: one more than the highest in the base); an existing version is
    # never overwritten
    version: int | None = None
    # output of `happysad evaluate`: its metrics, decision threshold and blessing go into the
    # model card
    evaluation_dir: str | None = None
    lineage: str | None = None  # a JSON file recorded in the model card under 'lineage'


# The SavedModel.


def _labels_table(directory: str) -> tf.lookup.StaticHashTable:
    """class id -> label name, read from labels.txt (which the SavedModel keeps as an asset)."""
    path = os.path.join(directory, contract.LABELS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(contract.LABELS) + "\n")
    initializer = tf.lookup.TextFileInitializer(
        path,
        key_dtype=tf.int64,
        key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        value_dtype=tf.string,
        value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
    )
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _outputs_fn(model, labels, threshold: float):
    def outputs(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = model(pixels / 255.0, training=False)
        probabilities = tf.reshape(tf.cast(scores, tf.float32), [-1])
        class_ids = tf.cast(probabilities >= threshold, tf.int64)
        return {
            contract.PROBABILITY_OUTPUT: probabilities,
            contract.LABEL_OUTPUT: labels.lookup(class_ids),
            contract.CLASS_ID_OUTPUT: class_ids,
        }

    return outputs


def export_model(
    model,
    export_dir: str,
    threshold: float = contract.DEFAULT_THRESHOLD,
    model_card: dict | None = None,
    warmup_images: Sequence[bytes] | None = None,
    model_name: str = contract.MODEL_NAME,
    transform_options: config_lib.TransformConfig = transform.DEFAULT_OPTIONS,
    max_request_pixels: int = _MAX_REQUEST_PIXELS,
) -> dict:
    """Writes `model` as a TF Serving SavedModel with the serving contract into `export_dir`.

    This writes in place; `run` (and `pipeline.export.push`) make the version appear atomically.

    Args:
        model: a Keras model from float32 (None, 256, 256, 3) in [0, 1] to (None, 1) P(happy).
        export_dir: the local version directory to create (it must not exist yet).
        threshold: P(happy) >= threshold is served as "happy"; stored in the model card too.
        model_card: what to record in assets/model_card.json (threshold, labels, signatures
            and versions are added).
        warmup_images: encoded images for the TF Serving warm-up file; None for a few
            built-in sample faces, empty for no warm-up file.
        model_name: the model name the warm-up requests carry.
        transform_options: THE transform's options, those the training data was made with.
        max_request_pixels: the most pixels (from the headers) one request's images may hold.

    Returns:
        {"path", "threshold", "signatures", "warmup_requests"}.

    Raises:
        ValueError: a threshold outside [0, 1] or an existing `export_dir`.
    """
    import keras

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    if tf.io.gfile.exists(export_dir):
        raise ValueError(f"{export_dir} already exists: an export never overwrites")
    with tempfile.TemporaryDirectory(prefix="happysad-assets-") as assets:
        labels = _labels_table(assets)
        outputs = _outputs_fn(model, labels, float(threshold))
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(labels)
        archive.add_endpoint(
            contract.SERVING_SIGNATURE,
            lambda image_bytes: outputs(
                tf.cast(
                    transform.transform_batch(
                        image_bytes, transform_options, max_batch_pixels=max_request_pixels
                    ),
                    tf.float32,
                )
            ),
            input_signature=[tf.TensorSpec([None], tf.string, name=contract.BYTES_INPUT)],
        )
        archive.add_endpoint(
            contract.IMAGES_SIGNATURE,
            outputs,
            input_signature=[
                tf.TensorSpec(
                    [None, IMAGE_SIZE, IMAGE_SIZE, contract.CHANNELS],
                    tf.float32,
                    name=contract.IMAGES_INPUT,
                )
            ],
        )
        archive.write_out(export_dir, verbose=False)

    card = {
        **(model_card or {}),
        "threshold": float(threshold),
        "labels": list(contract.LABELS),
        "signatures": _signature_card(),
        "transform": config_lib.to_dict(transform_options),
        "accepted_formats": list(transform.ACCEPTED_FORMATS),
        "max_request_pixels": max_request_pixels,
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    card.setdefault("created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    artifacts.write_text(
        os.path.join(export_dir, contract.MODEL_CARD_PATH), json.dumps(card, indent=2) + "\n"
    )
    if warmup_images is None:
        warmup_images = warmup.sample_images()
    requests = warmup.write(export_dir, warmup_images, model_name) if warmup_images else 0
    logger.info("exported %s (%d warm-up requests)", export_dir, requests)
    return {
        "path": export_dir,
        "threshold": float(threshold),
        "signatures": [contract.SERVING_SIGNATURE, contract.IMAGES_SIGNATURE],
        "warmup_requests": requests,
    }


def _signature_card() -> dict:
    outputs = {
        contract.PROBABILITY_OUTPUT: "DT_FLOAT [-1]",
        contract.LABEL_OUTPUT: "DT_STRING [-1]",
        contract.CLASS_ID_OUTPUT: "DT_INT64 [-1]",
    }
    return {
        contract.SERVING_SIGNATURE: {
            "inputs": {contract.BYTES_INPUT: "DT_STRING [-1]"},
            "outputs": outputs,
        },
        contract.IMAGES_SIGNATURE: {
            "inputs": {contract.IMAGES_INPUT: f"DT_FLOAT [-1, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]"},
            "outputs": outputs,
        },
    }


# The model card and the export stage.


def _read_evaluation(evaluation_dir: str | None, model_sha256: str) -> tuple[dict, dict | None]:
    """(metrics.json, blessing.json or None) of an evaluation of this very model."""
    if not evaluation_dir:
        return {}, None
    metrics = artifacts.read_json(os.path.join(evaluation_dir, contract.METRICS_FILE))
    evaluated = metrics.get("model_sha256")
    if evaluated and evaluated != model_sha256:
        raise errors.UserError(
            f"the evaluation in {evaluation_dir} is of another model (sha256 {evaluated[:12]}…), "
            "not of the one being exported: evaluate this model first"
        )
    blessing_path = os.path.join(evaluation_dir, contract.BLESSING_FILE)
    blessing = artifacts.read_json(blessing_path) if tf.io.gfile.exists(blessing_path) else None
    return metrics, blessing


def build_model_card(
    config: config_lib.Config,
    model_path: str,
    model_sha256: str,
    evaluation_dir: str | None = None,
    lineage: str | None = None,
) -> dict:
    """Dataset, metrics, threshold, configuration, code version and lineage of a model.

    The decision threshold is the evaluation's (metrics.json) when there is one, else
    `config.evaluate.threshold`.
    """
    train_params = evaluate.read_train_params(model_path)
    metrics, blessing = _read_evaluation(evaluation_dir, model_sha256)
    if "threshold" in metrics:
        threshold = float(metrics["threshold"])
        threshold_source = metrics.get("threshold_source", "evaluation")
    else:
        threshold, threshold_source = config.evaluate.threshold, "--threshold"
    dataset = train_params.get("dataset") or metrics.get("dataset") or {}
    if isinstance(dataset, dict):
        dataset = {key: dataset[key] for key in _DATASET_KEYS if key in dataset}
    summary_keys = (
        "n",
        "accuracy",
        "accuracy_ci95",
        "precision",
        "recall",
        "f1",
        "auc",
        "confusion_matrix",
    )
    evaluated = {key: metrics[key] for key in summary_keys if key in metrics}
    if metrics.get("dataset", {}).get("split"):
        evaluated["split"] = metrics["dataset"]["split"]
    return {
        "model_name": config.export.model_name,
        "description": "Binary happy/sad face classifier: P(happy) from a face photo.",
        "dataset": dataset,
        "metrics": evaluated,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "config": train_params.get("config", {}),
        "code_version": train_params.get("code_version") or artifacts.code_version(),
        "export_code_version": artifacts.code_version(),
        "model_sha256": model_sha256,
        "blessing": blessing,
        "lineage": artifacts.read_json(lineage) if lineage else {},
    }


def training_transform(model_path: str) -> config_lib.TransformConfig:
    """The transform options of the dataset the model was trained on (train_params.json).

    A dataset that does not record them (one not built by the data job) was made with no
    transform of ours: the default options are served, with a warning.
    """
    dataset = evaluate.read_train_params(model_path).get("dataset") or {}
    if not dataset.get("transform"):
        logger.warning(
            "the training dataset %s records no transform options: serving the defaults",
            dataset.get("name", "(unknown)"),
        )
        return config_lib.TransformConfig()
    return config_lib.from_dict(config_lib.TransformConfig, dataset["transform"])


def run(
    config: config_lib.Config,
    *,
    model_path: str,
    export_base: str,
    version: int | None = None,
    evaluation_dir: str | None = None,
    lineage: str | None = None,
) -> dict:
    """Exports a new version under `export_base`; it appears whole or not at all.

    Returns:
        {"path", "version", "threshold", "warmup_requests", "blessed", "model_sha256"}.

    Raises:
        UserError: no model, an evaluation of another model, an existing version.
    """
    model_file = evaluate.model_file(model_path)
    model_sha256 = artifacts.file_sha256(model_file)
    card = build_model_card(config, model_path, model_sha256, evaluation_dir, lineage)
    version = artifacts.check_version(export_base, version)
    model = models.load_model(model_file)
    images = warmup.sample_images(config.export.warmup_images)
    name = config.export.model_name
    options = training_transform(model_path)
    extra = {"transform_options": options, "max_request_pixels": config.export.max_request_pixels}

    if not artifacts.is_local(export_base):
        # No atomic rename on object stores: export locally, then copy saved_model.pb last.
        with tempfile.TemporaryDirectory(prefix="happysad-export-") as staging:
            local_dir = os.path.join(staging, str(version))
            result = export_model(model, local_dir, card["threshold"], card, images, name, **extra)
            path = artifacts.publish(local_dir, export_base, version)
    else:
        staging = artifacts.staging_dir(export_base, version)
        try:
            result = export_model(model, staging, card["threshold"], card, images, name, **extra)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        path = artifacts.publish(staging, export_base, version, move=True)
    return {
        "path": path,
        "version": version,
        "threshold": result["threshold"],
        "warmup_requests": result["warmup_requests"],
        "blessed": card["blessing"]["blessed"] if card["blessing"] else None,
        "model_sha256": model_sha256,
    }
