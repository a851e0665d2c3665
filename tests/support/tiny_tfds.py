"""A tiny prepared TFDS dataset with the happysad_tfds features, for the trainer's tests.

Happy images are bright and sad ones dark (with noise), so a model that learns anything at all
separates them within a couple of epochs, and a broken input pipeline or model does not.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NAME = "tiny_happysad"
CONFIG = "faces"
DATASET = f"{NAME}/{CONFIG}"
IMAGE_SIZE = 256


def images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (n, 256, 256, 3): a bright disc for happy, a dark one for sad, on grey noise."""
    rng = np.random.default_rng(seed)
    count = len(labels)
    pixels = rng.normal(128, 20, (count, IMAGE_SIZE, IMAGE_SIZE, 3))
    rows, columns = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    disc = (rows - 128) ** 2 + (columns - 128) ** 2 < 90**2
    for index, label in enumerate(labels):
        pixels[index][disc] += 90 if label else -90
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _split(labels: list[int], seed: int) -> tf.data.Dataset:
    labels = np.asarray(labels, dtype=np.int64)
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": images(labels, seed),
            "label": labels,
            "image/filename": [f"{seed}-{index}.png" for index in range(len(labels))],
        }
    )


def build(data_dir: str, train=(0, 1) * 8, validation=(0, 1) * 2, test=(0, 1) * 2) -> str:
    """Writes the dataset under `data_dir` (labels per split as given) and returns its name."""
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(names=["sad", "happy"]),
            "image/filename": tfds.features.Text(),
        }
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name=NAME,
        version="1.0.0",
        features=features,
        split_datasets={
            "train": _split(list(train), seed=1),
            "validation": _split(list(validation), seed=2),
            "test": _split(list(test), seed=3),
        },
        config=CONFIG,
        data_dir=data_dir,
    )
    return DATASET
