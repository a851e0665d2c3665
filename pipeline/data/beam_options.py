"""Beam pipeline options from a stage's pass-through flags, and a local runner that stays local.

Given no `--runner`, Beam's DirectRunner (2.77) first tries its Prism runner, a Go binary that
it downloads from GitHub on every run; offline it falls back after the failed download (at
once where DNS fails, after a network timeout where packets are dropped), online it runs on
Prism, which ignores `--direct_num_workers` and `--direct_running_mode`. Without a `--runner`,
happysad runs what DirectRunner falls back to, built the same way: the portable FnApiRunner,
given the pipeline options for its workers, which honours both flags. Any `--runner`
(DirectRunner, PrismRunner with `--prism_location`, DataflowRunner, FlinkRunner, SparkRunner,
...) is used as given.
"""

from apache_beam.options import pipeline_options


def from_args(beam_args) -> pipeline_options.PipelineOptions:
    """PipelineOptions from exactly these flags (never from sys.argv, which Beam would parse)."""
    return pipeline_options.PipelineOptions(list(beam_args))


def local_runner(options: pipeline_options.PipelineOptions):
    """The runner for `beam.Pipeline(runner=...)`: None (Beam's choice) when a --runner is set."""
    if options.view_as(pipeline_options.StandardOptions).runner is not None:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability import portable_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    encoded = portable_runner.JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))
