"""What decides whether a file becomes an example, besides THE transform, and what the report says.

The transform (pipeline.data.transform) decodes by content, checks the header's budgets and
returns the pixels or the reason it refused the file; this module adds the verdict vocabulary
of the manifest, the colour statistics the shortcut check needs, and `judge`, which puts them
together for one file.
"""

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline.data import reasons, sources

if TYPE_CHECKING:  # TensorFlow only where the transform runs (the workers)
    from pipeline.data import transform

# Statuses: every input file ends in exactly one.
ACCEPTED = "accepted"
REJECTED = "rejected"
DUPLICATE = "duplicate"

# Reason codes of rejected files, with the sentence the report shows for each.
LABEL_CONFLICT = "label_conflict"
REASONS = {
    **reasons.REASONS,
    sources.UNREADABLE: "the file could not be read (broken link, permissions, I/O error)",
    sources.BAD_FILE_NAME: "the file name is not valid UTF-8 (rename the file to include it)",
    sources.TOO_LARGE: "over the byte budget (not read) or the pixel budget (checked from the "
    "header, before decoding)",
    LABEL_CONFLICT: "the same bytes are filed under more than one label",
}

_GRAYSCALE_TOLERANCE = 2.0  # mean |R-G| + |G-B| below this (JPEG chroma noise) is grayscale


class ImageInfo(NamedTuple):
    """What validation found out about one file: its status, and properties for the report.

    `detail` says what exactly a rejection refers to (the transform's words); `width` and
    `height` are of the original as displayed (after orientation), 0 when unknown; `mode` is
    Pillow's name of its pixel layout; `grayscale` and `brightness` (0..255) describe the
    transformed pixels.
    """

    status: str
    reason: str = ""
    detail: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    orientation: int = 1
    grayscale: bool | None = None
    brightness: float | None = None
    face: bool | None = None  # whether MTCNN finds a face; None where not looked (a sample)


def judge(result: "transform.Result") -> tuple[np.ndarray | None, ImageInfo]:
    """The verdict on one file from what THE transform made of its bytes.

    Returns:
        (uint8 pixels (S, S, 3), info) for an accepted file, (None, info) for a rejected one,
        whose info holds the transform's reason and detail.
    """
    info = ImageInfo(
        REJECTED if result.pixels is None else ACCEPTED,
        result.reason,
        result.detail,
        result.width,
        result.height,
        result.format,
        result.mode,
        result.orientation,
    )
    if result.pixels is None:
        return None, info
    grayscale, brightness = colour_statistics(result.pixels)
    return result.pixels, info._replace(grayscale=grayscale, brightness=brightness)


FACE_SAMPLE_EVERY = 8  # one accepted image in this many (by content hash) is looked at


def in_face_sample(sha256: str) -> bool:
    """Whether an image (by the hex sha256 of its bytes) is in the face-detection sample."""
    return int(sha256[:8], 16) % FACE_SAMPLE_EVERY == 0


class FaceFinder:
    """Whether MTCNN (pipeline.data.face_detection) finds a face in transformed pixels.

    For the report's share of images with a detectable face: the face-expression network
    reads faces, and pictures without one (landscapes, drawings, far-away groups) need
    --face-crop or another recipe. The detector's weights load at the first call.
    """

    def __init__(self):
        self._found = None

    def __call__(self, image: np.ndarray) -> bool:
        if self._found is None:
            import tensorflow as tf

            from pipeline.data import face_detection

            detector = face_detection.FaceDetector()
            margin = tf.constant(0.0)
            self._found = lambda pixels: bool(detector.largest_face_box(pixels, margin)[1])
        return self._found(image)


def colour_statistics(image: np.ndarray) -> tuple[bool, float]:
    """(grayscale, brightness) of uint8 RGB pixels (H, W, 3), for the report's shortcut check.

    grayscale: mean |R - G| + |G - B| under 2 levels (no colour up to JPEG's chroma noise);
    brightness: the mean pixel value, 0..255, rounded to 0.1.
    """
    pixels = image.astype(np.int16)
    difference = np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2])
    return bool(difference.mean() < _GRAYSCALE_TOLERANCE), round(float(image.mean()), 1)
