"""Face detection in TensorFlow ops (MTCNN), so that a SavedModel can find and crop faces itself.

MTCNN (Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", IEEE SPL 2016): P-Net slides over an image pyramid and
proposes boxes, R-Net (24x24 patches) and O-Net (48x48 patches) refine and filter them, with
non-maximum suppression between the stages. The weights are those of the `mtcnn` wheel on PyPI
(mtcnn 1.0.0, MIT licence; the original authors' networks), read from the installed package;
nothing is downloaded. Unlike that package, whose stages glue TensorFlow calls together with
NumPy, every step here is a TensorFlow op (`tf.image.resize`, `tf.nn.conv2d`,
`tf.image.non_max_suppression`, `tf.image.crop_and_resize`, a `tf.while_loop` over the
pyramid), so `FaceDetector` runs inside `tf.function`, `tf.data` and an exported SavedModel.
The stage thresholds, pyramid factor and box arithmetic follow the mtcnn package; its
non-maximum suppression keeps a box unless a higher-scoring one overlaps it, suppressed or not,
where this one uses TensorFlow's greedy `non_max_suppression`, as the original MTCNN does.
"""

import importlib.util
import os

import numpy as np
import tensorflow as tf

from pipeline import errors

WEIGHTS_PACKAGE = "mtcnn"
WEIGHTS_FILES = {"pnet": "pnet.lz4", "rnet": "rnet.lz4", "onet": "onet.lz4"}
# Networks' strides and input sides.
_CELL_SIZE = 12
_CELL_STRIDE = 2
_RNET_SIDE = 24
_ONET_SIDE = 48
# Stage settings of the mtcnn package (its defaults).
MIN_FACE_SIZE = 20
SCALE_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.8)  # P-Net, R-Net, O-Net face probability
_NMS_PER_SCALE = 0.5
_NMS_PYRAMID = 0.7
_NMS_RNET = 0.7
_NMS_ONET = 0.7
_MAX_PROPOSALS = 2000  # per scale and overall, ahead of each non-maximum suppression


def weights_directory() -> str:
    """Where the installed mtcnn wheel keeps pnet.lz4, rnet.lz4 and onet.lz4.

    Raises:
        UserError: the mtcnn package is not installed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise errors.UserError(
            "face detection needs the MTCNN weights of the `mtcnn` package: pip install mtcnn"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "assets", "weights")


def load_weights(directory: str | None = None) -> dict[str, list[np.ndarray]]:
    """The three networks' weight arrays, in the mtcnn package's Keras layer order.

    The files are joblib dumps (lz4-compressed pickles of NumPy arrays): read them only from
    a trusted installation, as importing its code would be.
    """
    import joblib  # an install requirement of mtcnn

    directory = directory or weights_directory()
    weights = {}
    for name, file_name in WEIGHTS_FILES.items():
        path = os.path.join(directory, file_name)
        if not os.path.isfile(path):
            raise errors.UserError(f"MTCNN weights {path} not found (reinstall mtcnn)")
        weights[name] = [np.asarray(array, dtype=np.float32) for array in joblib.load(path)]
    return weights


def _prelu(x: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    return tf.maximum(x, 0.0) + alpha * tf.minimum(x, 0.0)


def _conv(x, kernel, bias, alpha):
    return _prelu(tf.nn.conv2d(x, kernel, 1, "VALID") + bias, alpha)


def _pool(x, size, padding):
    return tf.nn.max_pool2d(x, size, 2, padding)


def _flatten_transposed(x: tf.Tensor) -> tf.Tensor:
    """Flatten in (width, height, channel) order, as the networks' Caffe weights expect."""
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [tf.shape(x)[0], x.shape[1] * x.shape[2] * x.shape[3]])


def _square(boxes: tf.Tensor) -> tf.Tensor:
    """[x1, y1, x2, y2] boxes made square around their centre (the longer side kept)."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = tf.maximum(width, height)
    x1 = boxes[:, 0] + width * 0.5 - side * 0.5
    y1 = boxes[:, 1] + height * 0.5 - side * 0.5
    return tf.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _refine(boxes: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """Applies regressed offsets (fractions of the box's side + 1, as MTCNN does)."""
    width = boxes[:, 2] - boxes[:, 0] + 1.0
    height = boxes[:, 3] - boxes[:, 1] + 1.0
    return boxes + offsets * tf.stack([width, height, width, height], axis=1)


def _nms(boxes: tf.Tensor, scores: tf.Tensor, threshold: float) -> tf.Tensor:
    """Indices kept by greedy non-maximum suppression of [x1, y1, x2, y2] boxes."""
    yx_boxes = tf.gather(boxes, [1, 0, 3, 2], axis=1)
    return tf.image.non_max_suppression(yx_boxes, scores, _MAX_PROPOSALS, threshold)


class FaceDetector(tf.Module):
    """MTCNN face boxes of one image, in TensorFlow ops only (exportable in a SavedModel).

    Args:
        weights: the three networks' arrays (`load_weights()`); default: the mtcnn wheel's.
        min_face_size: smallest face side searched, in pixels of the input image.
        thresholds: P-Net, R-Net and O-Net face probabilities a box must exceed.

    Raises:
        UserError: the mtcnn package (its weights) is not installed.
        ValueError: weights of the wrong shapes, or a min_face_size below 12 pixels.
    """

    def __init__(
        self,
        weights: dict[str, list[np.ndarray]] | None = None,
        min_face_size: int = MIN_FACE_SIZE,
        thresholds: tuple[float, float, float] = THRESHOLDS,
        name: str = "face_detector",
    ):
        super().__init__(name=name)
        if min_face_size < _CELL_SIZE:
            raise ValueError(f"min_face_size must be at least {_CELL_SIZE}, got {min_face_size}")
        weights = weights or load_weights()
        expected = {"pnet": 13, "rnet": 16, "onet": 21}
        for network, count in expected.items():
            if len(weights.get(network, ())) != count:
                raise ValueError(f"MTCNN {network} needs {count} weight arrays")
        self._pnet = [tf.constant(array) for array in weights["pnet"]]
        self._rnet = [tf.constant(array) for array in weights["rnet"]]
        self._onet = [tf.constant(array) for array in weights["onet"]]
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(value) for value in thresholds)

    # The three networks: (N, H, W, 3) in [-1, 1] -> box offsets and face probabilities.

    def _pnet_outputs(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        w = self._pnet
        x = _pool(_conv(x, w[0], w[1], w[2]), 2, "SAME")
        x = _conv(_conv(x, w[3], w[4], w[5]), w[6], w[7], w[8])
        offsets = tf.nn.conv2d(x, w[9], 1, "VALID") + w[10]
        logits = tf.nn.conv2d(x, w[11], 1, "VALID") + w[12]
        return offsets, tf.nn.softmax(logits)[..., 1]

    def _rnet_outputs(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        w = self._rnet
        x = _pool(_conv(x, w[0], w[1], w[2]), 3, "SAME")
        x = _pool(_conv(x, w[3], w[4], w[5]), 3, "VALID")
        x = _flatten_transposed(_conv(x, w[6], w[7], w[8]))
        x = _prelu(tf.matmul(x, w[9]) + w[10], w[11])
        return tf.matmul(x, w[12]) + w[13], tf.nn.softmax(tf.matmul(x, w[14]) + w[15])[:, 1]

    def _onet_outputs(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        w = self._onet
        x = _pool(_conv(x, w[0], w[1], w[2]), 3, "SAME")
        x = _pool(_conv(x, w[3], w[4], w[5]), 3, "VALID")
        x = _pool(_conv(x, w[6], w[7], w[8]), 2, "SAME")
        x = _flatten_transposed(_conv(x, w[9], w[10], w[11]))
        x = _prelu(tf.matmul(x, w[12]) + w[13], w[14])
        # w[17], w[18]: the five landmarks, not needed to crop.
        return tf.matmul(x, w[15]) + w[16], tf.nn.softmax(tf.matmul(x, w[19]) + w[20])[:, 1]

    # The stages.

    def _scales(self, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """The pyramid: the first level maps min_face_size to 12 pixels, then x0.709 while >= 12."""
        smallest = tf.cast(tf.minimum(height, width), tf.float32)
        first = _CELL_SIZE / self.min_face_size
        levels = tf.math.log(smallest * first / _CELL_SIZE) / -tf.math.log(SCALE_FACTOR)
        count = tf.maximum(tf.cast(tf.floor(levels), tf.int32) + 1, 0)
        return first * tf.pow(SCALE_FACTOR, tf.cast(tf.range(count), tf.float32))

    def _proposals_at(self, image: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
        """P-Net boxes [x1, y1, x2, y2, score] at one pyramid level, in input pixels."""
        size = tf.cast(tf.math.ceil(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
        scaled = tf.image.resize(image[tf.newaxis], size, method="area")
        offsets, probabilities = self._pnet_outputs(scaled)
        where = tf.where(probabilities[0] > self.thresholds[0])  # (k, 2) of (row, column)
        scores = tf.gather_nd(probabilities[0], where)
        offsets = tf.gather_nd(offsets[0], where)
        cells = tf.cast(where[:, ::-1], tf.float32) * _CELL_STRIDE  # (x, y) of each cell
        corners = tf.concat([cells + 1.0, cells + _CELL_SIZE], axis=1)
        boxes = (corners + offsets * (_CELL_SIZE - 1.0)) / scale
        keep = _nms(boxes, scores, _NMS_PER_SCALE)
        return tf.concat([tf.gather(boxes, keep), tf.gather(scores, keep)[:, tf.newaxis]], 1)

    def _pyramid_proposals(self, image: tf.Tensor) -> tf.Tensor:
        scales = self._scales(tf.shape(image)[0], tf.shape(image)[1])
        proposals = tf.zeros([0, 5])
        for level in tf.range(tf.size(scales)):
            tf.autograph.experimental.set_loop_options(
                shape_invariants=[(proposals, tf.TensorShape([None, 5]))]
            )
            proposals = tf.concat([proposals, self._proposals_at(image, scales[level])], 0)
        keep = _nms(proposals[:, :4], proposals[:, 4], _NMS_PYRAMID)
        return _square(tf.gather(proposals[:, :4], keep))

    def _patches(self, image: tf.Tensor, boxes: tf.Tensor, side: int) -> tf.Tensor:
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        normalised = tf.gather(boxes, [1, 0, 3, 2], axis=1) / tf.tile(shape, [2])
        indices = tf.zeros(tf.shape(boxes)[:1], tf.int32)
        return tf.image.crop_and_resize(image[tf.newaxis], normalised, indices, [side, side])

    def _filter(self, boxes, offsets, scores, threshold, nms_threshold):
        kept = scores > threshold
        boxes = _refine(tf.boolean_mask(boxes, kept), tf.boolean_mask(offsets, kept))
        scores = tf.boolean_mask(scores, kept)
        keep = _nms(boxes, scores, nms_threshold)
        return tf.gather(boxes, keep), tf.gather(scores, keep)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detect(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Every face found in one RGB image.

        Args:
            image: uint8 (height, width, 3).

        Returns:
            boxes: float32 (faces, 4) of [x1, y1, x2, y2] in pixels of `image` (they may reach
                past its edges); scores: float32 (faces,) O-Net face probabilities, highest first.
        """
        normalised = (tf.cast(image, tf.float32) - 127.5) / 128.0
        boxes = self._pyramid_proposals(normalised)
        boxes, _ = self._stage(normalised, boxes, self._rnet_outputs, _RNET_SIDE, 1, _NMS_RNET)
        return self._stage(normalised, _square(boxes), self._onet_outputs, _ONET_SIDE, 2, _NMS_ONET)

    def _stage(self, image, boxes, network, side, index, nms_threshold):
        """R-Net or O-Net on the boxes' patches; none in, none out (convolutions of an empty
        batch are not empty in TensorFlow 2.21's oneDNN kernels)."""

        def run():
            offsets, scores = network(self._patches(image, boxes, side))
            return self._filter(boxes, offsets, scores, self.thresholds[index], nms_threshold)

        return tf.cond(tf.shape(boxes)[0] > 0, run, lambda: (tf.zeros([0, 4]), tf.zeros([0])))

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.float32)]
    )
    def largest_face_box(self, image: tf.Tensor, margin: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The largest face's square box, grown by `margin`, as fractions of the image.

        Args:
            image: uint8 (height, width, 3).
            margin: added on every side, as a fraction of the face's side (0.2 = 20%).

        Returns:
            box: float32 (4,) [top, left, bottom, right] in units of the image's height and
                width (values outside [0, 1] reach past its edges: `tf.image.crop_and_resize`
                pads there); the whole image [0, 0, 1, 1] when no face is found.
            found: bool scalar.
        """
        boxes, _ = self.detect(image)
        found = tf.shape(boxes)[0] > 0
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        largest = tf.cond(
            found,
            lambda: _square(boxes)[tf.argmax(areas)],
            lambda: tf.zeros([4]),
        )
        side = (largest[2] - largest[0]) * (1.0 + 2.0 * margin)
        centre_x, centre_y = (largest[0] + largest[2]) / 2.0, (largest[1] + largest[3]) / 2.0
        height = tf.cast(tf.shape(image)[0], tf.float32)
        width = tf.cast(tf.shape(image)[1], tf.float32)
        box = tf.stack(
            [
                (centre_y - side / 2.0) / height,
                (centre_x - side / 2.0) / width,
                (centre_y + side / 2.0) / height,
                (centre_x + side / 2.0) / width,
            ]
        )
        return tf.where(found, box, tf.constant([0.0, 0.0, 1.0, 1.0])), found
