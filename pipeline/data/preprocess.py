"""`happysad preprocess`: the data job without a dataset, for a look at a folder before training.

    happysad preprocess --input photos/ --output work/look
    happysad preprocess --output work/look --num-images 200     # the synthetic faces

The same Beam pipeline as `happysad build` and `tfds build` (pipeline.data.job.DataJob), with
the same options, writing what it writes beside a dataset and nothing else:
OUT/manifest.csv, OUT/summary.json (written last), OUT/report.md and OUT/plots/.
"""

import dataclasses
import logging
import os

import apache_beam as beam

from pipeline import artifacts, contract, errors
from pipeline import config as config_lib
from pipeline.data import beam_options, job, report

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreprocessArguments:
    """Where `happysad preprocess` writes (the input is --input, part of the data options)."""

    output: str  # output folder or URI: manifest.csv, summary.json, report.md, plots/


def run(config: config_lib.Config, *, output: str, beam_args: tuple[str, ...] = ()) -> dict:
    """Runs the data job of `config.data` into `output`; returns the summary.

    The previous outputs are removed first (summary.json first), so no stale file survives
    a failed run; summary.json is written last, when everything else is there.

    Returns:
        summary.json's content: counts by status, reason, label and split, and warnings.

    Raises:
        UserError: a missing input folder or one without happy/ and sad/, or an output
            folder that cannot be made.
    """
    if artifacts.is_local(output):
        try:
            os.makedirs(artifacts.local_path(output), exist_ok=True)
        except OSError as error:
            raise errors.UserError(f"cannot make the output folder {output}: {error}") from None
    options = beam_options.from_args(beam_args)
    root = beam.Pipeline(runner=beam_options.runner_for(options), options=options)
    _ = root | "DataJob" >> job.DataJob(config.data, config.seed, output)
    _clear_previous_outputs(output)
    result = root.run()
    result.wait_until_finish()
    summary = artifacts.read_json(artifacts.join(output, contract.SUMMARY_FILE))
    logger.info("Looked at %d files: %s", summary["input_files"], summary["status"])
    return summary


def _clear_previous_outputs(output: str) -> None:
    names = (contract.SUMMARY_FILE, contract.MANIFEST_FILE, contract.REPORT_FILE, report.PLOTS_DIR)
    for name in names:
        artifacts.remove(artifacts.join(output, name))
