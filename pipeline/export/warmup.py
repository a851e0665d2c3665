"""TF Serving warm-up requests: a few real-looking face photos, encoded as clients send them.

TF Serving replays `assets.extra/tf_serving_warmup_requests` before it serves a version, so the
graph, the decoders and the resize kernels are ready for the first real request. The samples
are synthetic faces (no user data ends up in the model) in the encodings and sizes that real
traffic has: JPEG and PNG, colour, grayscale and with alpha, smaller and larger than 256.
"""

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline.data import schema, synthetic_faces
from serving import prediction_log

MODEL_NAME = "happysad"
DEFAULT_COUNT = 4
SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"
# (side in pixels, format, Pillow mode): cycled through for the sample images.
_VARIANTS = (
    (250, "JPEG", "RGB"),  # LFW's size
    (480, "JPEG", "RGB"),
    (256, "PNG", "RGB"),
    (200, "JPEG", "L"),
    (320, "PNG", "RGBA"),
)
_JPEG_QUALITY = 90


def encode(image: np.ndarray, image_format: str = "JPEG", mode: str = "RGB") -> bytes:
    """RGB uint8 pixels to encoded bytes in a Pillow format and mode ("RGB", "L", "RGBA")."""
    picture = Image.fromarray(image).convert(mode)
    buffer = io.BytesIO()
    options = {"quality": _JPEG_QUALITY} if image_format == "JPEG" else {}
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def sample_images(count: int = DEFAULT_COUNT, seed: int = 0) -> list[bytes]:
    """`count` encoded synthetic faces, alternately sad and happy, in varied sizes and formats."""
    images = []
    for index in range(count):
        side, image_format, mode = _VARIANTS[index % len(_VARIANTS)]
        label = schema.LABELS[index % 2]
        face = synthetic_faces.render_face(synthetic_faces.image_seed(seed, index), label, side)
        images.append(encode(face, image_format, mode))
    return images


def requests(images: Sequence[bytes], model_name: str = MODEL_NAME) -> list:
    """One PredictRequest per image (batch 1), then one with all of them (a batch)."""
    single = [
        prediction_log.predict_request({BYTES_INPUT: [image]}, model_name, SIGNATURE)
        for image in images
    ]
    batch = prediction_log.predict_request({BYTES_INPUT: list(images)}, model_name, SIGNATURE)
    return single + ([batch] if len(images) > 1 else [])


def write(export_dir: str, images: Sequence[bytes], model_name: str = MODEL_NAME) -> int:
    """Writes the warm-up file of the SavedModel in `export_dir`; returns the request count."""
    path = prediction_log.warmup_path(export_dir)
    return prediction_log.write_warmup_requests(path, requests(images, model_name))
