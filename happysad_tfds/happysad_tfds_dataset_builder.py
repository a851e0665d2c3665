"""happysad_tfds: happy and sad faces, rendered (`synthetic`) or from your own folders (`folder`)."""

import dataclasses
import hashlib
import json
import logging

import apache_beam as beam
import tensorflow_datasets as tfds

from pipeline import beam_options, errors, imaging, preprocess, schema, splits, synthetic_faces

logger = logging.getLogger(__name__)

_LABELS = list(schema.LABELS)  # ['sad', 'happy']: class 0 is sad, 1 is happy.
SOURCES = ("synthetic", "folder")
DEFAULT_NUM_IMAGES = 2000
METRICS_NAMESPACE = "happysad_tfds"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Only the `folder` config reads the manual directory (`synthetic` needs nothing).
Put your face photos in two sub-folders named for their label:

    <manual_dir>/happy/   photos of smiling, happy faces
    <manual_dir>/sad/     photos of frowning, sad faces

Any JPEG, PNG, GIF, WebP, BMP or TIFF works, at any size, in nested folders too: files are
recognised by their content, not their names. Unusable files (corrupt, tiny, not an image,
the same bytes under both labels) are skipped and counted in the dataset's metadata.
Pass the folder as `tfds build --manual_dir=<manual_dir>` or `happysad build --config folder
--manual-dir <manual_dir>`; the default is `<data_dir>/downloads/manual/`.
"""


@dataclasses.dataclass(eq=False, kw_only=True)
class HappysadConfig(tfds.core.BuilderConfig):
    """Where the faces come from and how they are cleaned.

    Build variants with `make_config`, which names them after what differs from the defaults
    (e.g. `synthetic_64`, `folder_pad_face`), so differently made datasets live side by side
    under `data_dir` and `tfds.load("happysad_tfds/<name>")` finds each one.

    Attributes:
      source: "synthetic" (the built-in renderer) or "folder" (happy/ and sad/ folders in
        the manual directory).
      num_images: how many faces to render (synthetic only), half of them happy.
      seed: the renderer's seed (synthetic only).
      cleaning: the validation and resize options of `pipeline.imaging`, applied to both.
    """

    source: str = "synthetic"
    num_images: int = DEFAULT_NUM_IMAGES
    seed: int = 0
    cleaning: imaging.CleaningOptions = imaging.DEFAULT_OPTIONS

    def __post_init__(self):
        if isinstance(self.cleaning, dict):  # from `tfds build --config '{...json...}'`
            values = {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in self.cleaning.items()
            }
            self.cleaning = imaging.CleaningOptions(**values)
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "synthetic" and self.num_images < 2:
            raise ValueError(
                f"num_images must be at least 2 (one per label), got {self.num_images}"
            )


def make_config(
    source: str = "synthetic",
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    cleaning: imaging.CleaningOptions = imaging.DEFAULT_OPTIONS,
) -> HappysadConfig:
    """The config for these parameters, named after what differs from the defaults.

    Returns the registered `synthetic` or `folder` config itself when nothing differs (TFDS
    refuses a new config object that reuses a registered name).
    """
    parts = [source]
    if source == "synthetic":
        parts += [str(num_images)] if num_images != DEFAULT_NUM_IMAGES else []
        parts += [f"seed{seed}"] if seed else []
    else:
        num_images, seed = DEFAULT_NUM_IMAGES, 0
    name = "_".join(parts) + _cleaning_suffix(cleaning)
    for registered in (SYNTHETIC, FOLDER):
        if registered.name == name:
            return registered
    return HappysadConfig(
        name=name,
        description=_describe(source, num_images, seed, cleaning),
        source=source,
        num_images=num_images,
        seed=seed,
        cleaning=cleaning,
    )


def _cleaning_suffix(cleaning: imaging.CleaningOptions) -> str:
    """ "" for the default cleaning, else readable tokens plus a hash of every option."""
    if cleaning == imaging.DEFAULT_OPTIONS:
        return ""
    tokens = []
    if cleaning.image_size != imaging.DEFAULT_OPTIONS.image_size:
        tokens.append(f"{cleaning.image_size}px")
    if cleaning.resize_policy != imaging.DEFAULT_OPTIONS.resize_policy:
        tokens.append(cleaning.resize_policy)
    if cleaning.face_crop:
        tokens.append("face")
    readable = dataclasses.replace(
        imaging.DEFAULT_OPTIONS,
        image_size=cleaning.image_size,
        resize_policy=cleaning.resize_policy,
        face_crop=cleaning.face_crop,
    )
    if cleaning != readable:  # the other options get a short, stable fingerprint
        encoded = json.dumps(dataclasses.asdict(cleaning), sort_keys=True).encode()
        tokens.append(hashlib.sha256(encoded).hexdigest()[:8])
    return "_" + "_".join(tokens)


def _describe(source: str, num_images: int, seed: int, cleaning: imaging.CleaningOptions) -> str:
    if source == "synthetic":
        origin = f"{num_images} faces drawn by the built-in renderer (seed {seed})"
    else:
        origin = "Your photos from happy/ and sad/ folders in the manual directory"
    changed = {
        field.name: getattr(cleaning, field.name)
        for field in dataclasses.fields(cleaning)
        if getattr(cleaning, field.name) != getattr(imaging.DEFAULT_OPTIONS, field.name)
    }
    cleaned = ", ".join(f"{key}={value}" for key, value in changed.items()) or "default cleaning"
    return f"{origin}; {cleaned}."


SYNTHETIC = HappysadConfig(
    name="synthetic",
    description=_describe("synthetic", DEFAULT_NUM_IMAGES, 0, imaging.DEFAULT_OPTIONS),
)
FOLDER = HappysadConfig(
    name="folder",
    description=_describe("folder", DEFAULT_NUM_IMAGES, 0, imaging.DEFAULT_OPTIONS),
    source="folder",
)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for happysad_tfds: 256x256 RGB faces labelled sad (0) or happy (1).

    `BUILDER_CONFIGS` lists only `synthetic`, because a plain `tfds build` builds every
    listed config and `folder` cannot be built without the user's photos; `folder` (and any
    `make_config` variant) is built by name: `tfds build happysad_tfds/folder --manual_dir D`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: synthetic and folder configs, content-hash splits.",
    }
    BUILDER_CONFIGS = [SYNTHETIC]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    @classmethod
    def get_builder_config(cls, name, version=None):
        """Also resolves `folder`, which BUILDER_CONFIGS leaves out (see the class docstring)."""
        if name == FOLDER.name:
            return FOLDER
        return super().get_builder_config(name, version)

    def download_and_prepare(self, *, download_config=None, **kwargs):
        """TFDS's, where a runner Beam cannot name is resolved first (`runner=DaskRunner`).

        `tfds build --beam_pipeline_options="runner=DaskRunner,dask_client_address=..."`
        passes only options, and Beam's runner lookup knows no DaskRunner by name: the
        runner comes from `pipeline.beam_options.named_runner`, as in `happysad build`.
        """
        options = download_config.beam_options if download_config else None
        if options is not None and download_config.beam_runner is None:
            name = options.view_as(beam.options.pipeline_options.StandardOptions).runner
            runner = beam_options.named_runner(name) if name else None
            if runner is not None:
                download_config = dataclasses.replace(download_config, beam_runner=runner)
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata."""
        size = self.builder_config.cleaning.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(names=_LABELS),
                    "image/filename": tfds.features.Text(),
                    "image/sha256": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager, pipeline):
        """Cleans every image once, then partitions them by their content-hash split."""
        config = self.builder_config
        if config.source == "synthetic":
            root = ""
            sources = pipeline | "RenderSyntheticFaces" >> synthetic_faces.RenderSyntheticFaces(
                config.num_images, config.seed
            )
        else:
            root = _manual_dir(dl_manager)
            sources = _list_labelled_files(pipeline, root)
        cleaned = sources | "CleanImages" >> preprocess.CleanImages(config.cleaning)
        active = [
            split
            for split, fraction in zip(splits.SPLITS, config.cleaning.split_fractions, strict=True)
            if fraction > 0
        ]
        checked = cleaned["accepted"] | "CheckCounts" >> _check_counts(root, active)
        by_split = (
            cleaned["accepted"]
            | "EncodeExamples" >> beam.Map(_to_example, root)
            | "PartitionBySplit"
            >> beam.Partition(lambda keyed, _: active.index(keyed[0]), len(active))
        )
        return {
            split: by_split[index]
            | f"Checked{split.title()}Examples"
            >> beam.Map(_after_check, beam.pvalue.AsSingleton(checked))
            for index, split in enumerate(active)
        }

    def _generate_examples(self, **kwargs):
        """Unused: `_split_generators` returns the PCollections of examples directly."""
        raise NotImplementedError("happysad_tfds generates its splits in _split_generators")

    def _process_pipeline_result(self, pipeline_result) -> None:
        """Stores the class balance per split and the cleaning verdicts in the metadata."""
        counters = _counters(pipeline_result)
        class_counts = {
            split: {
                label: counters.get((METRICS_NAMESPACE, f"{split}/{label}"), 0) for label in _LABELS
            }
            for split in splits.SPLITS
        }
        cleaning = {
            name: value for (namespace, name), value in counters.items() if namespace == "happysad"
        }
        self.info.metadata["class_counts"] = class_counts
        self.info.metadata["cleaning"] = dict(sorted(cleaning.items()))
        self.info.metadata["cleaning_options"] = dataclasses.asdict(self.builder_config.cleaning)
        logger.info("Examples per split and label: %s; cleaning: %s", class_counts, cleaning)


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> str:
    """The manual directory, or a UserError that says what to put there."""
    try:
        return str(dl_manager.manual_dir)
    except AssertionError:
        missing = getattr(dl_manager, "_manual_dir", None) or "the manual directory"
        raise errors.UserError(
            f"manual directory {missing} is missing or empty: put your photos in its happy/ "
            "and sad/ sub-folders (or pass another folder with --manual_dir)"
        ) from None


def _list_labelled_files(pipeline, root: str):
    """preprocess.ListLabelledFiles, whose errors also say what the folder should hold."""
    try:
        return pipeline | "ListLabelledFiles" >> preprocess.ListLabelledFiles(root)
    except errors.UserError as error:
        raise errors.UserError(
            f"{error}: put photos of happy faces in {root}/happy/ and of sad faces in {root}/sad/"
        ) from None


@beam.ptransform_fn
def _check_counts(accepted, root: str, active_splits: list[str]):
    """One element, {(split, label): count}, once every label and split has an image.

    Otherwise it raises a UserError, and since every split's examples wait for this element
    (as a side input), the build stops before anything is written.
    """
    return (
        accepted
        | "SplitAndLabel" >> beam.Map(lambda image: (image.split, image.label))
        | "Count" >> beam.combiners.Count.PerElement()
        | "ToDict" >> beam.combiners.ToDict()
        | "Check" >> beam.Map(_require_images, root, active_splits)
    )


def _require_images(counts: dict, root: str, active_splits: list[str]) -> dict:
    source = f"{root}/" if root else "the synthetic source"
    for label in _LABELS:
        if not any(label == counted_label for _, counted_label in counts):
            if not root:
                raise errors.UserError(f"the synthetic source made no usable {label} image")
            raise errors.UserError(
                f"no usable {label} image in {root}/{label}/: add JPEG or PNG photos of "
                f"{label} faces there (every file in it was unreadable, corrupt, too small or "
                "also filed under the other label)"
            )
    total = sum(counts.values())
    for split in active_splits:
        if not any(split == counted_split for counted_split, _ in counts):
            more = "add more photos to the happy/ and sad/ folders" if root else "render more"
            raise errors.UserError(
                f"the {split} split got no image from {source}: {total} usable images are too "
                f"few to fill every split, so {more} (a few dozen at least)"
            )
    return counts


def _to_example(image: schema.CleanImage, root: str):
    """(split, (key, feature dict)): the key is the content hash, stable and never a path."""
    filename = image.path
    if root and filename.startswith(root.rstrip("/") + "/"):
        filename = filename[len(root.rstrip("/")) + 1 :]
    example = {
        "image": preprocess.encode_png(image.image),
        "label": image.label,
        "image/filename": filename,
        "image/sha256": image.sha256,
    }
    return image.split, (image.sha256, example)


def _after_check(split_and_example: tuple, counts: dict):
    """(key, example) once _check_counts has accepted the whole dataset."""
    del counts  # only waited for
    split, (key, example) = split_and_example
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{split}/{example['label']}").inc()
    return key, example


def _counters(pipeline_result) -> dict[tuple[str, str], int]:
    """{(namespace, name): committed value} of the pipeline's counters; {} if unavailable."""
    try:
        query = pipeline_result.metrics().query()
    except Exception as error:  # noqa: BLE001 - some runners do not report metrics
        logger.warning("The runner reported no metrics (%s): no class counts in metadata", error)
        return {}
    counters = {}
    for result in query["counters"]:
        key = (result.key.metric.namespace, result.key.metric.name)
        counters[key] = counters.get(key, 0) + (result.committed or 0)
    return counters
