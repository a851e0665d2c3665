"""The happysad_tfds dataset: importing this package registers it with TFDS."""

from happysad_tfds.happysad_tfds_dataset_builder import (
    DEFAULT_NUM_IMAGES,
    FOLDER,
    SYNTHETIC,
    Builder,
    HappysadConfig,
    make_config,
)

__all__ = ["DEFAULT_NUM_IMAGES", "FOLDER", "SYNTHETIC", "Builder", "HappysadConfig", "make_config"]
