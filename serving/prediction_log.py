"""TF Serving's warm-up file: a TFRecord of `tensorflow.serving.PredictionLog` protos.

TensorFlow Serving replays `<version>/assets.extra/tf_serving_warmup_requests` before it marks
a version AVAILABLE, so the first real request does not pay for graph tracing and kernel
set-up. The exporter writes that file (happysad's: `pipeline.export.warmup`), and this server
reads it back with `read_warmup_requests`, with the protos of the `tensorflow-serving-api`
package, as the real model server does.
"""

import os

import tensorflow as tf
from google.protobuf import message
from tensorflow_serving.apis import (
    prediction_log_pb2,
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
