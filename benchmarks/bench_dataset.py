"""happysad_tfds: `tfds build` of the default config (2 Beam workers vs 1), and its learnability.

The build is TFDS's own command line, as the README gives it (a new process, wall clock from
its start to its exit): `tfds build happysad_tfds --imports happysad_tfds --data_dir D
--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,direct_running_mode=...`,
the default config (2,000 synthetic faces; 200 with --quick), against the same with one worker
in memory. Target: under 2 minutes with 2 workers.

Learnability is the seed CNN (Conv2D 16/32/64 + max-pool, Dense 256, sigmoid; Adam, binary
cross-entropy, pixels scaled to [0, 1]) trained on the built `train` split and scored on `test`,
against a logistic regression on each image's mean colour (what a shortcut would give).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import common
import numpy as np

SEED_CNN_EPOCHS = 6
TARGET_BUILD_SECONDS = 120
TARGET_ACCURACY = 0.95
QUICK_IMAGES = 200


def _build(data_dir: str, num_images: int | None, beam_options: str) -> float:
    """Seconds of `tfds build` of the default config (or `num_images` faces) into data_dir."""
    shutil.rmtree(data_dir, ignore_errors=True)
    command = [
        os.path.join(os.path.dirname(sys.executable), "tfds"),
        "build",
        "happysad_tfds",
        "--imports",
        "happysad_tfds",
        "--data_dir",
        data_dir,
        f"--beam_pipeline_options=runner=DirectRunner,{beam_options}",
    ]
    if num_images is not None:
        config = {"name": f"synthetic_{num_images}", "data": {"num_images": num_images}}
        command += ["--config", json.dumps(config)]
    os.makedirs(os.path.dirname(os.path.abspath(data_dir)), exist_ok=True)
    with open(data_dir.rstrip("/") + ".log", "w", encoding="utf-8") as log:
        start = time.perf_counter()
        subprocess.run(
            command,
            cwd=common.REPO_ROOT,
            env={**os.environ, **common.COMMAND_ENVIRONMENT},
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return time.perf_counter() - start


def _split_arrays(data_dir: str, config_name: str, split: str):
    import tensorflow_datasets as tfds

    dataset = tfds.load(
        f"happysad_tfds/{config_name}", data_dir=data_dir, split=split, as_supervised=True
    )
    images, labels = zip(*tfds.as_numpy(dataset), strict=True)
    return np.stack(images), np.array(labels)


def _seed_cnn():
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input((256, 256, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    return model


def _mean_colour_accuracy(train, test) -> float:
    """Held-out accuracy of a logistic regression on the mean colour (gradient descent)."""
    (train_images, train_labels), (test_images, test_labels) = train, test
    train_features = train_images.mean(axis=(1, 2))
    test_features = test_images.mean(axis=(1, 2))
    mean, scale = train_features.mean(0), train_features.std(0) + 1e-6
    train_features, test_features = (train_features - mean) / scale, (test_features - mean) / scale
    weights, bias = np.zeros(3), 0.0
    for _ in range(500):
        predicted = 1 / (1 + np.exp(-(train_features @ weights + bias)))
        weights -= 0.5 * train_features.T @ (predicted - train_labels) / len(train_labels)
        bias -= 0.5 * (predicted - train_labels).mean()
    return float(((test_features @ weights + bias > 0) == test_labels).mean())


def run(workdir: str, quick: bool) -> list[common.Row]:
    num_images = QUICK_IMAGES if quick else None
    parallel = "direct_num_workers=2,direct_running_mode=multi_processing"
    serial = "direct_num_workers=1,direct_running_mode=in_memory"
    serial_seconds = _build(os.path.join(workdir, "serial"), num_images, serial)
    parallel_seconds = _build(os.path.join(workdir, "parallel"), num_images, parallel)
    rows = [
        common.Row(
            benchmark="dataset",
            figure=f"tfds build of {num_images or 'the default 2000'} synthetic faces, 2 Beam "
            "workers, wall clock",
            value=parallel_seconds,
            unit="s",
            baseline="1 worker, in memory",
            baseline_value=serial_seconds,
            target=f"< {TARGET_BUILD_SECONDS} s" if not quick else "",
            higher_is_better=False,
        )
    ]
    if quick:
        return rows

    import keras

    data_dir = os.path.join(workdir, "parallel")
    train = _split_arrays(data_dir, "synthetic", "train")
    validation = _split_arrays(data_dir, "synthetic", "validation")
    test = _split_arrays(data_dir, "synthetic", "test")
    keras.utils.set_random_seed(0)
    model = _seed_cnn()
    start = time.perf_counter()
    model.fit(*train, batch_size=32, epochs=SEED_CNN_EPOCHS, validation_data=validation, verbose=2)
    train_seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(*test, verbose=0)
    print(f"   seed CNN trained in {train_seconds:.0f} s", file=sys.stderr)
    rows.append(
        common.Row(
            benchmark="dataset",
            figure=f"seed CNN test accuracy on synthetic after {SEED_CNN_EPOCHS} epochs",
            value=float(accuracy),
            unit="",
            baseline="logistic regression on mean colour",
            baseline_value=_mean_colour_accuracy(train, test),
            target=f">= {TARGET_ACCURACY}",
        )
    )
    return rows
