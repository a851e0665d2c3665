"""Warm-up samples: real-looking faces in the encodings clients send, and TF Serving's records."""

import io

import tensorflow as tf
from PIL import Image

from pipeline import config, contract
from pipeline.data import transform
from pipeline.export import warmup
from serving import prediction_log


def test_samples_vary_in_format_mode_and_size():
    samples = warmup.sample_images(5)
    pictures = [Image.open(io.BytesIO(data)) for data in samples]
    assert {picture.format for picture in pictures} == {"JPEG", "PNG"}
    assert {picture.mode for picture in pictures} == {"RGB", "L", "RGBA"}
    assert len({picture.size for picture in pictures}) == 5
    assert any(min(picture.size) < 256 for picture in pictures)
    assert any(min(picture.size) > 256 for picture in pictures)
    transformer = transform.Transformer(config.TransformConfig())
    for data in samples:  # what the exported model must accept, the data job accepts too
        assert transformer(data).pixels is not None


def test_samples_are_deterministic_and_depend_on_the_seed():
    assert warmup.sample_images(2) == warmup.sample_images(2)
    assert warmup.sample_images(2, seed=1) != warmup.sample_images(2)
    assert warmup.sample_images(0) == []


def test_requests_one_per_image_then_one_batch(tmp_path):
    samples = warmup.sample_images(3)
    assert warmup.write(str(tmp_path), samples, "faces") == 4
    logs = prediction_log.read_warmup_requests(prediction_log.warmup_path(str(tmp_path)))
    inputs = [tf.make_ndarray(log.predict_log.request.inputs[contract.BYTES_INPUT]) for log in logs]
    assert [list(batch) for batch in inputs] == [[samples[0]], [samples[1]], [samples[2]], samples]
    for log in logs:
        assert log.predict_log.request.model_spec.name == "faces"
        assert log.predict_log.request.model_spec.signature_name == contract.SERVING_SIGNATURE
    assert len(warmup.requests(samples[:1], "faces")) == 1  # a batch of one would repeat the single
