"""Inference throughput of the exported SavedModel, at batch 1 and 32, per signature.

Same model, same images, same process: the seed CNN (float32, random weights: speed does not
depend on them) exported with `pipeline.export.saved_model.export_model` and loaded back with
plain `tf.saved_model.load`, as TF Serving runs it.
  serving_default  JPEG bytes in (LFW-style 250x250 faces): THE transform in the graph
                   (pipeline.data.transform.transform_batch: sniff, header budgets, decode,
                   orientation, resize), then the model.
  predict_images   transformed pixels in (float 0..255): the model alone.
Baselines: the same work done from Python, eagerly: the data job's per-file call
(`transform.Transformer`) for each image, then Keras predict_on_batch, for serving_default;
Keras predict_on_batch for predict_images. The batch-32 rows are also reported against batch 1
(the gain from batching).
"""

import glob
import os
import statistics
import time

import common
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import contract
from pipeline.data import synthetic_faces, transform
from pipeline.export import saved_model as export
from pipeline.export import warmup
from pipeline.train import models

NAME = "inference"
BATCH_SIZES = (1, 32)
_ROUNDS = 7


def _faces(count: int, transformer: transform.Transformer) -> list[bytes]:
    """JPEG bytes of faces: the shared photos that the transform accepts, else synthetic ones."""
    faces_dir = common.shared_faces_dir()
    paths = sorted(glob.glob(os.path.join(faces_dir, "*", "*.jpg"))) if faces_dir else []
    images = []
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        if transformer(data).pixels is not None:
            images.append(data)
    if images:
        return (images * (count // len(images) + 1))[:count]
    return [
        warmup.encode(synthetic_faces.render_face(index, ("sad", "happy")[index % 2], 250))
        for index in range(count)
    ]


def _model():
    """The seed CNN in float32 (the default TrainConfig's model), random weights."""
    return models.build_model(config_lib.TrainConfig(precision="float32"), seed=0)


def _images_per_second(calls: dict, seconds: float) -> dict:
    """Median throughput of each `key: (call, inputs, batch size)` on consecutive batches.

    The calls take turns in short rounds, so a neighbour's load on the shared cores slows
    them all alike and the ratios stay fair.
    """
    batches = {}
    for key, (call, inputs, batch_size) in calls.items():
        batches[key] = [
            inputs[start : start + batch_size]
            for start in range(0, len(inputs) - batch_size + 1, batch_size)
        ]
        call(batches[key][0])  # warm-up: tracing and kernel set-up are not throughput
    rates = {key: [] for key in calls}
    for _ in range(_ROUNDS):
        for key, (call, _, batch_size) in calls.items():
            count, images, started = 0, 0, time.perf_counter()
            while time.perf_counter() - started < seconds / _ROUNDS / len(calls):
                call(batches[key][count % len(batches[key])])
                count, images = count + 1, images + batch_size
            rates[key].append(images / (time.perf_counter() - started))
    return {key: statistics.median(values) for key, values in rates.items()}


def run(workdir: str, quick: bool) -> list[common.Row]:
    seconds = 16.0 if quick else 80.0  # shared by the eight calls
    model = _model()
    export_dir = os.path.join(workdir, "export", "1")
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    export.export_model(model, export_dir, 0.5, {"model_name": "bench"}, [])
    loaded = tf.saved_model.load(export_dir)
    serving_default = loaded.signatures[contract.SERVING_SIGNATURE]
    predict_images = loaded.signatures[contract.IMAGES_SIGNATURE]

    transformer = transform.Transformer()
    jpegs = _faces(64, transformer)
    pixels = [transformer(data).pixels.astype(np.float32) for data in jpegs]

    def served_bytes(batch):
        serving_default(image_bytes=tf.constant(batch))["happy_probability"].numpy()

    def served_pixels(batch):
        predict_images(images=tf.constant(np.stack(batch)))["happy_probability"].numpy()

    def python_bytes(batch):
        cleaned = np.stack([transformer(data).pixels for data in batch])
        model.predict_on_batch(cleaned.astype(np.float32) / 255.0)

    def keras_pixels(batch):
        model.predict_on_batch(np.stack(batch) / 255.0)

    functions = {
        "serving_default": (served_bytes, jpegs),
        "python": (python_bytes, jpegs),
        "predict_images": (served_pixels, pixels),
        "keras": (keras_pixels, pixels),
    }
    calls = {
        (name, size): (call, inputs, size)
        for size in BATCH_SIZES
        for name, (call, inputs) in functions.items()
    }
    measured = _images_per_second(calls, seconds)
    rows = []
    for batch_size in BATCH_SIZES:
        figures = {name: measured[name, batch_size] for name in functions}
        rows += [
            common.Row(
                NAME,
                f"serving_default (JPEG bytes), batch {batch_size}",
                figures["serving_default"],
                "images/s",
                f"transform.Transformer per file + Keras, batch {batch_size}",
                figures["python"],
            ),
            common.Row(
                NAME,
                f"predict_images (pixels), batch {batch_size}",
                figures["predict_images"],
                "images/s",
                f"Keras predict_on_batch, batch {batch_size}",
                figures["keras"],
            ),
        ]
    for signature in ("serving_default", "predict_images"):
        rows.append(
            common.Row(
                NAME,
                f"{signature}, batch 32",
                measured[signature, 32],
                "images/s",
                f"{signature}, batch 1",
                measured[signature, 1],
            )
        )
    return rows
