"""TF Serving warm-up requests: a few real-looking face photos, encoded as clients send them.

TF Serving replays `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`tensorflow.serving.PredictionLog` protos, at most 1,000) before it serves a version, so the
graph, the decoders and the resize kernels are ready for the first real request. The samples
are synthetic faces (no user data ends up in the model) in the encodings and sizes that real
traffic has: JPEG and PNG, colour, grayscale and with alpha, smaller and larger than 256.
The protos are tensorflow-serving-api's, so the file is what the real model server expects.
"""

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from pipeline import artifacts, contract
from pipeline.data import synthetic_faces

DEFAULT_COUNT = 4
# TF Serving refuses a warm-up file with more records than this (WarmupConsts::kMaxNumRecords).
MAX_RECORDS = 1000
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
    """uint8 RGB pixels (H, W, 3) to encoded bytes in a Pillow format and mode (RGB, L, RGBA)."""
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
        label = contract.LABELS[index % 2]
        face = synthetic_faces.render_face(synthetic_faces.image_seed(seed, index), label, side)
        images.append(encode(face, image_format, mode))
    return images


def predict_request(
    inputs: Mapping[str, Any],
    model_name: str,
    signature_name: str = contract.SERVING_SIGNATURE,
) -> predict_pb2.PredictRequest:
    """A PredictRequest from input name -> values (numpy arrays, lists, bytes).

    Values go through `tf.make_tensor_proto`, so a list of bytes becomes a DT_STRING tensor
    and a float32 array keeps its dtype and shape.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return request


def requests(images: Sequence[bytes], model_name: str) -> list[predict_pb2.PredictRequest]:
    """One `serving_default` request per image (batch 1), then one with all of them."""
    single = [predict_request({contract.BYTES_INPUT: [image]}, model_name) for image in images]
    batch = [predict_request({contract.BYTES_INPUT: list(images)}, model_name)]
    return single + (batch if len(images) > 1 else [])


def _as_prediction_log(request: Any) -> prediction_log_pb2.PredictionLog:
    if isinstance(request, prediction_log_pb2.PredictionLog):
        return request
    if isinstance(request, predict_pb2.PredictRequest):
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
    if isinstance(request, classification_pb2.ClassificationRequest):
        return prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)
        )
    if isinstance(request, regression_pb2.RegressionRequest):
        return prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=request)
        )
    raise ValueError(
        f"cannot write a {type(request).__name__} as a warm-up record: expected a "
        "PredictionLog, PredictRequest, ClassificationRequest or RegressionRequest"
    )


def write_requests(export_dir: str, warmup_requests: Iterable[Any]) -> int:
    """Writes the warm-up file of the SavedModel version in `export_dir`; returns its records.

    Each request is a PredictionLog, or a Predict/Classification/RegressionRequest wrapped in
    one. Written aside and renamed: a server polling the base path never replays half a file.

    Raises:
        ValueError: another type, no request at all, or more than TF Serving accepts.
    """
    logs = [_as_prediction_log(request) for request in warmup_requests]
    if not logs or len(logs) > MAX_RECORDS:
        raise ValueError(f"{len(logs)} warm-up requests: TF Serving takes 1 to {MAX_RECORDS}")

    def write_records(temporary: str) -> None:
        with tf.io.TFRecordWriter(temporary) as writer:
            for log in logs:
                writer.write(log.SerializeToString())

    artifacts.write_with(os.path.join(export_dir, contract.WARMUP_PATH), write_records)
    return len(logs)


def write(export_dir: str, images: Sequence[bytes], model_name: str) -> int:
    """The warm-up file of `export_dir` for these encoded images; returns its record count."""
    return write_requests(export_dir, requests(images, model_name))
