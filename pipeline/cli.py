"""The `happysad` command: one subcommand per pipeline stage, each driven by its config dataclass.

Stage modules are imported only when their subcommand runs, so `happysad --help` answers
without loading TensorFlow or Beam.
"""

import argparse
import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from pipeline import errors, flags

PROG = "happysad"


@dataclasses.dataclass(frozen=True)
class Stage:
    """Where a subcommand's config dataclass and entry point live."""

    module: str
    config_class: str
    summary: str
    entry_point: str = "run"


STAGES = {
    "build": Stage(
        "pipeline.build", "BuildConfig", "Build the happysad_tfds dataset (as `tfds build` does)."
    ),
    "preprocess": Stage(
        "pipeline.preprocess",
        "PreprocessConfig",
        "Validate, clean and resize happy/ and sad/ images with Beam; write a report.",
    ),
    "train": Stage("pipeline.train", "TrainConfig", "Train a classifier on the TFDS dataset."),
    "tune": Stage("pipeline.tune", "TuneConfig", "Search hyperparameters with KerasTuner."),
    "evaluate": Stage(
        "pipeline.evaluate",
        "EvaluateConfig",
        "Evaluate on the test split, plot, and bless (or not) against the pushed model.",
    ),
    "export": Stage(
        "pipeline.export", "ExportConfig", "Export a TF-Serving-ready SavedModel version."
    ),
    "push": Stage(
        "pipeline.push", "PushConfig", "Push a blessed SavedModel version to a serving base path."
    ),
    "serve": Stage(
        "serving.server", "ServeConfig", "Serve SavedModels over TF Serving's REST API."
    ),
    "predict": Stage(
        "serving.client", "PredictConfig", "Send images to a TF Serving REST endpoint."
    ),
    "run": Stage(
        "pipeline.orchestrate",
        "RunConfig",
        "Run every stage in order into one work directory, skipping cached stages.",
    ),
}

# Exceptions that mean the user asked for something impossible, or named a service that cannot
# be reached or failed (a Dask cluster: pipeline.dask_runner.DaskClusterError): one line, exit 2.
USER_ERRORS = (
    errors.UserError,
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
)


def _top_level_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<11} {stage.summary}" for name, stage in STAGES.items()]
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="happysad: a happy/sad face classifier, from images to TF Serving.",
        epilog="stages:\n"
        + "\n".join(lines)
        + f"\n\nRun '{PROG} STAGE --help' for a stage's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="the stage to run")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    import pipeline

    return pipeline.__version__


def _stage_parser(name: str, config_class: type) -> argparse.ArgumentParser:
    stage = STAGES[name]
    takes_extra = flags.passthrough_field(config_class) is not None
    epilog = (
        "Unrecognised --flags are passed to Beam as pipeline options "
        "(e.g. --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp)."
        if takes_extra
        else None
    )
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {name}",
        description=stage.summary,
        epilog=epilog,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    flags.add_config_arguments(parser, config_class)
    return parser


# Our packages report progress at INFO; libraries (Beam, TF, absl) only warnings and errors.
OWN_LOGGERS = ("pipeline", "serving", "happysad_tfds")


# Beam warns about its optional GCP client on import, on every command; it is not ours to fix.
_IGNORED_WARNINGS = ("apitools not found",)


def _configure_logging() -> None:
    """Called before the stage module is imported, so import-time warnings get our format."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(
            lambda record: not any(text in record.getMessage() for text in _IGNORED_WARNINGS)
        )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `happysad` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_level_parser()
    if not argv or argv[0] in ("-h", "--help", "--version"):
        top.parse_args(argv or ["--help"])
    if argv[0] not in STAGES:
        top.error(f"unknown stage {argv[0]!r} (choose from {', '.join(STAGES)})")
    name, stage_argv = argv[0], argv[1:]
    stage = STAGES[name]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's, read at its import
    _configure_logging()
    module = importlib.import_module(stage.module)
    config_class = getattr(module, stage.config_class)
    parser = _stage_parser(name, config_class)
    stage_argv = flags.normalize_bool_values(config_class, stage_argv)
    if flags.passthrough_field(config_class):
        namespace, extra = parser.parse_known_args(stage_argv)
    else:
        namespace, extra = parser.parse_args(stage_argv), []

    try:
        config = flags.config_from_args(config_class, namespace, extra)
        result = getattr(module, stage.entry_point)(config)
    except USER_ERRORS as error:
        if namespace.debug:
            raise
        message = str(error) or type(error).__name__
        print(f"{PROG} {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
