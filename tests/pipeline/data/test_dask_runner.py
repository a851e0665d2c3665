"""pipeline.data.dask_runner on a real two-worker Dask cluster on 127.0.0.1.

First Beam's semantics, one tiny pipeline per defect of Beam's own DaskRunner that ours works
around; then the data job (`happysad preprocess`, `happysad build --input`, the TFDS builder as
`tfds build` drives it) on a generated folder, against the local runner's outputs.
"""

import contextlib
import json
import os
import signal
import socket
import time
import uuid

import apache_beam as beam
import dask
import distributed
import psutil
import pytest
import tensorflow_datasets as tfds
from apache_beam.io import fileio
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline, util

import happysad_tfds
from pipeline import cli, contract, errors
from pipeline import config as config_lib
from pipeline.data import beam_options, build, dask_runner, preprocess
from tests.support.image_files import encode, photo


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded worker processes, every socket on 127.0.0.1."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as local_cluster:
        yield local_cluster


@pytest.fixture
def address(cluster) -> str:
    """The scheduler's address, once both workers are up (a test may have killed one)."""
    with distributed.Client(cluster.scheduler_address) as client:
        client.wait_for_workers(2, timeout=60)
    return cluster.scheduler_address


def dask_pipeline(address: str, *flags: str) -> test_pipeline.TestPipeline:
    options = pipeline_options.PipelineOptions([f"--dask_client_address={address}", *flags])
    return test_pipeline.TestPipeline(runner=dask_runner.DaskRunner(), options=options)


# ---------------------------------------------------------------------------------------------
# Beam's semantics, one defect of Beam's DaskRunner at a time.


class SplitByParity(beam.DoFn):
    def process(self, number):
        if number % 2:
            yield beam.pvalue.TaggedOutput("odd", number)
        else:
            yield number


def test_each_output_of_a_multi_output_par_do_reaches_only_its_consumers(address):
    with dask_pipeline(address) as root:
        numbers = root | beam.Create(range(10))
        outputs = numbers | beam.ParDo(SplitByParity()).with_outputs("odd", main="even")
        util.assert_that(outputs.even, util.equal_to([0, 2, 4, 6, 8]), label="Even")
        util.assert_that(outputs.odd, util.equal_to([1, 3, 5, 7, 9]), label="Odd")
        util.assert_that(
            outputs.odd | beam.Map(lambda number: number * 10),
            util.equal_to([10, 30, 50, 70, 90]),
            label="OddTimesTen",
        )


def test_partition_sends_each_element_to_its_partition_only(address):
    with dask_pipeline(address) as root:
        parts = root | beam.Create(range(12)) | beam.Partition(lambda number, n: number % n, 3)
        for index, part in enumerate(parts):
            util.assert_that(part, util.equal_to(list(range(index, 12, 3))), label=f"Part{index}")


def test_every_sink_is_written_with_what_finish_bundle_emits(address, tmp_path):
    # Beam's file sinks emit the files they wrote in finish_bundle, and read their temporary
    # directory as a side input in three places.
    with dask_pipeline(address) as root:
        words = root | beam.Create(["happy", "sad", "glad", "blue"])
        _ = words | "WriteAll" >> beam.io.WriteToText(str(tmp_path / "all"))
        _ = (
            words
            | beam.Filter(lambda word: word.endswith("d"))
            | "WriteD" >> beam.io.WriteToText(str(tmp_path / "ending_in_d"))
        )

    def read(prefix):
        return sorted(
            line for path in tmp_path.glob(f"{prefix}-*") for line in path.read_text().splitlines()
        )

    assert read("all") == ["blue", "glad", "happy", "sad"]
    assert read("ending_in_d") == ["glad", "sad"]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("beam-temp")]


class CountInFinishBundle(beam.DoFn):
    def start_bundle(self):
        self.seen = 0

    def process(self, element):
        self.seen += 1

    def finish_bundle(self):
        yield beam.transforms.window.GlobalWindows.windowed_value(self.seen)


def test_what_finish_bundle_emits_is_kept(address):
    with dask_pipeline(address) as root:
        counts = root | beam.Create(range(25)) | beam.ParDo(CountInFinishBundle())
        util.assert_that(counts | beam.CombineGlobally(sum), util.equal_to([25]))


def mark_once(_, folder: str) -> str:
    """A new token per call, left as a file in `folder`: how many calls there were."""
    token = uuid.uuid4().hex
    with open(os.path.join(folder, token), "x"):
        return token


def test_a_side_input_is_computed_once_for_all_its_uses(address, tmp_path):
    with dask_pipeline(address) as root:
        token = root | "Once" >> beam.Create([None]) | beam.Map(mark_once, str(tmp_path))
        numbers = root | beam.Create(range(16))
        seen = [
            numbers
            | f"Read{use}" >> beam.Map(lambda _, value: value, beam.pvalue.AsSingleton(token))
            for use in range(2)
        ]
        distinct = seen | beam.Flatten() | beam.Distinct() | beam.combiners.Count.Globally()
        util.assert_that(distinct, util.equal_to([1]))
    assert len(os.listdir(tmp_path)) == 1


def count_and_measure(word):
    beam.metrics.Metrics.counter("words", "seen").inc()
    beam.metrics.Metrics.counter("words", f"starting_{word[0]}").inc()
    beam.metrics.Metrics.distribution("words", "length").update(len(word))
    return word


def test_counters_are_read_from_the_result(address):
    words = ["happy", "sad", "smile", "frown", "hope"]
    root = dask_pipeline(address)
    _ = root | beam.Create(words) | beam.Map(count_and_measure)
    result = root.run()
    result.wait_until_finish()
    query = result.metrics().query()
    counters = {metric.key.metric.name: metric.committed for metric in query["counters"]}
    assert counters == {"seen": 5, "starting_h": 2, "starting_s": 2, "starting_f": 1}
    (length,) = query["distributions"]
    assert (length.committed.count, length.committed.sum) == (5, 22)
    assert (length.committed.min, length.committed.max) == (3, 5)


def slow_pid(_) -> int:
    time.sleep(0.1)
    return os.getpid()


def test_created_elements_are_spread_over_the_workers(address):
    # Beam's DaskRunner puts up to 128 created elements in one partition.
    with dask_pipeline(address) as root:
        pids = root | beam.Create(range(24)) | beam.Map(slow_pid)
        workers = pids | beam.Distinct() | beam.combiners.Count.Globally()
        util.assert_that(workers, util.equal_to([2]))


def read_slowly(readable_file) -> tuple[str, int]:
    time.sleep(0.1)
    return readable_file.read_utf8(), os.getpid()


def test_files_are_matched_and_read_on_the_workers_spread_by_a_reshuffle(address, tmp_path):
    # MatchFiles is a one-element Create (the pattern): every match starts in one partition,
    # which Beam's DaskRunner's Reshuffle leaves as it is.
    for index in range(24):
        (tmp_path / f"file{index:02d}.txt").write_text(f"content {index}")
    with dask_pipeline(address) as root:
        read = (
            root
            | fileio.MatchFiles(str(tmp_path / "*.txt"))
            | beam.Reshuffle()
            | fileio.ReadMatches()
            | beam.Map(read_slowly)
        )
        contents = read | beam.Keys()
        util.assert_that(contents, util.equal_to([f"content {i}" for i in range(24)]))
        workers = read | beam.Values() | beam.Distinct() | beam.combiners.Count.Globally()
        util.assert_that(workers, util.equal_to([2]), label="OnTwoWorkers")


def test_a_transform_it_cannot_run_is_refused_by_name(address):
    root = dask_pipeline(address)
    _ = root | "Start" >> beam.Impulse() | beam.Map(len)
    with pytest.raises(NotImplementedError, match="'Start'"):
        root.run()


@contextlib.contextmanager
def unused_port():
    """A TCP port on 127.0.0.1 that nothing listens on (bound here, not listening)."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line():
    with unused_port() as port:
        root = dask_pipeline(f"tcp://127.0.0.1:{port}", "--dask_connection_timeout=1")
        _ = root | beam.Create([1])
        with pytest.raises(dask_runner.DaskClusterError) as raised:
            root.run()
    assert f"tcp://127.0.0.1:{port}" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, cli.USER_ERRORS)  # the CLI prints it as one line


def kill_own_worker(element):
    os.kill(os.getpid(), signal.SIGKILL)
    return element


def test_a_job_whose_workers_keep_dying_fails_with_one_line():
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as doomed:
            root = dask_pipeline(doomed.scheduler_address)
            _ = root | beam.Create([1, 2]) | beam.Map(kill_own_worker)
            with pytest.raises(dask_runner.DaskClusterError) as raised:
                root.run()
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, cli.USER_ERRORS)
    assert message.startswith(f"the Dask cluster at {doomed.scheduler_address} lost every worker")


def listening_addresses(process: psutil.Process) -> set[str]:
    found = set()
    for member in [process, *process.children(recursive=True)]:
        for connection in member.net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                found.add(connection.laddr.ip)
    return found


def test_without_an_address_it_starts_a_loopback_cluster_and_stops_it():
    driver = psutil.Process()
    children_before = {child.pid for child in driver.children(recursive=True)}

    def listening_now(_):
        return sorted(listening_addresses(psutil.Process(driver.pid)))

    options = pipeline_options.PipelineOptions(["--runner=DaskRunner"])
    with beam.Pipeline(runner=beam_options.runner_for(options), options=options) as root:
        addresses = root | beam.Create([None]) | beam.Map(listening_now)
        util.assert_that(addresses, util.equal_to([["127.0.0.1"]]))
    started = {child.pid for child in driver.children(recursive=True)} - children_before
    running = [pid for pid in started if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert running == []


def test_the_runner_is_named_daskrunner_in_happysad_commands():
    for name in ("DaskRunner", "daskrunner", "dask"):
        runner = beam_options.runner_for(beam_options.from_args([f"--runner={name}"]))
        assert isinstance(runner, dask_runner.DaskRunner)


# ---------------------------------------------------------------------------------------------
# The data job on the cluster, against the local runner.


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    """happy/ and sad/ with 40 distinct photos, an exact copy, a label conflict and 2 rejects."""
    root = tmp_path_factory.mktemp("faces")
    for label in ("happy", "sad"):
        (root / label).mkdir()
    for index in range(40):
        label = ("happy", "sad")[index % 2]
        image_format = ("JPEG", "PNG")[index // 2 % 2]
        data = encode(photo(seed=100 + index), image_format)
        (root / label / f"face{index:02d}.{image_format.lower()}").write_bytes(data)
    (root / "happy" / "face00 (copy).jpeg").write_bytes((root / "happy/face00.jpeg").read_bytes())
    both = encode(photo(seed=99), "PNG")
    (root / "happy" / "both.png").write_bytes(both)
    (root / "sad" / "both.png").write_bytes(both)
    (root / "sad" / "truncated.jpg").write_bytes(encode(photo(seed=98), "JPEG")[:-400])
    (root / "sad" / "notes.txt").write_bytes(b"not a face\n")
    return str(root)


def dask_flags(address: str) -> list[str]:
    return ["--runner=DaskRunner", f"--dask_client_address={address}"]


def examples(dataset_dir: str) -> dict[str, list[tuple]]:
    """{split: sorted [(sha256, label, filename, image bytes)]} of a built dataset."""
    builder = tfds.builder_from_directory(dataset_dir)
    return {
        split: sorted(
            (
                example["image/sha256"],
                int(example["label"]),
                example["image/filename"],
                example["image"].tobytes(),
            )
            for example in tfds.as_numpy(builder.as_dataset(split=split))
        )
        for split in builder.info.splits
    }


def folder(path: str) -> config_lib.Config:
    return config_lib.replace(config_lib.Config(), **{"data.input": path})


@pytest.fixture(scope="module")
def local_build(faces, tmp_path_factory) -> dict:
    summary = build.run(folder(faces), data_dir=str(tmp_path_factory.mktemp("local")))
    return {**summary, "examples": examples(summary["dataset_dir"])}


def test_happysad_build_on_the_cluster_gives_the_local_dataset(
    faces, local_build, address, tmp_path
):
    summary = build.run(folder(faces), data_dir=str(tmp_path), beam_args=tuple(dask_flags(address)))
    assert summary["splits"] == local_build["splits"]
    assert summary["cleaning"] == local_build["cleaning"]  # counters, from the runner's metrics
    assert examples(summary["dataset_dir"]) == local_build["examples"]


class KillOnce(distributed.WorkerPlugin):
    """Kills the worker process that starts its `after`-th task first, once in the cluster."""

    def __init__(self, marker: str, after: int):
        self.marker = marker
        self.after = after
        self.started = 0

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        self.started += 1
        if self.started != self.after:
            return
        try:
            with open(self.marker, "x"):
                pass
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def test_tfds_build_on_the_cluster_survives_a_killed_worker(faces, local_build, address, tmp_path):
    # What `tfds build happysad_tfds/folder --manual_dir=F --beam_pipeline_options=
    # "runner=DaskRunner,dask_client_address=A"` does.
    options = pipeline_options.PipelineOptions(
        [f"--{flag}" for flag in ("runner=DaskRunner", f"dask_client_address={address}")]
    )
    download_config = tfds.download.DownloadConfig(manual_dir=faces, beam_options=options)
    builder = happysad_tfds.Builder(config="folder", data_dir=str(tmp_path / "tfds"))
    killed = tmp_path / "killed"
    with distributed.Client(address) as client:
        client.register_plugin(KillOnce(str(killed), after=30), name="kill-once")
        try:
            builder.download_and_prepare(download_config=download_config)
            failure = None
        except dask_runner.DaskClusterError as error:
            failure = str(error)
        finally:
            client.unregister_worker_plugin("kill-once")
    assert killed.exists()  # a worker died during the job
    if failure is not None:  # then in one line, and with nothing half-built left behind
        assert "\n" not in failure
        assert not (tmp_path / "tfds" / "happysad_tfds").exists() or not any(
            (tmp_path / "tfds" / "happysad_tfds").rglob("dataset_info.json")
        )
        return
    assert examples(os.fspath(builder.data_dir)) == local_build["examples"]


def read_summary(output: str) -> dict:
    """summary.json without its "outputs" (paths under `output`)."""
    with open(os.path.join(output, contract.SUMMARY_FILE), encoding="utf-8") as stream:
        summary = json.load(stream)
    return {key: value for key, value in summary.items() if key != "outputs"}


def files_under(folder: str) -> dict[str, bytes]:
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, folder)] = stream.read()
    return found


def test_preprocess_report_on_the_cluster_equals_the_local_one(faces, address, tmp_path):
    local, on_cluster = str(tmp_path / "local"), str(tmp_path / "dask")
    preprocess.run(folder(faces), output=local)
    argv = ["preprocess", "--input", faces, "--output", on_cluster, *dask_flags(address)]
    assert cli.main(argv) == 0
    summaries = [read_summary(output) for output in (local, on_cluster)]
    assert summaries[0] == summaries[1]
    manifests = [files_under(output)[contract.MANIFEST_FILE] for output in (local, on_cluster)]
    assert manifests[0] == manifests[1]
    assert os.path.getsize(os.path.join(on_cluster, contract.REPORT_FILE)) > 0
    assert not [name for name in os.listdir(on_cluster) if name.startswith("beam-temp")]


def test_bad_input_fails_on_the_cluster_with_the_local_runners_message(address, tmp_path):
    for label in ("happy", "sad"):
        (tmp_path / "photos" / label).mkdir(parents=True)
    (tmp_path / "photos" / "happy" / "notes.txt").write_bytes(b"no face here\n")
    (tmp_path / "photos" / "sad" / "face.png").write_bytes(encode(photo(seed=3), "PNG"))
    messages = []
    for where, flags in (("local", ()), ("dask", tuple(dask_flags(address)))):
        with pytest.raises(errors.UserError) as raised:
            build.run(
                folder(str(tmp_path / "photos")), data_dir=str(tmp_path / where), beam_args=flags
            )
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
    assert messages[1].startswith("no usable happy image") and "\n" not in messages[1]
    assert not list((tmp_path / "dask").rglob("dataset_info.json"))
