"""Label names and the records that flow between the Beam stages and the TFDS builder."""

from typing import NamedTuple

import numpy as np

# Index is the class id: 0 is sad, 1 is happy (the seed's convention, and the ClassLabel order).
LABELS = ("sad", "happy")


class SourceImage(NamedTuple):
    """An input image before validation.

    `data` is None for files that a DoFn reads itself (through Beam's FileSystems, so the
    read is parallel and works on gs:// or s3://); sources that make their bytes in memory
    (the synthetic renderer) fill it in.
    """

    path: str
    label: str
    data: bytes | None = None


class CleanImage(NamedTuple):
    """An accepted image: decoded, normalised to 8-bit RGB and resized, with its lineage."""

    path: str
    label: str
    sha256: str  # of the original file's bytes: the stable key and the split's seed
    split: str
    image: np.ndarray  # uint8, (size, size, 3), RGB
    width: int  # of the original image
    height: int
    format: str  # of the original file, as detected from its content ("jpeg", "png", ...)


def label_id(label: str) -> int:
    """The class id of a label name; ValueError for anything but 'sad' or 'happy'."""
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown label {label!r}: expected one of {LABELS}") from None
