"""What decides whether a file becomes an example, besides THE transform, and what the report says.

The transform (pipeline.data.transform) decodes by content, checks the header's budgets and
returns the pixels or the reason it refused the file; this module adds the verdict vocabulary
of the manifest, the colour statistics the shortcut check needs, and `judge`, which puts them
together for one file.
"""

from typing import NamedTuple

import numpy as np

from pipeline.data import sources, transform

# Statuses: every input file ends in exactly one.
ACCEPTED = "accepted"
REJECTED = "rejected"
DUPLICATE = "duplicate"

# Reason codes of rejected files, with the sentence the report shows for each.
LABEL_CONFLICT = "label_conflict"
REASONS = {
    sources.EMPTY: "the file has no bytes",
    sources.UNREADABLE: "the file could not be read (broken link, permissions, I/O error)",
    sources.BAD_FILE_NAME: "the file name is not valid UTF-8 (rename the file to include it)",
    sources.TOO_LARGE: "over the byte or pixel budget (checked before decoding)",
    LABEL_CONFLICT: "the same bytes are filed under more than one label",
    **transform.REASONS,
}

_GRAYSCALE_TOLERANCE = 2.0  # mean |R-G| + |G-B| below this (JPEG chroma noise) is grayscale


class ImageInfo(NamedTuple):
    """What validation found out about one file: its status, and properties for the report.

    `width`/`height` are of the original as displayed (after orientation), 0 when unknown;
    `grayscale` and `brightness` (0..255) describe the transformed pixels.
    """

    status: str
    reason: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    orientation: int = 1
    grayscale: bool | None = None
    brightness: float | None = None


def judge(data: bytes, transformer: "transform.Transformer") -> tuple[np.ndarray | None, ImageInfo]:
    """The verdict on one file's bytes: (uint8 pixels (S, S, 3), info) or (None, info).

    Never raises for bad content: a refused file gets REJECTED and the transform's reason.
    """
    result = transformer(data)
    info = ImageInfo(
        REJECTED if result.image is None else ACCEPTED,
        result.reason,
        result.width,
        result.height,
        result.format,
        result.orientation,
    )
    if result.image is None:
        return None, info
    grayscale, brightness = colour_statistics(result.image)
    return result.image, info._replace(grayscale=grayscale, brightness=brightness)


def colour_statistics(image: np.ndarray) -> tuple[bool, float]:
    """(grayscale, brightness) of uint8 RGB pixels (H, W, 3), for the report's shortcut check.

    grayscale: mean |R - G| + |G - B| under 2 levels (no colour up to JPEG's chroma noise);
    brightness: the mean pixel value, 0..255, rounded to 0.1.
    """
    pixels = image.astype(np.int16)
    difference = np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2])
    return bool(difference.mean() < _GRAYSCALE_TOLERANCE), round(float(image.mean()), 1)
