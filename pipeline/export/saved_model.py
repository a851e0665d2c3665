"""Export a trained Keras model as a TF Serving SavedModel version: the serving contract.

`<export_base>/<version>/` holds:
  serving_default  image_bytes (DT_STRING [-1]: encoded JPEG/PNG/GIF/BMP/WebP of any size,
                   colour, grayscale or with alpha) -> happy_probability (DT_FLOAT [-1]),
                   label (DT_STRING [-1], b"happy"/b"sad"), class_id (DT_INT64 [-1]).
  predict_images   images (DT_FLOAT [-1, 256, 256, 3], RGB pixels 0..255) -> the same outputs.
  assets/labels.txt, assets/model_card.json, assets.extra/tf_serving_warmup_requests.

Decoding, EXIF orientation, alpha, resizing and scaling run inside the graph and reproduce
`pipeline.data.imaging.clean_image_bytes` (stretch policy): a raw file served gets the probability
its preprocessed training example gets. `label` and `class_id` apply the decision threshold
stored with the model (P(happy) >= threshold is happy). Serving needs TensorFlow only.
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
from pipeline.export import evaluate, warmup
from pipeline.train import models

IMAGE_SIZE = contract.IMAGE_SIZE
# Images over this many pixels are refused from their header, before decoding (as imaging does).
MAX_PIXELS = config_lib.TransformConfig().max_pixels
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# EXIF lives in an APP1 segment, which precedes the image data and holds at most 64 KiB.
_EXIF_HEADER = "Exif\x00\x00"
_EXIF_SEARCH_BYTES = 1 << 16
_ORIENTATION_TAG = 0x0112
_MAX_IFD_ENTRIES = 256
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


# In-graph image preprocessing: the serving twin of pipeline.imaging.


def _exif_orientation(tiff: tf.Tensor) -> tf.Tensor:
    """The Orientation tag (1..8) of IFD0 in a TIFF block (EXIF's payload), 1 if absent.

    Reads past the end or at a bogus offset give zeros, never an error: a damaged EXIF block
    leaves the image as it is, as Pillow does.
    """
    data = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int32)
    size = tf.size(data)
    padded = tf.concat([data, [0]], axis=0)  # so that a gather always has an element

    def byte(positions):
        inside = (positions >= 0) & (positions < size)
        return tf.where(inside, tf.gather(padded, tf.clip_by_value(positions, 0, size)), 0)

    little_endian = tf.equal(byte(0), ord("I"))

    def uint16(positions):
        first, second = byte(positions), byte(positions + 1)
        return tf.where(little_endian, first + second * 256, first * 256 + second)

    def uint32(positions):
        low, high = uint16(positions), uint16(positions + 2)
        return tf.where(little_endian, low + high * 65536, low * 65536 + high)

    directory = uint32(4)
    count = tf.clip_by_value(uint16(directory), 0, _MAX_IFD_ENTRIES)
    entries = directory + 2 + 12 * tf.range(count)
    values = uint16(entries + 8)
    found = (uint16(entries) == _ORIENTATION_TAG) & (values >= 1) & (values <= 8)
    orientation = tf.reduce_max(tf.where(found, values, 0))
    return tf.where((uint16(2) == 42) & (orientation >= 1), orientation, 1)


def jpeg_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1..8) of one JPEG, read from its APP1 segment; 1 without one."""
    head = tf.strings.substr(image_bytes, 0, _EXIF_SEARCH_BYTES)
    pieces = tf.strings.split(head, sep=_EXIF_HEADER, maxsplit=1)
    start = tf.strings.length(pieces[0])
    marker = tf.strings.substr(head, tf.maximum(start - 4, 0), 2)
    has_exif = (tf.size(pieces) > 1) & (start >= 4) & tf.equal(marker, b"\xff\xe1")
    return tf.cond(
        has_exif,
        lambda: _exif_orientation(tf.strings.substr(head, start + 6, _EXIF_SEARCH_BYTES)),
        lambda: tf.constant(1),
    )


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Applies an EXIF orientation as PIL's ImageOps.exif_transpose does."""

    def transpose():
        return tf.transpose(image, [1, 0, 2])

    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        transpose,
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(transpose(), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    return tf.switch_case(orientation - 1, branches)


def _check_pixels(height: tf.Tensor, width: tf.Tensor) -> tf.Operation:
    pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    return tf.debugging.assert_less_equal(
        pixels,
        tf.constant(MAX_PIXELS, tf.int64),
        message=f"image over the pixel budget of {MAX_PIXELS} pixels",
    )


def _decode_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    shape = tf.image.extract_jpeg_shape(image_bytes)
    with tf.control_dependencies([_check_pixels(shape[0], shape[1])]):
        # INTEGER_ACCURATE is libjpeg's ISLOW DCT, what Pillow uses: identical pixels.
        image = tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")
    return _orient(image, jpeg_orientation(image_bytes))


def _decode_png(image_bytes: tf.Tensor) -> tf.Tensor:
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, 16, 8), tf.uint8), tf.int32)
    width = header[0] * 2**24 + header[1] * 2**16 + header[2] * 2**8 + header[3]
    height = header[4] * 2**24 + header[5] * 2**16 + header[6] * 2**8 + header[7]
    with tf.control_dependencies([_check_pixels(height, width)]):
        rgba = tf.cast(tf.io.decode_png(image_bytes, channels=4), tf.float32)
    # Transparency over white, as imaging.to_rgb composites it.
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return tf.cast(tf.round(rgb), tf.uint8)


def _decode_other(image_bytes: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """One encoded image (scalar string) to uint8 RGB (height, width, 3), as imaging cleans it.

    JPEG: Pillow's DCT and the EXIF orientation; PNG: transparency composited on white;
    GIF, BMP, WebP: TensorFlow's decoder. The format comes from the content, never a name.
    """
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    image = tf.case(
        [(is_jpeg, lambda: _decode_jpeg(image_bytes)), (is_png, lambda: _decode_png(image_bytes))],
        default=lambda: _decode_other(image_bytes),
    )
    return tf.ensure_shape(image, [None, None, 3])


def resize(image: tf.Tensor) -> tf.Tensor:
    """uint8 RGB of any size to float32 (256, 256, 3) holding whole numbers 0..255.

    The `stretch` policy, with the method that reproduces imaging's cv2.INTER_AREA; rounding
    makes the pixels exactly the uint8 values a preprocessed example stores.
    """
    resized = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="area")
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


def preprocess_image_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
    """A batch of encoded images (strings [N]) to float32 pixels [N, 256, 256, 3] in 0..255."""
    return tf.map_fn(
        lambda one: resize(decode_image(one)),
        image_bytes,
        fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
    )


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
            lambda image_bytes: outputs(preprocess_image_bytes(image_bytes)),
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

    if not artifacts.is_local(export_base):
        # No atomic rename on object stores: export locally, then copy saved_model.pb last.
        with tempfile.TemporaryDirectory(prefix="happysad-export-") as staging:
            local_dir = os.path.join(staging, str(version))
            result = export_model(model, local_dir, card["threshold"], card, images, name)
            path = artifacts.publish(local_dir, export_base, version)
    else:
        staging = artifacts.staging_dir(export_base, version)
        try:
            result = export_model(model, staging, card["threshold"], card, images, name)
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
