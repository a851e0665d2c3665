"""happysad_tfds: happy and sad faces, rendered (`synthetic`) or from your own folders (`folder`)."""

import dataclasses
import hashlib
import json
import logging

import apache_beam as beam
import tensorflow_datasets as tfds
from apache_beam.io.filesystems import FileSystems

from pipeline import artifacts, contract, errors
from pipeline import config as config_lib
from pipeline.data import beam_options, job, splits

logger = logging.getLogger(__name__)

_LABELS = list(contract.LABELS)  # ['sad', 'happy']: class 0 is sad, 1 is happy.
SOURCES = ("synthetic", "folder")
DEFAULT_NUM_IMAGES = config_lib.DEFAULT_NUM_IMAGES
METRICS_NAMESPACE = "happysad_tfds"
_DEFAULT_DATA = config_lib.DataConfig()

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Only the `folder` config reads the manual directory (`synthetic` needs nothing).
Put your face photos in two sub-folders named for their label:

    <manual_dir>/happy/   photos of smiling, happy faces
    <manual_dir>/sad/     photos of frowning, sad faces

JPEG, PNG, GIF, WebP or BMP, at any size, in nested folders too: files are recognised by
their content, not their names. Unusable files (corrupt, tiny, not an image, another format,
the same bytes under both labels) are skipped and listed with their reason in manifest.csv,
beside the dataset. Pass the folder as `tfds build --manual_dir=<manual_dir>` or
`happysad build --input <manual_dir>`; the default is `<data_dir>/downloads/manual/`.
"""


@dataclasses.dataclass(eq=False, kw_only=True)
class HappysadConfig(tfds.core.BuilderConfig):
    """Where the faces come from and how the data job turns files into examples.

    Build variants with `make_config`, which names them after what differs from the defaults
    (e.g. `synthetic_64`, `folder_pad`), so differently made datasets live side by side
    under `data_dir` and `tfds.load("happysad_tfds/<name>")` finds each one.

    Attributes:
      source: "synthetic" (the built-in renderer) or "folder" (happy/ and sad/ folders in
        the manual directory).
      seed: the renderer's seed (synthetic only).
      data: the data job's options (pipeline.config.DataConfig; its `input` is the manual
        directory at build time, and `num_images` counts synthetic faces).
    """

    source: str = "synthetic"
    seed: int = 0
    data: config_lib.DataConfig = _DEFAULT_DATA

    def __post_init__(self):
        if isinstance(self.data, dict):  # from `tfds build --config '{...json...}'`
            self.data = config_lib.from_dict(config_lib.DataConfig, self.data)
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


def make_config(data: config_lib.DataConfig = _DEFAULT_DATA, seed: int = 0) -> HappysadConfig:
    """The builder config for these options, named after what differs from the defaults.

    `data.input` set means the `folder` source (its path is not part of the name: the folder
    is the manual directory); otherwise `synthetic`. Returns the registered `synthetic` or
    `folder` config itself when nothing differs (TFDS refuses a new config object that
    reuses a registered name).
    """
    source = "folder" if data.input else "synthetic"
    data = dataclasses.replace(data, input=None)
    if source == "folder":
        data = dataclasses.replace(data, num_images=DEFAULT_NUM_IMAGES)
        seed = 0
    parts = [source]
    if data.num_images != DEFAULT_NUM_IMAGES:
        parts.append(str(data.num_images))
    if seed:
        parts.append(f"seed{seed}")
    name = "_".join(parts) + _options_suffix(data)
    for registered in (SYNTHETIC, FOLDER):
        if registered.name == name:
            return registered
    return HappysadConfig(
        name=name, description=_describe(source, data, seed), source=source, seed=seed, data=data
    )


def _options_suffix(data: config_lib.DataConfig) -> str:
    """ "" for the default options, else readable tokens plus a hash of every option."""
    default = dataclasses.replace(_DEFAULT_DATA, num_images=data.num_images)
    if data == default:
        return ""
    tokens = []
    if data.transform.image_size != contract.IMAGE_SIZE:
        tokens.append(f"{data.transform.image_size}px")
    if data.transform.resize_policy != _DEFAULT_DATA.transform.resize_policy:
        tokens.append(data.transform.resize_policy)
    readable = dataclasses.replace(
        default,
        transform=dataclasses.replace(
            default.transform,
            image_size=data.transform.image_size,
            resize_policy=data.transform.resize_policy,
        ),
    )
    if data != readable:  # the other options get a short, stable fingerprint
        encoded = json.dumps(config_lib.to_dict(data), sort_keys=True).encode()
        tokens.append(hashlib.sha256(encoded).hexdigest()[:8])
    return "_" + "_".join(tokens)


def _describe(source: str, data: config_lib.DataConfig, seed: int) -> str:
    if source == "synthetic":
        origin = f"{data.num_images} faces drawn by the built-in renderer (seed {seed})"
    else:
        origin = "Your photos from happy/ and sad/ folders in the manual directory"
    transform = ", ".join(
        f"{key}={value}" for key, value in config_lib.to_dict(data.transform).items()
    )
    return f"{origin}; transform: {transform}."


SYNTHETIC = HappysadConfig(name="synthetic", description=_describe("synthetic", _DEFAULT_DATA, 0))
FOLDER = HappysadConfig(
    name="folder", description=_describe("folder", _DEFAULT_DATA, 0), source="folder"
)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for happysad_tfds: 256x256 RGB faces labelled sad (0) or happy (1).

    The build is the data job (`pipeline.data.job.DataJob`): the same Beam pipeline as
    `happysad preprocess`, whose manifest.csv, summary.json, report.md and plots/ land in the
    dataset version's folder beside the data they describe. `BUILDER_CONFIGS` lists only
    `synthetic`, because a plain `tfds build` builds every listed config and `folder` cannot
    be built without the user's photos; `folder` (and any `make_config` variant) is built by
    name: `tfds build happysad_tfds/folder --manual_dir D`.
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: synthetic and folder configs, content-hash splits.",
        "2.0.0": "Pixels from the one TensorFlow transform that the exported model serves; "
        "the data job's manifest and report beside the dataset; TIFF no longer accepted.",
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
        """TFDS's, with the runner chosen as `happysad build` chooses it.

        `tfds build --beam_pipeline_options="..."` passes only options: without a `runner`
        in them the build runs on happysad's local runner (Beam's FnApiRunner with a
        data-loss defect of its worker processes worked around: pipeline.data.local_runner),
        and `runner=DaskRunner,dask_client_address=...` on happysad's DaskRunner, a name
        Beam's own lookup does not know (`pipeline.beam_options.runner_for`). Any other
        runner is Beam's.
        """
        options = download_config.beam_options if download_config else None
        if options is not None and download_config.beam_runner is None:
            runner = beam_options.runner_for(options)
            if runner is not None:
                download_config = dataclasses.replace(download_config, beam_runner=runner)
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _download_and_prepare(self, dl_manager, download_config):
        """TFDS's, then a check that every accepted image became an example (see below)."""
        super()._download_and_prepare(dl_manager, download_config)
        if download_config.max_examples_per_split is None:
            written = {name: split.num_examples for name, split in self.info.splits.items()}
            _require_every_example(str(self.data_dir), written)

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata."""
        size = self.builder_config.data.transform.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, contract.CHANNELS)),
                    "label": tfds.features.ClassLabel(names=_LABELS),
                    "image/filename": tfds.features.Text(),
                    "image/sha256": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager, pipeline):
        """Runs the data job into the dataset's folder, then partitions its examples by split."""
        config = self.builder_config
        data = config.data
        root = ""
        if config.source == "folder":
            root = _manual_dir(dl_manager)
            data = dataclasses.replace(data, input=root)
        accepted = pipeline | "DataJob" >> job.DataJob(data, config.seed, str(self.data_dir))
        active = [
            split
            for split, fraction in zip(splits.SPLITS, data.split_fractions, strict=True)
            if fraction > 0
        ]
        checked = accepted | "CheckCounts" >> _check_counts(root, active)
        by_split = (
            accepted
            | "EncodeExamples" >> beam.Map(_to_example, root, self.info.features["image"])
            | "PartitionBySplit"
            >> beam.Partition(lambda keyed, _: active.index(keyed[0]), len(active))
        )
        return {
            split: (
                by_split[index] | f"Count{split.title()}Examples" >> beam.Map(_counted),
                checked | f"After{split.title()}Check" >> beam.FlatMap(_nothing),
            )
            | f"Checked{split.title()}Examples" >> beam.Flatten()
            for index, split in enumerate(active)
        }

    def _generate_examples(self, **kwargs):
        """Unused: `_split_generators` returns the PCollections of examples directly."""
        raise NotImplementedError("happysad_tfds generates its splits in _split_generators")

    def _process_pipeline_result(self, pipeline_result) -> None:
        """Stores the class balance, the data job's verdicts and its options in the metadata.

        `transform` is what `happysad export` builds the serving graph from.
        """
        counters = _counters(pipeline_result)
        class_counts = {
            split: {
                label: counters.get((METRICS_NAMESPACE, f"{split}/{label}"), 0) for label in _LABELS
            }
            for split in splits.SPLITS
        }
        verdicts = {
            name: value
            for (namespace, name), value in counters.items()
            if namespace == job.METRICS_NAMESPACE
        }
        self.info.metadata["class_counts"] = class_counts
        self.info.metadata["cleaning"] = dict(sorted(verdicts.items()))
        self.info.metadata["data"] = config_lib.to_dict(self.builder_config.data)
        self.info.metadata["transform"] = config_lib.to_dict(self.builder_config.data.transform)
        logger.info("Examples per split and label: %s; verdicts: %s", class_counts, verdicts)


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


@beam.ptransform_fn
def _check_counts(accepted, root: str, active_splits: list[str]):
    """One element, {(split, label): count}, once every label and split has an image.

    Otherwise it raises a UserError. Each split's examples are flattened with an empty
    PCollection computed from this element, so TFDS's writer, whose counting and sharding
    group every input of the split before anything is written, cannot write (or judge the
    split itself) before the check has passed. The examples themselves flow on without
    waiting: a side input would hold every decoded image in the runner until the check.
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
                f"{label} faces there (every file in it was unreadable, corrupt, too small, of "
                f"another format or also filed under the other label: `happysad preprocess "
                f"--input {root} --output DIR` writes each file's reason to "
                f"DIR/{contract.MANIFEST_FILE})"
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


def _require_every_example(output_dir: str, written: dict[str, int]) -> None:
    """Raises unless each split holds as many examples as the data job accepted for it.

    `written` is {split: examples} as TFDS's writer counted them; the data job's counts are
    OUT/summary.json's "accepted" ({split: {label: count}}), made from the manifest's rows.
    The build runs in TFDS's incomplete folder, which TFDS removes when this raises, so a
    dataset short of examples is never published. A guard for every runner: Beam 2.77's own
    FnApiRunner with worker processes dropped up to a third of a large stage's input without
    an error (pipeline.data.local_runner, which happysad runs instead, explains and avoids it).

    Raises:
      UserError: a split has fewer (or more) examples than images accepted for it.
    """
    summary = json.loads(artifacts.read_bytes(FileSystems.join(output_dir, contract.SUMMARY_FILE)))
    accepted = {split: sum(labels.values()) for split, labels in summary["accepted"].items()}
    short = {
        split: (written.get(split, 0), count)
        for split, count in accepted.items()
        if written.get(split, 0) != count
    }
    if short:
        counts = "; ".join(
            f"{split}: {got:,} examples of {count:,} accepted images"
            for split, (got, count) in sorted(short.items())
        )
        raise errors.UserError(
            f"the runner lost examples ({counts}), so no dataset was written: build again, "
            "on happysad's local runner (no --runner; Beam's own DirectRunner with worker "
            "processes drops part of large stage inputs) or another runner"
        )


def _to_example(image, root: str, image_feature):
    """(split, (key, feature dict)): the key is the content hash, stable and never a path.

    The image goes as the PNG that TFDS's Image feature makes of it (`image_feature`'s own
    encode_example, which its writer would call): a fifth of the pixels' size while the
    runner holds the examples for TFDS's writer to count and shard them.
    """
    filename = image.path
    if root and filename.startswith(root.rstrip("/") + "/"):
        filename = filename[len(root.rstrip("/")) + 1 :]
    example = {
        "image": image_feature.encode_example(image.image),
        "label": image.label,
        "image/filename": filename,
        "image/sha256": image.sha256,
    }
    return image.split, (image.sha256, example)


def _counted(split_and_example: tuple):
    """(key, example), counted under "split/label" in the pipeline's metrics."""
    split, (key, example) = split_and_example
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{split}/{example['label']}").inc()
    return key, example


def _nothing(counts: dict) -> list:
    """No element: flattened into each split so that its writer waits for _check_counts."""
    del counts  # only waited for
    return []


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
