"""`happysad build`: builds the happysad_tfds dataset as `tfds build` does, from Python or the CLI.

    happysad build                                    # the default: 2,000 synthetic faces
    happysad build --num-images 64 --data-dir /tmp/tfds
    happysad build --input photos/                    # photos/happy/*.jpg, photos/sad/*.jpg
    happysad build --direct_num_workers=2 --direct_running_mode=multi_processing

The build is the data job (pipeline.data.job): its manifest and report land beside the
dataset version. Unrecognised --flags are Beam pipeline options, exactly as `tfds build
--beam_pipeline_options` takes them, so the same command scales out on Dataflow, Flink or
Spark.
"""

import dataclasses
import logging
import os
import re

from pipeline import artifacts, errors
from pipeline import config as config_lib
from pipeline.data import splits

logger = logging.getLogger(__name__)

DATASET_NAME = "happysad_tfds"
# tensorflow_datasets (4.9) finds a dataset's files by glob (etils epath): under a path holding a
# glob character a build leaves its shards under temporary names, and no build is found again.
_GLOB_CHARACTERS = re.compile(r"[][*?]")


@dataclasses.dataclass(frozen=True)
class BuildArguments:
    """Where `happysad build` writes (the input is --input, part of the data options)."""

    data_dir: str | None = None  # TFDS data directory (default: TFDS's own, ~/tensorflow_datasets)
    overwrite: bool = False  # rebuild even if this dataset version already exists


def builder_for(config: config_lib.Config, data_dir: str | None = None):
    """The happysad_tfds builder of `config.data` and `config.seed` in `data_dir`.

    Raises:
        UserError: a local --input folder that does not exist, or a data_dir that TFDS cannot
            write to (its path holds '[', ']', '*' or '?').
    """
    import happysad_tfds

    if data_dir is not None and _GLOB_CHARACTERS.search(os.fspath(data_dir)):
        raise errors.UserError(
            f"TFDS cannot keep a dataset under {data_dir}: tensorflow_datasets finds its "
            "files with glob patterns, which '[', ']', '*' and '?' in the path break; choose "
            "a data directory (or work directory) without them"
        )

    data = config.data
    if data.input is not None and artifacts.is_local(data.input):
        if not os.path.isdir(data.input):
            raise errors.UserError(
                f"input folder {data.input} does not exist: give a folder with happy/ and sad/ "
                "sub-folders of images"
            )
    builder_config = happysad_tfds.make_config(data, config.seed)
    return happysad_tfds.Builder(config=builder_config, data_dir=data_dir)


def run(
    config: config_lib.Config,
    *,
    data_dir: str | None = None,
    overwrite: bool = False,
    beam_args: tuple[str, ...] = (),
) -> dict:
    """Builds (or reuses) the dataset of `config.data`, then describes it.

    Returns:
      {"name", "config", "version", "data_dir", "dataset_dir", "load", "reused",
       "splits": {split: {"num_examples", "happy", "sad"}}, "cleaning": verdict counts,
       "report": the report's path}.

    Raises:
      UserError: a missing input folder, a missing label folder, or a label without a
        single usable image.
    """
    import tensorflow_datasets as tfds  # lazily: `happysad --help` must stay fast

    from pipeline.data import beam_options, sources  # lazily, as TFDS: Beam to build only

    builder = builder_for(config, data_dir)
    reused = builder.is_prepared() and not overwrite
    manual_dir = config.data.input
    if manual_dir is not None:
        manual_dir = sources.check_root(manual_dir)
        if artifacts.is_local(manual_dir):
            manual_dir = os.path.abspath(manual_dir)  # Beam workers may not share our cwd
    options = beam_options.from_args(beam_args)
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir,
        beam_runner=beam_options.runner_for(options),
        beam_options=options,
        download_mode=(
            tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
            if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        ),
    )
    action = "Reusing" if reused else "Building"
    logger.info(
        "%s %s/%s in %s", action, DATASET_NAME, builder.builder_config.name, builder.data_dir
    )
    try:
        builder.download_and_prepare(download_config=download_config)
    except Exception as error:
        message = _user_error_message(error)
        if message is None:
            raise
        raise errors.UserError(message) from error
    return describe(builder, reused=reused)


# The sentence of a UserError raised on a Beam worker, as the runner re-raises it: the
# original exception's text, possibly inside a traceback and followed by Beam's context.
_WORKER_USER_ERROR = re.compile(r"UserError: (.+?)(?: \[while running .*)?$", re.MULTILINE)
_BEAM_CONTEXT = re.compile(r" \[while running .*$", re.DOTALL)


def _user_error_message(error: BaseException) -> str | None:
    """The UserError sentence inside an exception a runner raised for a worker, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, errors.UserError):  # Beam re-raises it with its step appended
            return _BEAM_CONTEXT.sub("", str(error))
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
        "report": os.path.join(os.fspath(builder.data_dir), "report.md"),
    }
