"""TF Serving's warm-up file: a TFRecord of `tensorflow.serving.PredictionLog` protos.

TensorFlow Serving replays `<version>/assets.extra/tf_serving_warmup_requests` before it marks
a version AVAILABLE, so the first real request does not pay for graph tracing and kernel
set-up. The export stage writes that file with `write_warmup_requests`, and `happysad serve`
reads it back with `read_warmup_requests`; both use the protos of the `tensorflow-serving-api`
package, so the file is byte-for-byte what the real model server expects.

    from serving import prediction_log
    request = prediction_log.predict_request({"image_bytes": [jpeg]}, model_name="happysad")
    prediction_log.write_warmup_requests(prediction_log.warmup_path(version_dir), [request])
"""

import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow as tf
from google.protobuf import message
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

# Where TF Serving looks for the file, relative to a SavedModel directory.
ASSETS_EXTRA_DIRECTORY = "assets.extra"
WARMUP_FILE_NAME = "tf_serving_warmup_requests"
# TF Serving refuses a warm-up file with more records than this (WarmupConsts::kMaxNumRecords).
MAX_WARMUP_RECORDS = 1000
DEFAULT_SIGNATURE = "serving_default"


def warmup_path(export_dir: str) -> str:
    """The warm-up file of the SavedModel version in `export_dir`."""
    return os.path.join(export_dir, ASSETS_EXTRA_DIRECTORY, WARMUP_FILE_NAME)


def predict_request(
    inputs: Mapping[str, Any],
    model_name: str,
    signature_name: str = DEFAULT_SIGNATURE,
) -> predict_pb2.PredictRequest:
    """A PredictRequest from input name → values (numpy arrays, lists, bytes).

    Values go through `tf.make_tensor_proto`, so a list of bytes becomes a DT_STRING tensor
    and a float32 array keeps its dtype and shape.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return request


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


def write_warmup_requests(path: str, requests: Iterable[Any]) -> int:
    """Writes `requests` as TF Serving's warm-up TFRecord file; returns the record count.

    Each request is a PredictionLog, or a Predict/Classification/RegressionRequest that is
    wrapped in one. The file is written aside and renamed, so a model server polling the
    base path never replays half a file.

    Raises:
      ValueError: a request of another type, none at all, or more than TF Serving accepts.
    """
    logs = [_as_prediction_log(request) for request in requests]
    if not logs:
        raise ValueError("a warm-up file needs at least one request")
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"{len(logs)} warm-up requests: TF Serving accepts at most {MAX_WARMUP_RECORDS}"
        )
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    partial_path = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.TFRecordWriter(partial_path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    tf.io.gfile.rename(partial_path, path, overwrite=True)
    return len(logs)


def read_warmup_requests(path: str) -> list[prediction_log_pb2.PredictionLog]:
    """Reads a warm-up TFRecord file back into PredictionLog protos.

    Raises:
      ValueError: the file is not a TFRecord of PredictionLog protos, or holds more records
        than TF Serving accepts (the model server would refuse to load the version).
    """
    logs = []
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(record)
            logs.append(log)
            if len(logs) > MAX_WARMUP_RECORDS:
                raise ValueError(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
                )
    except tf.errors.DataLossError as error:
        raise ValueError(
            f"{path} is not a TFRecord file of PredictionLog protos: {error.message}"
        ) from None
    except message.DecodeError as error:
        raise ValueError(f"Failed to parse warmup record from {path}: {error}") from None
    return logs
