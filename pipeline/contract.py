"""The serving contract and artifact names: defined here once, imported everywhere else.

What a trained, exported and served happysad model promises its clients (TF Serving's
conventions: a `serving_default` signature, numbered version folders, warm-up requests under
`assets.extra/`), and the names of the files each stage writes for the next one to read.
"""

import os

# Class ids: 0 is sad, 1 is happy (the seed's convention, and the TFDS ClassLabel order).
LABELS = ("sad", "happy")
POSITIVE_LABEL = "happy"
IMAGE_SIZE = 256  # side of the square uint8 RGB images the model is trained and served on
CHANNELS = 3

MODEL_NAME = "happysad"  # the default name under /v1/models/<name> and in serving base paths
DEFAULT_THRESHOLD = 0.5  # P(happy) >= threshold is "happy" unless evaluation chose another

# The exported SavedModel's signatures (saved_model_cli show --all --dir <version>).
SERVING_SIGNATURE = "serving_default"  # encoded image bytes -> outputs
IMAGES_SIGNATURE = "predict_images"  # float32 [N, 256, 256, 3] pixels 0..255 -> outputs
BYTES_INPUT = "image_bytes"  # DT_STRING [-1]
IMAGES_INPUT = "images"  # DT_FLOAT [-1, 256, 256, 3]
PROBABILITY_OUTPUT = "happy_probability"  # DT_FLOAT [-1]
LABEL_OUTPUT = "label"  # DT_STRING [-1]: b"happy" or b"sad"
CLASS_ID_OUTPUT = "class_id"  # DT_INT64 [-1]: 1 happy, 0 sad
OUTPUTS = (PROBABILITY_OUTPUT, LABEL_OUTPUT, CLASS_ID_OUTPUT)

# Inside a SavedModel version folder (TF Serving's layout).
SAVED_MODEL_FILE = "saved_model.pb"
LABELS_FILE = "labels.txt"  # in assets/
MODEL_CARD_PATH = os.path.join("assets", "model_card.json")
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Training output.
MODEL_FILE = "model.keras"
TRAIN_PARAMS_FILE = "train_params.json"
HISTORY_FILE = "history.csv"
TRAINING_CURVES_PLOT = "training_curves.png"

# Evaluation output.
METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"

# The data job's output, beside the dataset version it describes.
MANIFEST_FILE = "manifest.csv"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"


def label_id(label: str) -> int:
    """The class id (0 or 1) of a label name.

    Raises:
        ValueError: for anything but "sad" or "happy".
    """
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown label {label!r}: expected one of {LABELS}") from None
