"""The records that flow between the stages of the data job."""

from typing import NamedTuple

import numpy as np


class SourceImage(NamedTuple):
    """An input file before validation.

    `data` is None for files that a DoFn reads itself (through Beam's FileSystems, so the
    read is parallel and works on gs:// or s3://); sources that make their bytes in memory
    (the synthetic renderer) fill it in. `problem` is a reason code (validate.REASONS) found
    while listing (a broken link, a name that is not UTF-8): such a file is not read.
    """

    path: str
    label: str
    data: bytes | None = None
    problem: str = ""


class CleanImage(NamedTuple):
    """An accepted image: the transform's pixels and where they came from."""

    path: str
    label: str
    sha256: str  # of the original file's bytes: the stable key and the split's seed
    split: str
    image: np.ndarray  # uint8 (size, size, 3) RGB: what pipeline.data.transform returned
