"""pipeline.data: batches from a prepared TFDS dataset, label counts, class weights, errors."""

import numpy as np
import pytest

from pipeline import errors
from pipeline.train import input_pipeline as data
from tests.support import tiny_tfds


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tiny_tfds.build(directory, train=(0, 0, 0, 1, 0, 1, 0, 0))
    return directory


def test_load_split_batches_scaled_images_and_labels(data_dir):
    batches = list(data.load_split(tiny_tfds.DATASET, "train", data_dir, batch_size=3))
    assert [len(labels) for _, labels in batches] == [3, 3, 2]
    images = np.concatenate([images.numpy() for images, _ in batches])
    assert images.shape == (8, 256, 256, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    raw = list(data.load_examples(tiny_tfds.DATASET, "train", data_dir).as_numpy_iterator())
    np.testing.assert_array_equal(labels, [example["label"] for example in raw])
    np.testing.assert_allclose(images[0], raw[0]["image"] / 255.0, atol=1e-6)


def test_shuffle_is_seeded_and_reshuffles_every_epoch(data_dir):
    def epochs(seed):
        batches = data.load_split(
            tiny_tfds.DATASET, "train", data_dir, batch_size=8, shuffle=True, seed=seed
        )
        return [[float(image.mean()) for image in next(iter(batches))[0].numpy()] for _ in range(2)]

    first, again = epochs(7), epochs(7)
    assert first == again
    assert sorted(first[0]) == sorted(first[1]) and first[0] != first[1]


def test_any_config_and_version_by_name(data_dir):
    description = data.describe(f"{tiny_tfds.DATASET}:1.0.0", data_dir)
    assert description["config"] == tiny_tfds.CONFIG and description["version"] == "1.0.0"
    assert description["splits"] == {"train": 8, "validation": 4, "test": 4}
    assert description["labels"] == ["sad", "happy"]


def test_label_counts_and_balanced_class_weights(data_dir):
    counts = data.label_counts(tiny_tfds.DATASET, "train", data_dir)
    assert counts == {0: 6, 1: 2}
    weights = data.class_weights(counts)
    assert weights == pytest.approx({0: 8 / 12, 1: 8 / 4})
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])


def test_missing_dataset_or_split_is_a_user_error(data_dir, tmp_path):
    with pytest.raises(errors.UserError, match="happysad build"):
        data.load_split(tiny_tfds.DATASET, "train", str(tmp_path), batch_size=2)
    with pytest.raises(errors.UserError, match="no split 'val'"):
        data.load_split(tiny_tfds.DATASET, "val", data_dir, batch_size=2)
    with pytest.raises(errors.UserError, match="batch size"):
        data.load_split(tiny_tfds.DATASET, "train", data_dir, batch_size=0)
