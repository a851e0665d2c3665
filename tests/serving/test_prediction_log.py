"""The warm-up file: TF Serving's TFRecord of PredictionLog protos, written and read back."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

from pipeline.export import warmup
from serving import prediction_log


def test_warmup_path_is_where_tf_serving_looks(tmp_path):
    path = prediction_log.warmup_path(str(tmp_path / "7"))
    assert path == str(tmp_path / "7" / "assets.extra" / "tf_serving_warmup_requests")


def test_predict_requests_round_trip(tmp_path):
    """Written by the exporter (pipeline.export.warmup), read back as TF Serving reads it."""
    path = prediction_log.warmup_path(str(tmp_path))
    images = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    requests = [
        warmup.predict_request({"image_bytes": [b"\xff\xd8jpeg"]}, model_name="happysad"),
        warmup.predict_request(
            {"images": images}, model_name="happysad", signature_name="predict_images"
        ),
    ]

    assert warmup.write_requests(str(tmp_path), requests) == 2
    logs = prediction_log.read_warmup_requests(path)

    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    first, second = (log.predict_log.request for log in logs)
    assert first.model_spec.name == "happysad"
    assert first.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(first.inputs["image_bytes"]).tolist() == [b"\xff\xd8jpeg"]
    assert second.model_spec.signature_name == "predict_images"
    np.testing.assert_array_equal(tf.make_ndarray(second.inputs["images"]), images)
    assert os.listdir(tmp_path / "assets.extra") == ["tf_serving_warmup_requests"]


def test_file_is_a_plain_tfrecord_of_prediction_logs(tmp_path):
    """What TF Serving's C++ reader sees: records that parse as PredictionLog."""
    path = prediction_log.warmup_path(str(tmp_path))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "m"
    warmup.write_requests(str(tmp_path), [classify])

    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.classify_log.request.model_spec.name == "m"


def test_the_exporter_refuses_what_tf_serving_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="1 to 1000"):
        warmup.write_requests(str(tmp_path), [])
    with pytest.raises(ValueError, match="cannot write a dict"):
        warmup.write_requests(str(tmp_path), [{"x": 1}])
    too_many = [prediction_log_pb2.PredictionLog()] * (prediction_log.MAX_WARMUP_RECORDS + 1)
    with pytest.raises(ValueError, match="1 to 1000"):
        warmup.write_requests(str(tmp_path), too_many)
    assert not os.path.exists(prediction_log.warmup_path(str(tmp_path)))


def test_reading_a_file_that_is_not_a_tfrecord_fails_clearly(tmp_path):
    path = tmp_path / "warmup"
    path.write_bytes(b"this is not a tfrecord file at all, just some text")
    with pytest.raises(ValueError, match="not a TFRecord file"):
        prediction_log.read_warmup_requests(str(path))


def test_reading_records_that_are_not_prediction_logs_fails_clearly(tmp_path):
    path = str(tmp_path / "warmup")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(b"\xff\xff\xff garbage")
    with pytest.raises(ValueError, match="Failed to parse warmup record"):
        prediction_log.read_warmup_requests(path)
