import apache_beam as beam
from apache_beam.runners.portability import prism_runner
from apache_beam.testing.util import assert_that, equal_to

from pipeline.data import beam_options


def test_without_a_runner_the_pipeline_runs_here_and_never_fetches_prism(monkeypatch):
    tried = []

    def fetch_and_run_prism(*args, **kwargs):
        tried.append(args)
        raise RuntimeError("no network")  # DirectRunner falls back after this, as offline

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", fetch_and_run_prism)
    options = beam_options.from_args(["--direct_num_workers=1"])
    with beam.Pipeline(runner=beam_options.runner_for(options), options=options) as root:
        doubled = root | beam.Create([1, 2, 3]) | beam.Map(lambda number: 2 * number)
        assert_that(doubled, equal_to([2, 4, 6]))
    assert tried == []


def test_a_runner_given_is_beams_to_choose():
    for runner in ("DirectRunner", "DataflowRunner", "PrismRunner"):
        assert beam_options.runner_for(beam_options.from_args([f"--runner={runner}"])) is None


def test_options_come_from_the_flags_given_only(monkeypatch):
    monkeypatch.setattr("sys.argv", ["happysad", "--direct_num_workers=7"])
    options = beam_options.from_args(["--direct_running_mode=multi_processing"])
    assert options.get_all_options()["direct_num_workers"] == 1
    assert options.get_all_options()["direct_running_mode"] == "multi_processing"
