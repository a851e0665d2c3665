"""Tests of `happysad build`: the summary, reuse, deterministic rebuilds and one-line errors."""

import dataclasses
import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline import errors
from pipeline.data import build, splits, synthetic_faces


def _seed_that_fills_every_split(num_images: int) -> int:
    for seed in range(1, 100):
        contents = [synthetic_faces.render_source_image(i, seed).data for i in range(num_images)]
        found = {splits.assign_split(hashlib.sha256(data).hexdigest()) for data in contents}
        if found == set(splits.SPLITS):
            return seed
    raise AssertionError("no seed fills every split")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = build.BuildConfig(
        num_images=16,
        seed=_seed_that_fills_every_split(16),
        data_dir=str(tmp_path_factory.mktemp("tfds")),
    )
    return config, build.run(config)


def _examples(summary: dict) -> dict[str, tuple[int, bytes]]:
    """{sha256: (label, image bytes)} over every split of the dataset `summary` describes."""
    found = {}
    builder = tfds.builder_from_directory(summary["dataset_dir"])
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            sha256 = example["image/sha256"].decode()
            assert splits.assign_split(sha256) == split
            found[sha256] = (int(example["label"]), example["image"].tobytes())
    return found


def test_run_builds_and_describes_the_dataset(built):
    config, summary = built
    assert summary["name"] == "happysad_tfds"
    name = f"synthetic_16_seed{config.seed}"
    assert summary["config"] == name
    assert summary["version"] == "1.0.0"
    assert summary["data_dir"] == config.data_dir
    assert summary["dataset_dir"] == os.path.join(config.data_dir, "happysad_tfds", name, "1.0.0")
    assert os.path.isfile(os.path.join(summary["dataset_dir"], "dataset_info.json"))
    assert summary["reused"] is False
    counted = summary["splits"]
    assert sum(split["num_examples"] for split in counted.values()) == 16
    assert sum(split["happy"] for split in counted.values()) == 8
    for split in counted.values():
        assert split["happy"] + split["sad"] == split["num_examples"]
    labels = list(_examples(summary).values())
    assert sum(label for label, _ in labels) == 8
    assert summary["cleaning"] == {"accepted": 16}


def test_a_second_run_reuses_and_an_overwrite_rebuilds_the_same_examples(built):
    config, summary = built
    before = _examples(summary)
    again = build.run(config)
    assert again["reused"] is True and again["splits"] == summary["splits"]
    rebuilt = build.run(dataclasses.replace(config, overwrite=True))
    assert rebuilt["reused"] is False
    after = _examples(rebuilt)
    assert before.keys() == after.keys()
    for sha256, (label, image) in before.items():
        assert after[sha256][0] == label
        assert np.array_equal(
            np.frombuffer(after[sha256][1], np.uint8), np.frombuffer(image, np.uint8)
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"manual_dir": "/tmp"}, "--manual-dir only applies to --config folder"),
        ({"config": "folder", "num_images": 10}, "--num-images only applies"),
        ({"num_images": 1}, "at least 2"),
        ({"config": "folder", "manual_dir": "/no/such/photos"}, "/no/such/photos does not exist"),
    ],
)
def test_options_that_do_not_fit_are_one_sentence_errors(tmp_path, changes, message):
    config = build.BuildConfig(data_dir=str(tmp_path), **changes)
    with pytest.raises(errors.UserError, match=message):
        build.run(config)
    assert not os.path.exists(tmp_path / "happysad_tfds" / "synthetic")


def test_a_folder_without_photos_is_a_user_error(tmp_path):
    (tmp_path / "photos").mkdir()
    config = build.BuildConfig(
        config="folder", manual_dir=str(tmp_path / "photos"), data_dir=str(tmp_path)
    )
    with pytest.raises(errors.UserError, match="photos is missing or empty"):
        build.run(config)


def test_cleaning_options_choose_their_own_config_name():
    config = build.BuildConfig(config="folder", resize_policy="pad", face_crop=True, seed=3)
    assert build._builder_config(config).name == "folder_pad_face"  # a seed means nothing here
    assert build._builder_config(build.BuildConfig()).name == "synthetic"


def test_user_errors_raised_on_beam_workers_come_back_as_one_sentence():
    worker_text = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "pipeline.errors.UserError: no usable sad image in /p/sad/: add JPEG or PNG photos "
        "[while running 'CheckCounts/Check']\n"
    )
    wrapped = RuntimeError(worker_text)
    assert build._user_error_message(wrapped) == (
        "no usable sad image in /p/sad/: add JPEG or PNG photos"
    )
    assert build._user_error_message(RuntimeError("disk full")) is None
    try:
        try:
            raise errors.UserError("the test split got no image")
        except errors.UserError as inner:
            raise RuntimeError("pipeline failed") from inner
    except RuntimeError as outer:
        assert build._user_error_message(outer) == "the test split got no image"
