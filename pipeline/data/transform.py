"""THE pixel transform (stand-in until the TensorFlow implementation lands: same interface).

Raw bytes -> decoded by content -> oriented -> alpha on white -> 8-bit RGB -> resized by the
policy -> uint8 [S, S, 3].
"""

from typing import NamedTuple

import numpy as np

from pipeline import config as config_lib
from pipeline.data import imaging

REASONS = {
    imaging.NOT_AN_IMAGE: imaging.REASONS[imaging.NOT_AN_IMAGE],
    imaging.UNSUPPORTED_FORMAT: imaging.REASONS[imaging.UNSUPPORTED_FORMAT],
    imaging.CORRUPT: imaging.REASONS[imaging.CORRUPT],
    imaging.TOO_SMALL: imaging.REASONS[imaging.TOO_SMALL],
    imaging.TOO_LARGE: imaging.REASONS[imaging.TOO_LARGE],
    imaging.EXTREME_ASPECT: imaging.REASONS[imaging.EXTREME_ASPECT],
}


class Result(NamedTuple):
    """The transform's answer for one file: pixels, or the reason they are refused."""

    image: np.ndarray | None
    reason: str
    format: str
    width: int
    height: int
    orientation: int


class Transformer:
    """transform(bytes) for a Beam worker: construct once (setup), call per file."""

    def __init__(self, options: config_lib.TransformConfig):
        self._options = imaging.CleaningOptions(
            image_size=options.image_size,
            resize_policy=options.resize_policy,
            min_side=options.min_side,
            max_pixels=options.max_pixels,
            max_aspect_ratio=options.max_aspect_ratio,
        )

    def __call__(self, data: bytes) -> Result:
        image, info = imaging.clean_image_bytes(data, self._options)
        return Result(image, info.reason, info.format, info.width, info.height, info.orientation)
