"""Tests of the synthetic face renderer: determinism, the label's effect, variety, no shortcuts."""

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing import test_pipeline, util

from pipeline import contract
from pipeline.data import synthetic_faces


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _logistic_regression_accuracy(features, labels, train, test, steps=300):
    """Held-out accuracy of a logistic regression fitted by gradient descent (no sklearn)."""
    mean, scale = features[train].mean(0), features[train].std(0) + 1e-6
    features = (features - mean) / scale
    weights, bias = np.zeros(features.shape[1]), 0.0
    for _ in range(steps):
        predicted = 1 / (1 + np.exp(-(features[train] @ weights + bias)))
        error = predicted - labels[train]
        weights -= 0.5 * features[train].T @ error / len(train)
        bias -= 0.5 * error.mean()
    return float(((features[test] @ weights + bias > 0) == labels[test]).mean())


def test_render_face_is_rgb_uint8_and_deterministic():
    first = synthetic_faces.render_face(11, "happy")
    again = synthetic_faces.render_face(11, "happy")
    assert first.shape == (256, 256, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert synthetic_faces.render_face(11, "happy", size=96).shape == (96, 96, 3)


def test_other_seeds_draw_other_faces():
    images = [synthetic_faces.render_face(seed, "sad", size=96) for seed in range(6)]
    for index, image in enumerate(images):
        for other in images[index + 1 :]:
            assert np.abs(image.astype(int) - other).mean() > 10


def test_the_label_changes_only_the_expression():
    """Same seed, other label: same person; only a small patch (mouth and brows) differs."""
    for seed in range(4):
        sad = synthetic_faces.render_face(seed, "sad").astype(int)
        happy = synthetic_faces.render_face(seed, "happy").astype(int)
        changed = np.abs(sad - happy).max(axis=2) > 40
        assert 0.003 < changed.mean() < 0.06
        rows, columns = np.nonzero(changed)
        # Inside the face, which is roughly centred: never near the image's edges.
        assert rows.min() > 40 and rows.max() < 216
        assert columns.min() > 40 and columns.max() < 216


def test_happy_mouths_curve_up_and_sad_brows_rise():
    for seed in range(50):
        happy = synthetic_faces.sample_expression(np.random.default_rng(seed), "happy")
        sad = synthetic_faces.sample_expression(np.random.default_rng(seed), "sad")
        assert happy.mouth_curve > 0.1 and sad.mouth_curve < -0.1
        assert sad.brow_raise > 0.05 > happy.brow_raise
        assert happy.mouth_open == sad.mouth_open  # opening the mouth is no cue


def test_unknown_label_and_tiny_size_are_refused():
    with pytest.raises(ValueError, match="unknown label"):
        synthetic_faces.render_face(0, "angry")
    with pytest.raises(ValueError, match="at least 32"):
        synthetic_faces.render_face(0, "happy", size=8)


def test_no_single_colour_or_pixel_gives_the_label_away():
    """A logistic regression on the mean colour, or on the best single pixel, is near chance."""
    count = 160
    images = np.stack(
        [
            synthetic_faces.render_face(
                synthetic_faces.image_seed(3, index), contract.LABELS[index % 2], 96
            )
            for index in range(count)
        ]
    ).astype(np.float32)
    labels = np.arange(count) % 2
    train, test = np.arange(count // 2), np.arange(count // 2, count)
    mean_colour = images.mean(axis=(1, 2))
    assert _logistic_regression_accuracy(mean_colour, labels, train, test) < 0.65
    # Pick the most telling pixel on one half of the training images, score it on the test set.
    pick, check = train[: count // 4], train[count // 4 :]
    grid = [(row, column) for row in range(4, 96, 8) for column in range(4, 96, 8)]
    best = max(
        grid,
        key=lambda at: _logistic_regression_accuracy(
            images[:, at[0], at[1]], labels, pick, check, 60
        ),
    )
    assert _logistic_regression_accuracy(images[:, best[0], best[1]], labels, train, test) < 0.68


def test_source_images_are_balanced_jpegs_with_stable_paths():
    first = [synthetic_faces.render_source_image(index, seed=5) for index in range(4)]
    assert [source.label for source in first] == ["sad", "happy", "sad", "happy"]
    assert [source.path for source in first] == [
        "synthetic/sad/00000.jpg",
        "synthetic/happy/00001.jpg",
        "synthetic/sad/00002.jpg",
        "synthetic/happy/00003.jpg",
    ]
    assert first[0].data[:2] == b"\xff\xd8"
    assert _decode(first[0].data).shape == (256, 256, 3)
    # The i-th image never depends on how many are made, and the seed matters.
    assert synthetic_faces.render_source_image(2, seed=5) == first[2]
    assert synthetic_faces.render_source_image(2, seed=6).data != first[2].data


def test_render_synthetic_faces_transform():
    with test_pipeline.TestPipeline() as pipeline:
        sources = pipeline | synthetic_faces.RenderSyntheticFaces(5, seed=2, size=64)
        util.assert_that(
            sources,
            util.equal_to([synthetic_faces.render_source_image(i, 2, 64) for i in range(5)]),
        )
        labels = sources | beam.Map(lambda source: source.label)
        util.assert_that(
            labels | "Count" >> beam.combiners.Count.PerElement(),
            util.equal_to([("sad", 3), ("happy", 2)]),
            label="Balanced",
        )


def test_render_synthetic_faces_needs_one_image_per_label():
    with pytest.raises(ValueError, match="at least 2"):
        synthetic_faces.RenderSyntheticFaces(1, seed=0)
