"""Tiny SavedModels for the serving tests, exported once per session, and server helpers.

- `image_model`: the happysad serving contract in miniature: `serving_default` takes encoded
  images (DT_STRING [-1]) and `predict_images` float pixels, both answering
  `happy_probability`, `label` and `class_id`; the "probability" is the mean brightness.
  It also carries `multi_io` (three inputs of three dtypes, four outputs, one of them
  `_bytes`, and a `marker` telling exports apart), `scalar_stats` (an output without a
  batch dimension) and `spin` (a run as long as asked, for deadlines and shutdown).
- `tf1_model`: half-plus-three, TF1 style (SavedModelBuilder), with
  `tensorflow/serving/classify` and `tensorflow/serving/regress` signatures.
- `tf2_model`: half-plus-two as TF2 `tf.function`s: `serving_default` x [-1, 1] → y, and
  `classify_x_to_y` / `regress_x_to_y` on tf.Examples whose method name stays "predict"
  (what TF2 exports write), as in TF Serving's saved_model_half_plus_two_tf2_cpu.
- `keras_model`: a Keras model exported with `model.export`.
- `happysad_model`: a real happysad export: a tiny Keras model through
  `pipeline.export.saved_model.export_model` (the one place that knows where that function lives).
"""

import io
import os
import shutil
import socket

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline.export import warmup as warmup_file
from serving import flags, server

IMAGE_SIZE = 8


def encode_image(brightness: int, size: int = 16, image_format: str = "PNG") -> bytes:
    """A flat grey image: its happy_probability under `image_model` is brightness / 255."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (brightness,) * 3).save(buffer, format=image_format)
    return buffer.getvalue()


class _ImageModel(tf.Module):
    def __init__(self, marker: int):
        super().__init__()
        self.marker = tf.Variable(marker, dtype=tf.int32, trainable=False)

    def _outputs(self, images):
        probability = tf.reduce_mean(images, axis=[1, 2, 3]) / 255.0
        is_happy = probability >= 0.5
        return {
            "happy_probability": probability,
            "label": tf.where(is_happy, tf.constant("happy"), tf.constant("sad")),
            "class_id": tf.cast(is_happy, tf.int64),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), [IMAGE_SIZE, IMAGE_SIZE])

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32)
        return self._outputs(images)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="images")
        ]
    )
    def serve_images(self, images):
        return self._outputs(images)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.float32, name="a"),
            tf.TensorSpec([None], tf.int64, name="b"),
            tf.TensorSpec([None], tf.string, name="tag"),
        ]
    )
    def multi_io(self, a, b, tag):
        total = tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32)
        return {
            "total": total,
            "tag_bytes": tf.strings.join([tag, tf.constant("!")]),
            "positive": total > 0,
            "marker": tf.fill(tf.shape(b), self.marker),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def scalar_stats(self, x):
        return {"mean": tf.reduce_mean(x), "count": tf.size(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="iterations")])
    def spin(self, iterations):
        """A run as long as asked: iterations[0] rounds of a 64x64 matmul."""

        def body(step, matrix):
            return step + 1, tf.matmul(matrix, matrix) / 64.0

        _, matrix = tf.while_loop(
            lambda step, _: step < iterations[0],
            body,
            (tf.constant(0, tf.int64), tf.eye(64)),
        )
        return {"total": tf.fill(tf.shape(iterations), tf.reduce_sum(matrix))}


def export_image_model(path: str, marker: int = 1, warmup: bool = False) -> str:
    module = _ImageModel(marker)
    signatures = {
        "serving_default": module.serve_bytes,
        "predict_images": module.serve_images,
        "multi_io": module.multi_io,
        "scalar_stats": module.scalar_stats,
        "spin": module.spin,
    }
    tf.saved_model.save(module, path, signatures=signatures)
    if warmup:
        request = warmup_file.predict_request({"image_bytes": [encode_image(200)]}, "model")
        warmup_file.write_requests(path, [request])
    return path


def export_tf1_model(path: str) -> str:
    """half_plus_three, TF1 style: predict `x`→`y`, classify and regress on tf.Examples."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        x_from_examples = features["x"]
        regression = x_from_examples * 0.5 + 3.0
        scores = tf.concat([tf.sigmoid(x_from_examples), 1 - tf.sigmoid(x_from_examples)], 1)
        classes = tf.tile(tf.constant([["happy", "sad"]]), [tf.shape(serialized)[0], 1])
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = x * 0.5 + 3.0
        signature_defs = tf.compat.v1.saved_model.signature_def_utils
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            session,
            [tf.compat.v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                "serving_default": signature_defs.predict_signature_def({"x": x}, {"y": y}),
                "tensorflow/serving/classify": signature_defs.classification_signature_def(
                    serialized, classes, scores
                ),
                "tensorflow/serving/regress": signature_defs.regression_signature_def(
                    serialized, regression
                ),
            },
        )
        builder.save()
    return path


class _HalfPlusTwo(tf.Module):
    def __init__(self):
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(2.0)

    def _parse(self, inputs):
        return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        return {"scores": self.a * self._parse(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self.a * self._parse(inputs) + self.b}


def export_tf2_model(path: str) -> str:
    """half_plus_two with TF2 signatures (all of method tensorflow/serving/predict)."""
    module = _HalfPlusTwo()
    signatures = {
        "serving_default": module.predict,
        "classify_x_to_y": module.classify,
        "regress_x_to_y": module.regress,
    }
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def export_keras_model(path: str) -> str:
    """A Keras model (y = 2x + 1 per feature) exported with `model.export`."""
    import keras

    inputs = keras.Input((3,), name="features")
    outputs = keras.layers.Dense(1, name="score")(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("score").set_weights([np.full((3, 1), 2.0, np.float32), np.ones(1, np.float32)])
    model.export(path, verbose=False)
    return path


def export_happysad_model(path: str) -> str:
    """A real happysad export (serving_default on encoded images, predict_images, assets,
    warm-up file) of a tiny Keras model: mean colour → P(happy)."""
    import keras

    from pipeline.export import saved_model

    inputs = keras.Input((256, 256, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(pooled)
    model = keras.Model(inputs, outputs)
    saved_model.export_model(model, path)
    return path


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory):
    """Paths of SavedModels exported once per session."""
    root = tmp_path_factory.mktemp("exported")
    return {
        "image": export_image_model(str(root / "image"), marker=1, warmup=True),
        "image_v2": export_image_model(str(root / "image_v2"), marker=2),
        "tf1": export_tf1_model(str(root / "tf1")),
        "tf2": export_tf2_model(str(root / "tf2")),
        "keras": export_keras_model(str(root / "keras")),
    }


@pytest.fixture(scope="session")
def happysad_model(tmp_path_factory):
    """A real happysad export, once per session."""
    return export_happysad_model(str(tmp_path_factory.mktemp("happysad") / "export"))


def install_version(model_dir: str, base_path, version: int | str) -> str:
    """Copies a SavedModel in as `base_path/<version>` atomically (aside, then renamed);
    `version` may be a folder name such as "00000123"."""
    base_path = str(base_path)
    os.makedirs(base_path, exist_ok=True)
    partial = os.path.join(base_path, f".partial-{version}")
    shutil.copytree(model_dir, partial)
    target = os.path.join(base_path, str(version))
    os.rename(partial, target)
    return target


def options(**values) -> flags.ServerOptions:
    """ServerOptions with free ports for both APIs unless said otherwise."""
    values.setdefault("port", flags.ANY_PORT)
    values.setdefault("rest_api_port", flags.ANY_PORT)
    return flags.ServerOptions(**values)


def start(**values) -> server.ServerHandle:
    """A server in this process (see `options`), serving once its models are loaded."""
    return server.start_in_thread(options(**values))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
