"""pipeline.crossval: person-disjoint folds, serving-path preprocessing, recipes scored per fold."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import config, errors
from pipeline.data import transform
from pipeline.train import crossval
from tests.support import fake_fer, tiny_tfds

PEOPLE = ("Ann_Lee", "Bo_Chan", "Cy_Dee", "Di_Eve", "Ed_Fox", "Flo_Gu")


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    """Two photos per person and label (bright discs happy, dark sad), JPEG and PNG, odd sizes."""
    folder = tmp_path_factory.mktemp("faces")
    labels = np.array([0, 1] * 2 * len(PEOPLE))
    images = tiny_tfds.images(labels, seed=5)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = PEOPLE[index // 4]
        directory = folder / ("sad", "happy")[label]
        directory.mkdir(exist_ok=True)
        photo = Image.fromarray(image).resize((200 + index, 180))
        extension = "png" if index % 3 == 0 else "jpg"
        photo.save(directory / f"{name}_{index:04d}.{extension}")
    (folder / "happy" / "notes.txt").write_text("not an image")
    return str(folder)


def test_person_is_the_name_without_the_number():
    assert crossval.person("happy/Tony_Blair_0003.jpg") == "Tony_Blair"
    assert crossval.person("Jayamadhuri_112.jpg") == "Jayamadhuri"
    assert crossval.person("portrait.png") == "portrait"


def test_folds_keep_each_person_on_one_side_and_stay_even():
    people = np.array(["big"] * 6 + ["a", "b", "c", "d", "e", "f"] * 1 + ["g"] * 2)
    labels = np.arange(len(people)) % 2
    folds = crossval.person_folds(labels, people, 3, seed=0)
    for name in set(people):
        assert len(set(folds[people == name])) == 1
    assert sorted(np.bincount(folds)) == [4, 4, 6]
    np.testing.assert_array_equal(folds, crossval.person_folds(labels, people, 3, seed=0))
    with pytest.raises(errors.UserError, match="cannot fill"):
        crossval.person_folds(labels, people, 20, seed=0)


def test_faces_go_through_the_one_transform(faces_dir):
    faces = crossval.load_faces(faces_dir)
    assert faces.pixels.shape == (24, 256, 256, 3) and faces.pixels.dtype == np.uint8
    assert faces.labels.tolist().count(1) == 12 and set(faces.people) == set(PEOPLE)
    first = sorted(os.listdir(os.path.join(faces_dir, "sad")))[0]
    with open(os.path.join(faces_dir, "sad", first), "rb") as file:
        served = transform.transform(tf.constant(file.read())).numpy()
    np.testing.assert_array_equal(faces.pixels[0], served)


@pytest.mark.slow
def test_a_recipe_is_scored_on_held_out_people(faces_dir):
    faces = crossval.load_faces(faces_dir)
    folds = crossval.person_folds(faces.labels, faces.people, 3, seed=0)
    changes = {
        "train.epochs": 5,
        "train.batch_size": 4,
        "train.model.filters": 8,
        "train.model.dense_units": 32,
        "train.learning_rate": 3e-4,
        "train.xla": "off",
    }
    cfg = config.replace(config.seed(), **changes)
    result = crossval.evaluate_recipe(faces, folds, cfg)
    assert result["fold_sizes"] == [8, 8, 8] and len(result["fold_accuracies"]) == 3
    assert result["pooled_accuracy"] >= 0.9  # bright vs dark is learnt from other people
    assert result["fold_accuracy_mean"] == pytest.approx(np.mean(result["fold_accuracies"]))


def test_zero_shot_reference_from_the_command_line(faces_dir, tmp_path, capsys):
    weights = fake_fer.write_hdf5(str(tmp_path))
    output = tmp_path / "crossval.json"
    argv = ["--input", faces_dir, "--recipes", crossval.ZERO_SHOT, "--folds", "2"]
    argv += ["--backbone-weights", weights, "--output", str(output)]
    assert crossval.main(argv) == 0
    assert "fer_zero_shot" in capsys.readouterr().out
    result = json.loads(output.read_text())["results"][0]

    faces = crossval.load_faces(faces_dir)
    small = keras.ops.image.resize(faces.pixels / 255.0, (64, 64), antialias=True)
    gray = keras.ops.convert_to_numpy(small) @ np.array([0.299, 0.587, 0.114], "float32")
    fer = keras.models.load_model(weights, compile=False)
    probabilities = fer.predict(gray[..., None] * 2 - 1, verbose=0)
    expected = np.mean((probabilities[:, 3] >= probabilities[:, 4]) == (faces.labels == 1))
    assert result["pooled_accuracy"] == pytest.approx(expected)
    assert crossval.main(["--input", str(tmp_path)]) == 2
