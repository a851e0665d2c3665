"""`happysad build`: builds the happysad_tfds dataset as `tfds build` does, from Python or the CLI.

    happysad build                                    # the default: 2,000 synthetic faces
    happysad build --num-images 64 --data-dir /tmp/tfds
    happysad build --config folder --manual-dir photos/   # photos/happy/*.jpg, photos/sad/*.jpg
    happysad build --direct_num_workers=2 --direct_running_mode=multi_processing

Unrecognised --flags are Beam pipeline options, exactly as `tfds build --beam_pipeline_options`
takes them, so the same command scales out on Dataflow, Flink or Spark.
"""

import dataclasses
import logging
import os
import re

from pipeline import errors, imaging, splits

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "folder")
DATASET_NAME = "happysad_tfds"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildConfig(imaging.CleaningOptions):
    """`happysad build`: which config to build, where, and the cleaning options (inherited)."""

    config: str = dataclasses.field(
        default="synthetic",
        metadata={
            "help": "synthetic: the built-in face renderer; folder: your photos in "
            "happy/ and sad/ sub-folders of --manual-dir",
            "choices": SOURCES,
        },
    )
    data_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "TFDS data directory (default: TFDS's own, ~/tensorflow_datasets)"},
    )
    manual_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "with --config folder: the folder holding happy/ and sad/ "
            "(default: <data-dir>/downloads/manual)",
            "flags": ("--manual-dir", "--manual_dir", "--input"),
        },
    )
    num_images: int | None = dataclasses.field(
        default=None,
        metadata={"help": "with --config synthetic: how many faces to render (default: 2000)"},
    )
    seed: int = dataclasses.field(
        default=0,
        metadata={"help": "with --config synthetic: the renderer's seed (folder ignores it)"},
    )
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={"help": "rebuild even if this dataset version already exists"},
    )
    beam_args: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata={"help": "Beam pipeline options", "passthrough": True},
    )


def run(config: BuildConfig) -> dict:
    """Builds (or reuses) the dataset, then describes it.

    Returns:
      {"name", "config", "version", "data_dir", "dataset_dir", "load", "reused",
       "splits": {split: {"num_examples", "happy", "sad"}}, "cleaning": verdict counts}.

    Raises:
      UserError: for options that do not fit the config, a missing or empty manual
        directory, a missing label folder, or a label without a single usable image.
    """
    import tensorflow_datasets as tfds  # lazily: `happysad --help` must stay fast

    import happysad_tfds
    from pipeline import beam_options  # lazily, as TFDS: Beam is imported to build only

    builder_config = _builder_config(config)
    builder = happysad_tfds.Builder(config=builder_config, data_dir=config.data_dir)
    reused = builder.is_prepared() and not config.overwrite
    manual_dir = config.manual_dir
    if manual_dir is not None and "://" not in manual_dir:
        manual_dir = os.path.abspath(manual_dir)  # Beam workers may not share our cwd
    options = beam_options.from_args(config.beam_args)
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir,
        beam_runner=beam_options.runner_for(options),
        beam_options=options,
        download_mode=(
            tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
            if config.overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        ),
    )
    action = "Reusing" if reused else "Building"
    logger.info("%s %s/%s in %s", action, DATASET_NAME, builder_config.name, builder.data_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except errors.UserError:
        raise
    except Exception as error:
        message = _user_error_message(error)
        if message is None:
            raise
        raise errors.UserError(message) from error
    return describe(builder, reused=reused)


def _builder_config(config: BuildConfig):
    """The happysad_tfds config for these options; UserError for options that do not apply."""
    import happysad_tfds

    if config.config == "synthetic" and config.manual_dir is not None:
        raise errors.UserError("--manual-dir only applies to --config folder")
    if config.config == "folder" and config.num_images is not None:
        raise errors.UserError("--num-images only applies to --config synthetic")
    if config.manual_dir is not None and "://" not in config.manual_dir:
        if not os.path.isdir(config.manual_dir):
            raise errors.UserError(
                f"manual directory {config.manual_dir} does not exist: create it with happy/ "
                "and sad/ sub-folders of face photos"
            )
    num_images = (
        happysad_tfds.DEFAULT_NUM_IMAGES if config.num_images is None else config.num_images
    )
    if num_images < 2:
        raise errors.UserError(f"--num-images must be at least 2 (one per label), got {num_images}")
    return happysad_tfds.make_config(
        config.config,
        num_images=num_images,
        seed=config.seed,
        cleaning=imaging.options_from(config),
    )


# The sentence of a UserError raised on a Beam worker, as the runner re-raises it: the
# original exception's text, possibly inside a traceback and followed by Beam's context.
_WORKER_USER_ERROR = re.compile(r"UserError: (.+?)(?: \[while running .*)?$", re.MULTILINE)


def _user_error_message(error: BaseException) -> str | None:
    """The UserError sentence inside an exception a runner raised for a worker, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, errors.UserError):
            return str(error)
        match = _WORKER_USER_ERROR.search(str(error))
        if match:
            return match.group(1).strip()
        error = error.__cause__ or error.__context__
    return None


def describe(builder, reused: bool = False) -> dict:
    """The summary `run` returns, from a prepared builder's DatasetInfo."""
    info = builder.info
    class_counts = info.metadata.get("class_counts", {}) if info.metadata else {}
    split_summary = {}
    for split in splits.SPLITS:
        if split not in info.splits:
            continue
        counts = class_counts.get(split, {})
        split_summary[split] = {
            "num_examples": int(info.splits[split].num_examples),
            "happy": int(counts.get("happy", 0)),
            "sad": int(counts.get("sad", 0)),
        }
    data_dir_root = os.fspath(builder.data_dir_root)
    name = f"{DATASET_NAME}/{builder.builder_config.name}"
    return {
        "name": DATASET_NAME,
        "config": builder.builder_config.name,
        "version": str(builder.version),
        "data_dir": data_dir_root,
        "dataset_dir": os.fspath(builder.data_dir),
        "load": f"tfds.load({name!r}, data_dir={data_dir_root!r})",
        "reused": reused,
        "splits": split_summary,
        "cleaning": dict(info.metadata.get("cleaning", {})) if info.metadata else {},
    }
