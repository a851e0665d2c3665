"""tf.data input pipelines read straight from a prepared TFDS dataset (any name, config, version).

Every model in `pipeline.models` takes float32 images of shape (256, 256, 3) scaled to [0, 1],
as the seed did; labels are the ClassLabel ids (0 sad, 1 happy). The synthetic default and a
user's folder go through exactly the same code: only the dataset name differs.
"""

import collections
import importlib
import logging

import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline import errors

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_KEY = "image"
LABEL_KEY = "label"
DEFAULT_DATASET = "happysad_tfds/synthetic"
# Modules whose import registers a TFDS builder: a dataset of ours is then found by its code,
# and any other prepared dataset still loads from its files alone.
_BUILDER_MODULES = ("happysad_tfds",)
_SHUFFLE_BUFFER = 4096

logger = logging.getLogger(__name__)


def _register_builders() -> None:
    for module in _BUILDER_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:  # the dataset may still be readable from its files
            logger.debug("could not import %s: %s", module, error)


def builder(dataset: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a prepared dataset such as "happysad_tfds/folder:1.0.0".

    Raises:
        UserError: the dataset is unknown or has not been built in `data_dir` yet.
    """
    _register_builders()
    try:
        dataset_builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise errors.UserError(
            f"dataset {dataset!r} not found in {data_dir or 'the default TFDS data_dir'} "
            "(build it first with `happysad build`)"
        ) from None
    if not dataset_builder.is_prepared():
        raise errors.UserError(
            f"dataset {dataset!r} is not built in {dataset_builder.data_dir} "
            "(build it first with `happysad build`)"
        )
    return dataset_builder


def load_examples(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    *,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Unbatched feature dicts as stored: uint8 `image`, int64 `label`, and any other features.

    This is the raw view that parity checks need (the exported model takes the same uint8
    pixels); `load_split` is the one to train and evaluate on.
    """
    dataset_builder = builder(dataset, data_dir)
    _check_split(dataset, dataset_builder, split)
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    return dataset_builder.as_dataset(
        split=split, shuffle_files=shuffle_files, read_config=read_config
    )


def split_names(split: str) -> list[str]:
    """The named splits a TFDS split expression reads: "train[:80%]+validation" -> both."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def _check_split(dataset: str, dataset_builder: tfds.core.DatasetBuilder, split: str) -> None:
    known = dataset_builder.info.splits
    for name in split_names(split):
        if name not in known:
            raise errors.UserError(
                f"dataset {dataset!r} has no split {name!r} (it has: {', '.join(sorted(known))})"
            )


def scale_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels to float32 in [0, 1], as the seed's `x / 255`."""
    return tf.cast(images, tf.float32) / 255.0


def load_split(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    batch_size: int = 32,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    cache: bool = True,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1] of shape (B, 256, 256, 3), int64 labels (B,)).

    The uint8 images are cached (a quarter of the memory of floats) and scaled per batch, one
    vectorised op after shuffling; `shuffle` reshuffles every epoch with `seed`, so a rerun with
    the same seed sees the same order.
    """
    if batch_size < 1:
        raise errors.UserError(f"batch size must be at least 1, got {batch_size}")
    examples = load_examples(dataset, split, data_dir, shuffle_files=shuffle, seed=seed)
    pairs = examples.map(
        lambda features: (features[IMAGE_KEY], features[LABEL_KEY]), num_parallel_calls=AUTOTUNE
    )
    if cache:
        pairs = pairs.cache()
    if repeat:
        pairs = pairs.repeat()
    if shuffle:
        pairs = pairs.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    batches = pairs.batch(batch_size, num_parallel_calls=AUTOTUNE)
    batches = batches.map(
        lambda images, labels: (scale_images(images), labels), num_parallel_calls=AUTOTUNE
    )
    return batches.prefetch(AUTOTUNE)


def label_counts(dataset: str, split: str, data_dir: str | None = None) -> dict[int, int]:
    """How many examples of each class id the split holds (images are not decoded)."""
    dataset_builder = builder(dataset, data_dir)
    _check_split(dataset, dataset_builder, split)
    labels = dataset_builder.as_dataset(
        split=split, decoders={IMAGE_KEY: tfds.decode.SkipDecoding()}
    ).map(lambda features: features[LABEL_KEY], num_parallel_calls=AUTOTUNE)
    counts = collections.Counter()
    for batch in labels.batch(4096).as_numpy_iterator():
        counts.update(int(label) for label in batch)
    return dict(sorted(counts.items()))


def class_weights(counts: dict[int, int], num_classes: int = 2) -> dict[int, float]:
    """Keras `class_weight` that makes every class weigh as much in the loss ("balanced").

    weight(c) = total / (num_classes * count(c)), as scikit-learn's "balanced"; a class with no
    examples gets weight 1 (it never appears, so the value does not matter).
    """
    total = sum(counts.values())
    return {
        class_id: (total / (num_classes * counts[class_id]) if counts.get(class_id) else 1.0)
        for class_id in range(num_classes)
    }


def describe(dataset: str, data_dir: str | None = None) -> dict:
    """Name, config, version and split sizes, for train_params.json and the model card."""
    dataset_builder = builder(dataset, data_dir)
    info = dataset_builder.info
    config = dataset_builder.builder_config
    return {
        "name": dataset_builder.name,
        "config": config.name if config else None,
        "version": str(dataset_builder.version),
        "data_dir": str(dataset_builder.data_dir),
        "splits": {name: split.num_examples for name, split in info.splits.items()},
        "labels": list(info.features[LABEL_KEY].names),
        # THE transform's options the examples were made with (the data job's datasets)
        "transform": dict(info.metadata.get("transform", {})) if info.metadata else {},
    }
