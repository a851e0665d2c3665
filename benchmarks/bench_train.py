"""Training throughput and precision: the seed's input pipeline against happysad's trainer.

Same images, same model (seed_cnn, batch 32), same process:
  seed      `keras.utils.image_dataset_from_directory` on the happy/ sad/ JPEGs, `x / 255`,
            `model.fit`: every epoch decodes and resizes every file again (the seed notebook).
  happysad  `input_pipeline.load_split` on the folder dataset (decoded once by the data job,
            uint8 cached, shuffled, scaled per batch, prefetched) and `trainer.fit`, in float32
            and in mixed_bfloat16 (bf16 compute, float32 weights), XLA off (what Keras picks on
            a CPU-only machine, for the seed too).
On a CPU with AVX512_BF16 or AMX, bfloat16 is measured against float32 on the same model and
data in the same run: throughput for seed_cnn and for the recommended FER-2013 network
(fine-tuning), and the held-out accuracy seed_cnn reaches on synthetic faces after the same
epochs in each precision. Where the CPU has neither, the rows say so and report float32.
Epochs take turns in rounds, so a neighbour's load on the shared cores slows all alike, and
each approach is given its best epoch (on the shared 2-core VM an epoch now and then takes
twice as long, whichever approach it is).
"""

import glob
import os
import statistics
import time

import common
import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.data import build, synthetic_faces
from pipeline.export import warmup
from pipeline.train import input_pipeline, models, trainer

NAME = "train"
BATCH_SIZE = 32
_SPLIT = "train+validation+test"  # every image, as image_dataset_from_directory reads them
_BF16 = "mixed_bfloat16"


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


def _train_config(recipe: str, precision: str) -> config_lib.TrainConfig:
    config = config_lib.recipe(recipe).train
    return config_lib.replace(
        config, epochs=1, head_epochs=0, batch_size=BATCH_SIZE, xla="off", precision=precision
    )


def _happysad_epoch(batches, recipe: str, precision: str):
    config = _train_config(recipe, precision)
    model = models.build_model(config, seed=0)

    def epoch():
        trainer.fit(model, config, batches, verbose=0)

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
        epoch()  # warm-up: tracing and the first read are not throughput
    rates = {name: [] for name in epochs}
    for _ in range(rounds):
        for name, epoch in epochs.items():
            started = time.perf_counter()
            epoch()
            rates[name].append(images / (time.perf_counter() - started))
    return {name: max(values) for name, values in rates.items()}


def _synthetic_accuracy(precision: str, images: int, epochs: int) -> float:
    """Held-out accuracy of seed_cnn after `epochs` on `images` synthetic faces (seed 0)."""
    labels = np.array([index % 2 for index in range(images)])
    pixels = np.stack(
        [
            synthetic_faces.render_face(
                synthetic_faces.image_seed(7, index), ("sad", "happy")[label]
            )
            for index, label in enumerate(labels)
        ]
    )
    cut = images * 3 // 4
    config = config_lib.replace(_train_config("seed", precision), epochs=epochs)
    keras.utils.set_random_seed(0)
    model = models.build_model(config, seed=0)
    batches = (
        tf.data.Dataset.from_tensor_slices((pixels[:cut], labels[:cut]))
        .shuffle(cut, seed=0)
        .batch(BATCH_SIZE)
        .map(lambda x, y: (input_pipeline.scale_images(x), y))
    )
    trainer.fit(model, config, batches, verbose=0)
    scores = model.predict(input_pipeline.scale_images(pixels[cut:]), verbose=0)[:, 0]
    return float(((scores >= 0.5) == (labels[cut:] == 1)).mean())


def run(workdir: str, quick: bool) -> list[common.Row]:
    os.makedirs(workdir, exist_ok=True)
    faces = _faces_dir(workdir)
    data_dir = os.path.join(workdir, "tfds")
    folder = config_lib.replace(config_lib.Config(), **{"data.input": faces})
    built = build.run(folder, data_dir=data_dir)
    dataset = f"{built['name']}/{built['config']}"
    images = sum(input_pipeline.describe(dataset, data_dir)["splits"].values())
    seed_files = len(glob.glob(os.path.join(faces, "*", "*.*")))
    batches = input_pipeline.load_split(dataset, _SPLIT, data_dir, BATCH_SIZE, shuffle=True)
    bf16 = models.dtype_policy("auto") == _BF16
    epochs = {
        "seed": _seed_epoch(faces),
        "float32": _happysad_epoch(batches, "seed", "float32"),
        "fer_float32": _happysad_epoch(batches, "recommended", "float32"),
    }
    if bf16:
        epochs["bfloat16"] = _happysad_epoch(batches, "seed", _BF16)
        epochs["fer_bfloat16"] = _happysad_epoch(batches, "recommended", _BF16)
    rates = _rounds(epochs, rounds=2 if quick else 4, images=images)
    # The seed reads every file, the dataset only the images the data job accepted.
    rates["seed"] *= seed_files / images
    seed_input = keras.utils.image_dataset_from_directory(
        faces, class_names=["sad", "happy"], batch_size=BATCH_SIZE, image_size=(256, 256)
    ).map(lambda x, y: (x / 255, y))
    _input_rate(batches, images, rounds=1)  # fills the cache
    inputs = {"seed": _input_rate(seed_input, seed_files), "happysad": _input_rate(batches, images)}
    baseline = "seed: image_dataset_from_directory + x/255 + fit"
    cpu = "AVX512_BF16/AMX" if bf16 else "no bf16 on this CPU"
    rows = [
        common.Row(
            NAME,
            "training, seed_cnn float32, TFDS + tf.data",
            rates["float32"],
            "images/s",
            baseline,
            rates["seed"],
            "" if bf16 else ">= 1.3x",  # with bf16, the seed recipes train in bf16 (auto)
        ),
        common.Row(
            NAME,
            "input pipeline alone: TFDS + tf.data (cached)",
            inputs["happysad"],
            "images/s",
            "seed: image_dataset_from_directory + x/255",
            inputs["seed"],
        ),
    ]
    if not bf16:
        rows.append(common.Row(NAME, f"mixed_bfloat16: not measured ({cpu})", 0, ""))
        return rows
    sample, epochs_each = (400, 3) if quick else (1000, 5)
    accuracy = {name: _synthetic_accuracy(name, sample, epochs_each) for name in ("float32", _BF16)}
    return rows + [
        common.Row(
            NAME,
            f"training, seed recipe: seed_cnn in mixed_bfloat16 (its 'auto' on {cpu}), TFDS + "
            "tf.data",
            rates["bfloat16"],
            "images/s",
            baseline,
            rates["seed"],
            ">= 1.3x",
        ),
        common.Row(
            NAME,
            "seed_cnn: mixed_bfloat16 vs float32, same model and data",
            rates["bfloat16"],
            "images/s",
            "float32",
            rates["float32"],
            "> 1x to use it",
        ),
        common.Row(
            NAME,
            "FER-2013 fine-tuning: mixed_bfloat16 vs float32",
            rates["fer_bfloat16"],
            "images/s",
            "float32",
            rates["fer_float32"],
            "> 1x to use it",
        ),
        common.Row(
            NAME,
            f"seed_cnn held-out accuracy, {sample} synthetic faces, {epochs_each} epochs, bf16",
            accuracy[_BF16],
            "",
            "float32",
            accuracy["float32"],
            "holds (>= 0.98x)",
        ),
    ]


if __name__ == "__main__":  # a direct run: python benchmarks/bench_train.py
    for row in run(os.path.join("/tmp", "bench_train"), quick=True):
        print(row)
