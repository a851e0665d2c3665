"""Training throughput: the seed's input pipeline against happysad's trainer, same seed_cnn model.

Same images, same model (seed_cnn, batch 32), same process:
  seed      `keras.utils.image_dataset_from_directory` on the happy/ sad/ JPEGs, `x / 255`,
            `model.fit`: every epoch decodes and resizes every file again (the seed notebook).
  happysad  `pipeline.data.load_split` on the folder config of happysad_tfds (decoded once at
            build time, uint8 cached, shuffled, scaled per batch, prefetched) and
            `pipeline.train.fit`: XLA off (what Keras picks on a CPU-only machine, for the
            seed too), and XLA forced on.
Epochs take turns in rounds, so a neighbour's load on the shared cores slows all alike, and
each approach is given its best epoch: on the 2-core development VM an epoch now and then
takes twice as long as the rest, whichever approach it is (the same model, alone in its
process: 14.2, 11.2, 20.5, 20.5 s), which made medians swing from 0.77x to 1.30x. The
input pipelines alone (no model) are timed too: they show how much of an epoch reading costs.
Then the recommended model (FER-2013 transfer) is exported and its `serving_default`
signature timed on JPEG bytes at batch 1 and 32.
"""

import glob
import os
import shutil
import statistics
import time

import common
import keras
import tensorflow as tf

from pipeline.data import build, synthetic_faces
from pipeline.export import saved_model as export
from pipeline.export import warmup
from pipeline.train import input_pipeline as data
from pipeline.train import models, recipes
from pipeline.train import trainer as train

NAME = "train"
BATCH_SIZE = 32
_SPLIT = "train+validation+test"  # every image, as image_dataset_from_directory reads them


def _faces_dir(workdir: str) -> str:
    """The shared real faces when present, else 256 rendered faces written as JPEG files."""
    shared = common.shared_faces_dir()
    if shared:
        return shared
    folder = os.path.join(workdir, "faces")
    for index in range(256):
        label = ("sad", "happy")[index % 2]
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        image = synthetic_faces.render_face(index, label, 250)
        with open(os.path.join(folder, label, f"face_{index:04d}.jpg"), "wb") as file:
            file.write(warmup.encode(image))
    return folder


def _seed_model() -> keras.Model:
    """The seed notebook's model and compile call, verbatim in Keras 3 spelling."""
    model = keras.Sequential([keras.Input((256, 256, 3))])
    for filters in (16, 32, 64):
        model.add(keras.layers.Conv2D(filters, (3, 3), 1, activation="relu"))
        model.add(keras.layers.MaxPooling2D())
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(256, activation="relu"))
    model.add(keras.layers.Dense(1, activation="sigmoid"))
    model.compile("adam", loss=keras.losses.BinaryCrossentropy(), metrics=["accuracy"])
    return model


def _seed_epoch(faces: str):
    dataset = keras.utils.image_dataset_from_directory(
        faces, class_names=["sad", "happy"], batch_size=BATCH_SIZE, image_size=(256, 256)
    )
    dataset = dataset.map(lambda x, y: (x / 255, y))
    model = _seed_model()

    def epoch():
        model.fit(dataset, epochs=1, verbose=0)

    return epoch


def _happysad_epoch(dataset: str, data_dir: str, xla: bool):
    config = recipes.train_config(
        "seed", output_dir="", dataset=dataset, data_dir=data_dir, epochs=1, xla=xla
    )
    batches = data.load_split(dataset, _SPLIT, data_dir, BATCH_SIZE, shuffle=True, seed=0)
    model = models.build_model(train.model_options(config), seed=0)

    def epoch():
        train.fit(model, config, batches, verbose=0)

    return epoch


def _input_rate(batches, images: int, rounds: int = 3) -> float:
    """Images/s of iterating a dataset alone (decoding and resizing, or reading the cache)."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in batches:
            pass
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def _rounds(epochs: dict, rounds: int, images: int) -> dict:
    for epoch in epochs.values():
        epoch()  # warm-up: tracing, XLA compilation and the first read are not throughput
    rates = {name: [] for name in epochs}
    for _ in range(rounds):
        for name, epoch in epochs.items():
            started = time.perf_counter()
            epoch()
            rates[name].append(images / (time.perf_counter() - started))
    return {name: max(values) for name, values in rates.items()}


def _serving_rates(workdir: str, faces: str, seconds: float) -> dict:
    """Images/s of the recommended model's exported serving_default at batch 1 and 32."""
    config = recipes.train_config(output_dir="")
    model = models.build_model(train.model_options(config), seed=0)
    export_dir = os.path.join(workdir, "export", "1")
    shutil.rmtree(export_dir, ignore_errors=True)
    export.export_model(model, export_dir, 0.5, {"model_name": "bench_train"}, [])
    serving_default = tf.saved_model.load(export_dir).signatures[export.SERVING_SIGNATURE]
    paths = sorted(glob.glob(os.path.join(faces, "*", "*.jpg")))[:64]
    jpegs = [open(path, "rb").read() for path in paths]
    rates = {}
    for batch_size in (1, 32):
        batches = [
            jpegs[i : i + batch_size] for i in range(0, len(jpegs) - batch_size + 1, batch_size)
        ]
        serving_default(image_bytes=tf.constant(batches[0]))  # warm-up
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            serving_default(image_bytes=tf.constant(batches[count % len(batches)]))
            count += 1
        rates[batch_size] = count * batch_size / (time.perf_counter() - started)
    return rates


def run(workdir: str, quick: bool) -> list[common.Row]:
    os.makedirs(workdir, exist_ok=True)
    faces = _faces_dir(workdir)
    data_dir = os.path.join(workdir, "tfds")
    build.run(build.BuildConfig(config="folder", data_dir=data_dir, manual_dir=faces))
    dataset = f"{build.DATASET_NAME}/folder"
    images = sum(data.describe(dataset, data_dir)["splits"].values())
    seed_files = len(glob.glob(os.path.join(faces, "*", "*.*")))
    rates = _rounds(
        {
            "seed": _seed_epoch(faces),
            "happysad": _happysad_epoch(dataset, data_dir, xla=False),
            "happysad_xla": _happysad_epoch(dataset, data_dir, xla=True),
        },
        rounds=2 if quick else 4,
        images=images,
    )
    # The seed reads every file, the dataset only the images the cleaning accepted.
    rates["seed"] *= seed_files / images
    seed_input = keras.utils.image_dataset_from_directory(
        faces, class_names=["sad", "happy"], batch_size=BATCH_SIZE, image_size=(256, 256)
    ).map(lambda x, y: (x / 255, y))
    happysad_input = data.load_split(dataset, _SPLIT, data_dir, BATCH_SIZE, shuffle=True)
    _input_rate(happysad_input, images, rounds=1)  # fills the cache
    inputs = {
        "seed": _input_rate(seed_input, seed_files),
        "happysad": _input_rate(happysad_input, images),
    }
    serving = _serving_rates(workdir, faces, 10.0 if quick else 40.0)
    baseline = "seed: image_dataset_from_directory + x/255 + fit"
    target = ">= 1.3x"
    return [
        common.Row(
            NAME,
            "training, seed_cnn, TFDS + tf.data (XLA off, as Keras picks on CPU)",
            rates["happysad"],
            "images/s",
            baseline,
            rates["seed"],
            target,
        ),
        common.Row(
            NAME,
            "training, seed_cnn, TFDS + tf.data (XLA forced on)",
            rates["happysad_xla"],
            "images/s",
            baseline,
            rates["seed"],
            target,
        ),
        common.Row(
            NAME,
            "input pipeline alone: TFDS + tf.data (cached)",
            inputs["happysad"],
            "images/s",
            "seed: image_dataset_from_directory + x/255",
            inputs["seed"],
        ),
        common.Row(
            NAME,
            "recommended model, serving_default (JPEG), batch 32",
            serving[32],
            "images/s",
            "same, batch 1",
            serving[1],
        ),
        common.Row(
            NAME, "recommended model, serving_default (JPEG), batch 1", serving[1], "images/s"
        ),
    ]


if __name__ == "__main__":  # a direct run: python benchmarks/bench_train.py
    for row in run(os.path.join("/tmp", "bench_train"), quick=True):
        print(row)
