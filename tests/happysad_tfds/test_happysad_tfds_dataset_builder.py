"""Tests of the happysad_tfds builder: both configs, content-hash splits, determinism, bad input."""

import hashlib
import os
import shutil

import apache_beam as beam
import numpy as np
import pytest
import tensorflow_datasets as tfds

import happysad_tfds
from happysad_tfds import happysad_tfds_dataset_builder as builder_module
from pipeline import config, contract, errors
from pipeline.data import job, splits, synthetic_faces

DUMMY_DATA = os.path.join(os.path.dirname(builder_module.__file__), "dummy_data")
# Files the data job must refuse: a cut-off JPEG, and a PPM (not a format the model serves).
BROKEN_DUMMY_FILES = ("happy/truncated.jpg", "sad/scan.ppm")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _count_splits(contents: list[bytes]) -> dict[str, int]:
    found = [splits.assign_split(_sha256(data)) for data in contents]
    return {split: found.count(split) for split in splits.SPLITS}


def _dummy_files() -> dict[str, bytes]:
    """{path relative to dummy_data: bytes} of the usable dummy images."""
    files = {}
    for label in contract.LABELS:
        for name in sorted(os.listdir(os.path.join(DUMMY_DATA, label))):
            relative = f"{label}/{name}"
            if relative not in BROKEN_DUMMY_FILES:
                with open(os.path.join(DUMMY_DATA, relative), "rb") as file:
                    files[relative] = file.read()
    return files


def _tiny_synthetic(num_images: int = 16):
    """A small synthetic config whose images fill every split, and its SourceImages."""
    for seed in range(1, 100):
        sources = [synthetic_faces.render_source_image(i, seed) for i in range(num_images)]
        if all(_count_splits([source.data for source in sources]).values()):
            return happysad_tfds.make_config(
                config.DataConfig(num_images=num_images), seed
            ), sources
    raise AssertionError("no seed fills every split")


TINY_CONFIG, TINY_SOURCES = _tiny_synthetic()


class FolderConfigTest(tfds.testing.DatasetBuilderTestCase):
    """`folder` on dummy_data/: happy/ and sad/ JPEGs and PNGs of mixed sizes, one broken."""

    DATASET_CLASS = happysad_tfds.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [happysad_tfds.FOLDER]
    SPLITS = _count_splits(list(_dummy_files().values()))
    SKIP_CHECKSUMS = True


class SyntheticConfigTest(tfds.testing.DatasetBuilderTestCase):
    """A 16-image `synthetic` variant, built the way `synthetic` is."""

    DATASET_CLASS = happysad_tfds.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [TINY_CONFIG]
    SPLITS = _count_splits([source.data for source in TINY_SOURCES])
    SKIP_CHECKSUMS = True


def _examples_by_split(builder) -> dict[str, dict[str, dict]]:
    """{split: {sha256: example as numpy}} of a prepared builder."""
    found = {}
    for split in builder.info.splits:
        examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        found[split] = {example["image/sha256"].decode(): example for example in examples}
    return found


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = happysad_tfds.Builder(config=TINY_CONFIG, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def test_examples_carry_their_content_hash_split_label_and_filename(tiny_build):
    sources = {_sha256(source.data): source for source in TINY_SOURCES}
    found = _examples_by_split(tiny_build)
    assert sum(len(examples) for examples in found.values()) == len(TINY_SOURCES)
    for split, examples in found.items():
        for sha256, example in examples.items():
            source = sources[sha256]
            assert splits.assign_split(sha256) == split
            assert example["label"] == contract.label_id(source.label)
            assert example["image/filename"].decode() == source.path
            assert example["image"].shape == (256, 256, 3)
    label_names = tiny_build.info.features["label"].names
    assert label_names == ["sad", "happy"]
    assert tiny_build.info.supervised_keys == ("image", "label")


def test_class_balance_per_split_is_in_the_metadata(tiny_build):
    found = _examples_by_split(tiny_build)
    class_counts = tiny_build.info.metadata["class_counts"]
    for split, examples in found.items():
        labels = [int(example["label"]) for example in examples.values()]
        assert class_counts[split] == {"sad": labels.count(0), "happy": labels.count(1)}
    assert tiny_build.info.metadata["cleaning"] == {"accepted": len(TINY_SOURCES)}
    data = config.from_dict(config.DataConfig, tiny_build.info.metadata["data"])
    assert data == TINY_CONFIG.data
    assert tiny_build.info.metadata["transform"] == config.to_dict(TINY_CONFIG.data.transform)


def test_the_data_job_report_lies_beside_the_dataset_version(tiny_build):
    version_dir = os.fspath(tiny_build.data_dir)
    assert version_dir.endswith(os.path.join(TINY_CONFIG.name, "2.0.0"))
    for name in ("manifest.csv", "summary.json", "report.md", "plots"):
        assert os.path.exists(os.path.join(version_dir, name)), name
    rows = job.read_manifest(version_dir)
    assert sorted(row["path"] for row in rows) == sorted(source.path for source in TINY_SOURCES)
    assert {row["status"] for row in rows} == {"accepted"}
    examples = _examples_by_split(tiny_build)
    assert {row["sha256"]: row["split"] for row in rows} == {
        sha256: split for split, found in examples.items() for sha256 in found
    }


def test_tfds_load_finds_a_built_variant_by_name(tiny_build):
    dataset = tfds.load(
        f"happysad_tfds/{TINY_CONFIG.name}",
        data_dir=os.fspath(tiny_build.data_dir_root),
        split="train",
        as_supervised=True,
    )
    image, label = next(iter(dataset))
    assert image.shape == (256, 256, 3) and int(label) in (0, 1)


def test_a_rebuild_gives_the_same_examples_in_the_same_splits(tiny_build, tmp_path):
    rebuilt = happysad_tfds.Builder(config=TINY_CONFIG, data_dir=str(tmp_path))
    rebuilt.download_and_prepare()
    before, after = _examples_by_split(tiny_build), _examples_by_split(rebuilt)
    assert before.keys() == after.keys()
    for split in before:
        assert before[split].keys() == after[split].keys()
        for sha256, example in before[split].items():
            np.testing.assert_array_equal(example["image"], after[split][sha256]["image"])
            assert example["label"] == after[split][sha256]["label"]


def test_more_images_never_move_the_existing_ones(tiny_build, tmp_path):
    """The 16-image build is the start of a 24-image one: the same images, the same splits."""
    grown_config = happysad_tfds.make_config(config.DataConfig(num_images=24), TINY_CONFIG.seed)
    grown = happysad_tfds.Builder(config=grown_config, data_dir=str(tmp_path))
    grown.download_and_prepare()
    before, after = _examples_by_split(tiny_build), _examples_by_split(grown)
    assert sum(len(examples) for examples in after.values()) == 24
    for split, examples in before.items():
        assert set(examples) <= set(after[split])


def test_config_names_say_what_differs_from_the_defaults():
    data = config.DataConfig()
    assert happysad_tfds.make_config() is happysad_tfds.SYNTHETIC
    assert happysad_tfds.make_config(config.DataConfig(input="photos/")) is happysad_tfds.FOLDER
    assert happysad_tfds.make_config(config.replace(data, num_images=64)).name == "synthetic_64"
    assert happysad_tfds.make_config(config.replace(data, num_images=64), 3).name == (
        "synthetic_64_seed3"
    )
    folder = config.replace(data, input="photos/")
    padded = config.replace(folder, **{"transform.resize_policy": "pad"})
    assert happysad_tfds.make_config(padded, seed=3).name == "folder_pad"  # no seed in folders
    stricter = happysad_tfds.make_config(config.replace(folder, **{"transform.min_side": 64}))
    assert stricter.name.startswith("folder_") and stricter.name != "folder"
    other = happysad_tfds.make_config(config.replace(folder, **{"transform.min_side": 65}))
    assert other.name != stricter.name
    assert stricter.data.input is None  # the folder is the manual directory, not the config


def test_the_folder_config_is_found_by_name_but_not_built_by_default():
    """A plain `tfds build` builds every BUILDER_CONFIG: only `synthetic` needs no photos."""
    assert [config.name for config in happysad_tfds.Builder.BUILDER_CONFIGS] == ["synthetic"]
    assert (
        happysad_tfds.Builder(config="folder", data_dir="/nonexistent").builder_config.source
        == "folder"
    )


def test_json_configs_from_the_tfds_cli_are_understood():
    built = happysad_tfds.HappysadConfig(
        name="synthetic_8",
        data={
            "num_images": 8,
            "split_fractions": [0.5, 0.25, 0.25],
            "transform": {"resize_policy": "crop"},
        },
    )
    assert built.data == config.replace(
        config.DataConfig(),
        num_images=8,
        split_fractions=(0.5, 0.25, 0.25),
        **{"transform.resize_policy": "crop"},
    )


# ---------------------------------------------------------------------------------------------
# Bad input: one clear sentence, and nothing that tfds.load would pick up.


def _build_folder(manual_dir, data_dir):
    builder = happysad_tfds.Builder(config="folder", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )


def _assert_nothing_loadable(data_dir):
    assert not happysad_tfds.Builder(config="folder", data_dir=str(data_dir)).is_prepared()
    with pytest.raises(Exception):  # noqa: B017 - whatever TFDS raises, it must not load
        tfds.load("happysad_tfds/folder", data_dir=str(data_dir), download=False)
    leftovers = [
        os.path.join(directory, name)
        for directory, folders, names in os.walk(data_dir)
        for name in folders + names
        if any(part in name for part in ("tfrecord", "manifest", "beam-temp", "incomplete"))
    ]
    assert leftovers == []


def _copy_dummy(tmp_path, labels=contract.LABELS):
    root = tmp_path / "photos"
    for label in labels:
        shutil.copytree(os.path.join(DUMMY_DATA, label), root / label)
    return root


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_missing_or_empty_manual_dir_says_what_to_put_there(tmp_path, make):
    manual_dir = tmp_path / "photos"
    if make == "empty":
        manual_dir.mkdir()
    with pytest.raises(
        errors.UserError, match=r"photos is missing or empty: put .*happy/ and sad/"
    ):
        _build_folder(manual_dir, tmp_path / "data")
    _assert_nothing_loadable(tmp_path / "data")


def test_a_build_whose_runner_loses_examples_publishes_nothing(tmp_path, monkeypatch):
    # A runner that drops examples between the data job and TFDS's writer (as Beam's local
    # runner with several worker processes can): the happy training images go missing.
    expand = job.DataJob.expand

    def losing_expand(self, pbegin):
        return expand(self, pbegin) | "Lose" >> beam.Filter(
            lambda image: not (image.split == "train" and image.label == "happy")
        )

    monkeypatch.setattr(job.DataJob, "expand", losing_expand)
    with pytest.raises(
        errors.UserError, match=r"the runner lost examples \(train: \d+ examples of \d+ accepted"
    ):
        _build_folder(_copy_dummy(tmp_path), tmp_path / "data")
    _assert_nothing_loadable(tmp_path / "data")


def test_a_folder_with_one_class_names_the_missing_one(tmp_path):
    manual_dir = _copy_dummy(tmp_path, labels=("happy",))
    with pytest.raises(errors.UserError, match=r"no sad/ sub-folder.*sad faces in .*photos/sad/"):
        _build_folder(manual_dir, tmp_path / "data")
    _assert_nothing_loadable(tmp_path / "data")


def test_a_class_without_one_usable_image_stops_the_build(tmp_path):
    manual_dir = _copy_dummy(tmp_path, labels=("happy",))
    (manual_dir / "sad").mkdir()
    (manual_dir / "sad" / "notes.txt").write_text("not a face")
    (manual_dir / "sad" / "cut.jpg").write_bytes(TINY_SOURCES[0].data[:200])
    with pytest.raises(errors.UserError, match=r"no usable sad image in .*photos/sad/: add"):
        _build_folder(manual_dir, tmp_path / "data")
    _assert_nothing_loadable(tmp_path / "data")
