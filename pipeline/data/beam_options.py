"""Beam pipeline options from a stage's pass-through flags, and the runner they name.

Given no `--runner`, Beam's DirectRunner (2.77) first tries its Prism runner, a Go binary that
it downloads from GitHub on every run; offline it falls back after the failed download (at
once where DNS fails, after a network timeout where packets are dropped), online it runs on
Prism, which ignores `--direct_num_workers` and `--direct_running_mode`. Without a `--runner`,
happysad runs what DirectRunner falls back to, built the same way: the portable FnApiRunner,
given the pipeline options for its workers, which honours both flags, with a data-loss defect
of its worker processes worked around (pipeline.data.local_runner).

`--runner=DaskRunner` (or `dask`, any case, as Beam matches its own runner names) is
`pipeline.data.dask_runner.DaskRunner`, Beam's DaskRunner with its defects worked around; Beam's
own lookup does not know the name. Any other `--runner` (DirectRunner, PrismRunner with
`--prism_location`, DataflowRunner, FlinkRunner, SparkRunner, a dotted class path, ...) is
Beam's to resolve.
"""

from apache_beam.options import pipeline_options

from pipeline import errors

# The names that mean our Dask runner, lower-cased, as Beam's create_runner compares them.
DASK_RUNNER_NAMES = ("dask", "daskrunner")


def from_args(beam_args) -> pipeline_options.PipelineOptions:
    """PipelineOptions from exactly these flags (never from sys.argv, which Beam would parse)."""
    return pipeline_options.PipelineOptions(list(beam_args))


def runner_for(options: pipeline_options.PipelineOptions):
    """The runner for `beam.Pipeline(runner=...)`: None where Beam resolves the --runner itself.

    No --runner: the local FnApiRunner (local_runner.LocalRunner, see the module docstring);
    a name `named_runner` knows: that runner; any other: None.

    Raises:
      UserError: for --runner=DaskRunner where Dask is not installed.
    """
    name = options.view_as(pipeline_options.StandardOptions).runner
    if name is not None:
        return named_runner(name)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability import portable_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipeline.data import local_runner

    encoded = portable_runner.JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return local_runner.LocalRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def named_runner(name: str):
    """A new pipeline.data.dask_runner.DaskRunner for a DASK_RUNNER_NAMES name, else None.

    Raises:
      UserError: for a Dask runner name where Dask is not installed.
    """
    if name.lower() not in DASK_RUNNER_NAMES:
        return None
    try:
        from pipeline.data import dask_runner
    except ImportError as error:
        raise errors.UserError(
            f"--runner={name} needs Dask ({error}): pip install 'happysad[dask]'"
        ) from None
    return dask_runner.DaskRunner()
