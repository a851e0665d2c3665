"""pipeline.data.face_detection: MTCNN in TensorFlow ops, against the mtcnn package, exported."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data import face_detection
from tests.support import drawn_faces


@pytest.fixture(scope="module")
def detector():
    return face_detection.FaceDetector()


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_finds_a_drawn_face_at_several_sizes(detector):
    for size, canvas in ((240, (420, 700)), (60, (300, 400))):
        image = drawn_faces.drawn_face(size, canvas=canvas)  # centre: x = width/2 + 40
        boxes, scores = detector.detect(tf.constant(image))
        assert boxes.shape == (1, 4) and scores.numpy()[0] > 0.8
        centre_x, centre_y = _centre(boxes.numpy()[0])
        assert abs(centre_x - (canvas[1] // 2 + 40)) < size * 0.15
        assert abs(centre_y - canvas[0] // 2) < size * 0.25
        assert size * 0.6 < boxes.numpy()[0][2] - boxes.numpy()[0][0] < size * 1.2


def test_agrees_with_the_mtcnn_package(detector):
    from mtcnn import MTCNN

    image = drawn_faces.drawn_face(150, canvas=(320, 420))
    theirs = MTCNN().detect_faces(image, box_format="xyxy")
    assert len(theirs) == 1
    ours = detector.detect(tf.constant(image))[0].numpy()[0]
    x1, y1, x2, y2 = theirs[0]["box"]
    overlap_width = min(ours[2], x2) - max(ours[0], x1)
    overlap_height = min(ours[3], y2) - max(ours[1], y1)
    intersection = max(overlap_width, 0) * max(overlap_height, 0)
    union = (ours[2] - ours[0]) * (ours[3] - ours[1]) + (x2 - x1) * (y2 - y1) - intersection
    assert intersection / union > 0.75


def test_the_largest_face_wins_and_the_box_is_a_fraction_of_the_image(detector):
    canvas = np.full((300, 600, 3), 90, dtype=np.uint8)
    canvas[:, :300] = drawn_faces.drawn_face(200, canvas=(300, 300))[:, ::-1]  # centre x 110
    small = drawn_faces.drawn_face(70, canvas=(120, 160))  # centre x 120, y 60
    canvas[150:270, 420:580] = small
    assert detector.detect(tf.constant(canvas))[0].shape[0] == 2
    box, found = detector.largest_face_box(tf.constant(canvas), tf.constant(0.0))
    top, left, bottom, right = box.numpy()
    assert bool(found) and right < 0.5  # the big face, on the left half
    assert (bottom - top) * 300 == pytest.approx((right - left) * 600, rel=1e-4)  # square
    grown, _ = detector.largest_face_box(tf.constant(canvas), tf.constant(0.25))
    assert grown.numpy()[2] - grown.numpy()[0] == pytest.approx(1.5 * (bottom - top), rel=1e-4)


def test_no_face_gives_the_whole_image(detector):
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for image in (np.full((200, 300, 3), 90, np.uint8), noise, np.zeros((5, 7, 3), np.uint8)):
        boxes, scores = detector.detect(tf.constant(image))
        assert boxes.shape == (0, 4) and scores.shape == (0,)
        box, found = detector.largest_face_box(tf.constant(image), tf.constant(0.2))
        assert not bool(found)
        np.testing.assert_array_equal(box.numpy(), [0.0, 0.0, 1.0, 1.0])


def test_exports_as_tensorflow_ops_in_a_saved_model(detector, tmp_path):
    graph = detector.largest_face_box.get_concrete_function().graph.as_graph_def()
    operations = {node.op for node in graph.node} | {
        node.op for function in graph.library.function for node in function.node_def
    }
    assert {"NonMaxSuppressionV3", "CropAndResize", "Conv2D", "StatelessWhile"} <= operations
    assert not operations & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    tf.saved_model.save(detector, str(tmp_path / "detector"))
    reloaded = tf.saved_model.load(str(tmp_path / "detector"))
    image = tf.constant(drawn_faces.drawn_face(120, canvas=(260, 340)))
    expected, _ = detector.largest_face_box(image, tf.constant(0.1))
    served, found = reloaded.largest_face_box(image, tf.constant(0.1))
    assert bool(found)
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-5)


def test_rejects_a_face_size_below_the_networks_cell():
    with pytest.raises(ValueError, match="min_face_size"):
        face_detection.FaceDetector(weights={}, min_face_size=8)
