"""Beam's DaskRunner with its defects worked around: runs a Beam batch job on a Dask cluster.

    python -m my_job --runner=pipeline.data.dask_runner.DaskRunner --dask_client_address=tcp://H:8786
    happysad build --runner=DaskRunner --dask_client_address=tcp://H:8786   # the name works too

Every `--dask_*` option of `apache_beam.runners.dask.dask_runner.DaskOptions` is taken as is
(`--dask_client_address`, `--dask_connection_timeout`, `--dask_scheduler_file`,
`--dask_client_name`, `--dask_connection_limit`, `--dask_npartitions`,
`--dask_partition_size`). Without an address or scheduler file the runner starts its own
`distributed.LocalCluster` whose every socket (scheduler, workers, nannies, dashboard) listens
on 127.0.0.1 only, and shuts it down when the job ends.

Beam 2.77's `DaskRunner` translates the pipeline into Dask bags, one per applied transform.
This subclass keeps its options, its transform overrides and its GroupByKey and Flatten
translations, and replaces the rest, because of these defects (each can be dropped here once
Beam fixes it; `tests/pipeline/test_dask_runner.py` has a test per defect):

1. A multi-output ParDo (`.with_outputs(...)`, and `beam.Partition`, which is one) hands the
   elements of *every* output to *every* consumer: its bag is registered per transform, not per
   output PCollection. Here a bundle returns (tag, element) pairs and each output PCollection
   is the selection of its own tag.
2. Only the last transform's bag is computed (`dask.optimize(list(bags.values())[-1])`), so a
   pipeline with two sinks runs one of them. Here every ParDo and every PCollection that
   nothing consumes is computed, in one graph.
3. What a DoFn emits in `finish_bundle` is dropped (the outputs are copied before
   `invoke_finish_bundle`), so Beam's file sinks (`WriteToText`, `WriteToTFRecord`, which emit
   their written files there) finalize nothing and leave the data in `beam-temp-*`. Here the
   bundle runs through Beam's `DoFnRunner`, start to finish, and keeps everything it emits.
4. A side input is recomputed wherever it is read: each bundle of each consumer iterates a
   bag of the whole upstream graph (a nested compute from inside a task), so its steps run
   again for every use, side effects included (a sink's InitializeWrite, which names the
   temporary directory, or anything random). Here each side-input PCollection becomes one
   reduction in the graph, computed once and passed to every bundle that reads it.
5. There are no metrics: `DaskRunnerResult.metrics()` raises NotImplementedError. Here each
   bundle counts into a `MetricsContainer` and its updates travel back with the results;
   `metrics()` answers from Beam's `DirectMetrics` (committed = attempted: results of bundles
   lost with a worker are not counted).
6. `Create` puts up to 128 elements in one partition, and `Reshuffle` does nothing, so a small
   or file-listing input runs on one worker whatever the cluster's size. Here both spread the
   elements over PARTITIONS_PER_THREAD partitions per worker thread of the cluster
   (`--dask_npartitions` and `--dask_partition_size` still decide when given).
7. The client is never closed, and without an address `distributed.Client()` starts a local
   cluster whose dashboard listens on every interface. Here the job's end closes the client
   (and the local cluster the runner started, which listens on 127.0.0.1 only).

As with any Dask bag, a partition's elements are one list in a worker's memory between steps:
for inputs whose partitions would not fit, raise `--dask_npartitions`.

What it does not change: like Beam's runner it runs bounded pipelines in the global window
(timestamps and windows are dropped between steps; `WindowInto` is ignored), and it has no
translation for `Read`, `Impulse`, `TestStream`, state or timers; such a pipeline is refused
before it starts, with the transform's name.
"""

import dataclasses
import logging
import time
import typing

import apache_beam as beam
import dask
import dask.bag
import distributed
from apache_beam import pipeline as beam_pipeline
from apache_beam.internal import pickler
from apache_beam.metrics import execution as metrics_execution
from apache_beam.runners import common
from apache_beam.runners import runner as beam_runner
from apache_beam.runners.dask import dask_runner as beam_dask_runner
from apache_beam.runners.dask import overrides, transform_evaluator
from apache_beam.runners.direct import direct_metrics
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import sideinputs
from apache_beam.utils import counters

logger = logging.getLogger(__name__)

# The tag under which a bundle returns its metric updates, beside its (tag, element) outputs:
# not a str, so no output tag of a pipeline can be equal to it.
_METRICS_TAG = ("dask_runner", "metrics")
_LOCAL_HOST = "127.0.0.1"

# Partitions of a created or reshuffled collection per worker thread of the cluster, unless
# --dask_npartitions or --dask_partition_size says otherwise. More than two: Dask's scheduler
# spreads a group of tasks over the workers regardless of where their input lies only when
# the group has more than twice as many tasks as the cluster has threads ("root-ish" tasks);
# fewer stay on the worker that holds their input (all of it, after a one-element Create).
# A few per thread also balance uneven partitions and make a lost worker cost less.
PARTITIONS_PER_THREAD = 4


class DaskClusterError(ConnectionError):
    """The Dask cluster cannot be reached, or it lost every worker that tried a part of the job.

    Its message is one line that names the cluster and what happened.
    """


class DaskRunner(beam_dask_runner.DaskRunner):
    """Runs a bounded Beam pipeline on a Dask distributed cluster (see the module docstring).

    `run_pipeline` returns at once; `wait_until_finish()` (which `with beam.Pipeline(...)`
    calls) waits, commits the metrics, and closes the client and any cluster the runner
    started, whatever the outcome.
    """

    def run_pipeline(self, pipeline, options):
        """Translates `pipeline` into one Dask graph and submits it.

        Raises:
          DaskClusterError: if the scheduler cannot be reached.
          NotImplementedError: for a transform this runner cannot translate (see the module).
        """
        dask_options = options.view_as(beam_dask_runner.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = beam_dask_runner.DaskOptions._extract_bag_kwargs(dask_options)
        client, cluster = _connect(dask_options)
        try:
            pipeline.replace_all(overrides.dask_overrides())
            bag_kwargs = bag_kwargs or {"npartitions": _default_partitions(client)}
            builder = _BagBuilder(bag_kwargs)
            pipeline.visit(builder)
            (job,) = dask.optimize(builder.job())
            future = client.compute(job)
        except BaseException:
            _close(client, cluster)
            raise
        logger.info(
            "Submitted %d tasks to the Dask cluster at %s (%s)",
            len(job.__dask_graph__()),
            client.scheduler.address,
            ", ".join(f"{key}={value}" for key, value in bag_kwargs.items()),
        )
        return DaskRunnerResult(client, [future], cluster=cluster, started=time.monotonic())


@dataclasses.dataclass
class DaskRunnerResult(beam_dask_runner.DaskRunnerResult):
    """The running job: its state, its metrics once finished, and `cancel()`."""

    cluster: distributed.LocalCluster | None = None
    started: float = 0.0  # time.monotonic() at submission
    _metrics: direct_metrics.DirectMetrics | None = None

    def wait_until_finish(self, duration=None) -> str:
        """Waits for the job (at most `duration` milliseconds, if given); returns its state.

        Raises:
          DaskClusterError: if every worker that tried a part of the job died.
          Exception: whatever a DoFn raised, as the DoFn raised it.
        """
        if self.state != beam_runner.PipelineState.RUNNING:
            return self.state
        (future,) = self.futures
        try:
            updates = future.result(timeout=None if duration is None else duration / 1000)
        except distributed.TimeoutError:
            return self.state
        except distributed.KilledWorker as error:
            address = self.client.scheduler.address
            self._finish(beam_runner.PipelineState.FAILED)
            raise DaskClusterError(
                f"the Dask cluster at {address} lost every worker that ran task {error.task!r} "
                f"of the job ({error.allowed_failures + 1} tries): see the workers' logs"
            ) from None
        except BaseException:
            self._finish(beam_runner.PipelineState.FAILED)
            raise
        self._metrics = direct_metrics.DirectMetrics()
        for step, update in updates:
            self._metrics.commit_logical(step, update)
            self._metrics.commit_physical(step, update)
        logger.info("The Dask job finished in %.1f s", time.monotonic() - self.started)
        self._finish(beam_runner.PipelineState.DONE)
        return self.state

    def cancel(self) -> str:
        """Cancels the job's tasks and closes the client (and the runner's own cluster)."""
        self.client.cancel(self.futures)
        self._finish(beam_runner.PipelineState.CANCELLED)
        return self.state

    def metrics(self) -> direct_metrics.DirectMetrics:
        """The job's metrics (Beam's MetricResults: `.query()`), once it is done; else empty.

        Waits for the job first, and raises what `wait_until_finish` raises.
        """
        self.wait_until_finish()
        return self._metrics or direct_metrics.DirectMetrics()

    def _finish(self, state: str) -> None:
        self._state = state
        _close(self.client, self.cluster)


def _connect(dask_options: dict):
    """(client, the LocalCluster started for it or None) for the --dask_* options.

    Raises:
      DaskClusterError: if the scheduler does not answer within the connection timeout.
    """
    cluster = None
    if not dask_options.get("address") and not dask_options.get("scheduler_file"):
        # The scheduler serves HTTP (health, metrics, the dashboard) even with the dashboard
        # off, on port 8787 or, with a warning, another: a free loopback port says nothing.
        cluster = distributed.LocalCluster(host=_LOCAL_HOST, dashboard_address=f"{_LOCAL_HOST}:0")
        logger.info(
            "No --dask_client_address: started a local Dask cluster at %s (dashboard: %s)",
            cluster.scheduler_address,
            cluster.dashboard_link,
        )
        dask_options = {**dask_options, "address": cluster}
    where = dask_options.get("address") or dask_options.get("scheduler_file")
    try:
        client = distributed.Client(**dask_options)
    except OSError as error:
        if cluster is not None:
            cluster.close()
        raise DaskClusterError(f"cannot reach the Dask scheduler at {where}: {error}") from None
    return client, cluster


def _close(client: distributed.Client, cluster) -> None:
    """Closes the client, then the cluster the runner started (if any)."""
    client.close()
    if cluster is not None:
        cluster.close()


def _default_partitions(client: distributed.Client) -> int:
    """PARTITIONS_PER_THREAD times the worker threads the cluster has now (at least 1)."""
    return PARTITIONS_PER_THREAD * max(1, sum(client.nthreads().values()))


class _BagBuilder(beam_pipeline.PipelineVisitor):
    """Visits the (overridden) pipeline's primitive transforms, making one bag per PCollection.

    `job()` is then the one bag whose computation runs the whole pipeline and returns the
    metric updates of every bundle: [(step, MetricUpdates)].
    """

    def __init__(self, bag_kwargs: dict):
        self._bag_kwargs = bag_kwargs
        self._bags = {}  # PCollection -> dask.bag.Bag
        self._side_values = {}  # PCollection -> its elements, computed once (a Delayed)
        self._consumed = set()  # PCollections some transform reads
        self._metrics = []  # one bag of (_METRICS_TAG, (step, MetricUpdates)) per ParDo

    def visit_transform(self, node) -> None:
        transform = node.transform
        inputs = [self._bags[pcoll] for pcoll in node.inputs if pcoll in self._bags]
        self._consumed.update(node.inputs)
        self._consumed.update(side_input.pvalue for side_input in node.side_inputs)
        if type(transform) is beam.ParDo:
            self._bags.update(self._par_do(node, inputs[0]))
            return
        if isinstance(transform, overrides._Create):
            bag = _create(transform.values, self._bag_kwargs)
        elif isinstance(transform, overrides._GroupByKeyOnly):
            bag = transform_evaluator.GroupByKey(node).apply(inputs[0])
        elif isinstance(transform, overrides._Flatten):
            bag = transform_evaluator.Flatten(node).apply(inputs)
        elif isinstance(transform, overrides._Reshuffle):
            bag = _reshuffle(inputs[0], self._bag_kwargs)
        elif isinstance(transform, (overrides._GroupAlsoByWindow, beam.WindowInto)):
            bag = inputs[0]  # the global window only, as Beam's DaskRunner
        else:
            raise NotImplementedError(
                f"DaskRunner cannot run {node.full_label!r} ({type(transform).__name__})"
            )
        for pcoll in node.outputs.values():
            self._bags[pcoll] = bag

    def _par_do(self, node, input_bag):
        """{output PCollection: bag of its elements} of a ParDo (defects 1, 3, 4 and 5)."""
        transform = node.transform
        payload = pickler.dumps(
            (
                transform.fn,
                transform.args,
                transform.kwargs,
                node.inputs[0].windowing,
                [(type(side), side._view_options()) for side in node.side_inputs],
            )
        )
        side_values = [self._side_value(side.pvalue) for side in node.side_inputs]
        raw = input_bag.map_partitions(_run_bundle, payload, node.full_label, *side_values)
        self._metrics.append(raw.map_partitions(_select, _METRICS_TAG))
        return {pcoll: raw.map_partitions(_select, tag) for tag, pcoll in node.outputs.items()}

    def _side_value(self, pcoll):
        """The elements of `pcoll` as one task, shared by every bundle that reads them.

        A Delayed, not a bag Item: dask.bag's map_partitions gives each consumer its own copy
        of an Item's graph (ProhibitReuse), which would compute it once per consumer.
        """
        if pcoll not in self._side_values:
            value = self._bags[pcoll].reduction(list, _concatenate)
            self._side_values[pcoll] = value.to_delayed(optimize_graph=False)
        return self._side_values[pcoll]

    def job(self) -> dask.bag.Bag:
        """The bag that runs every ParDo and every unconsumed PCollection (defect 2)."""
        unconsumed = [
            bag.map_partitions(_discard)
            for pcoll, bag in self._bags.items()
            if pcoll not in self._consumed
        ]
        return dask.bag.concat(self._metrics + unconsumed)


def _create(values, bag_kwargs: dict) -> dask.bag.Bag:
    """A Create's values over the partitions asked for (defect 6)."""
    values = list(values)
    if bag_kwargs.get("partition_size"):
        return dask.bag.from_sequence(values, partition_size=bag_kwargs["partition_size"])
    return dask.bag.from_sequence(values, npartitions=bag_kwargs["npartitions"])


def _reshuffle(bag: dask.bag.Bag, bag_kwargs: dict) -> dask.bag.Bag:
    """At least as many partitions as asked for, split evenly (defect 6)."""
    wanted = bag_kwargs.get("npartitions") or 1
    return bag.repartition(npartitions=max(bag.npartitions, wanted))


class _Receivers(dict):
    """Beam receivers by output tag (None: the main output) that append (tag, element)."""

    def __init__(self, outputs: list):
        super().__init__()
        self._outputs = outputs

    def __missing__(self, tag):
        receiver = _Receiver(tag, self._outputs)
        self[tag] = receiver
        return receiver


@dataclasses.dataclass
class _Receiver(common.Receiver):
    tag: typing.Any
    outputs: list

    def receive(self, windowed_value) -> None:
        self.outputs.append((self.tag, windowed_value.value))


def _run_bundle(elements, payload: bytes, step: str, *side_values) -> list:
    """Runs one partition through a DoFn, as a Beam bundle: setup, start, process, finish.

    Returns [(tag, element)] for every output, the finish_bundle ones included, then
    (_METRICS_TAG, (step, MetricUpdates)) with the bundle's counters.
    """
    fn, args, kwargs, windowing, side_specs = pickler.loads(payload)
    side_inputs = [
        sideinputs.SideInputMap(
            view_class,
            view_options,
            [transform_evaluator.get_windowed_value(value, windowing.windowfn) for value in values],
        )
        for (view_class, view_options), values in zip(side_specs, side_values, strict=True)
    ]
    outputs = []
    runner = common.DoFnRunner(
        fn, args, kwargs, side_inputs, windowing, _Receivers(outputs), step_name=step
    )
    container = metrics_execution.MetricsContainer(step)
    sampler = statesampler.StateSampler(step, counters.CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(step, "process", metrics_container=container):
            runner.setup()
            runner.start()
            for element in elements:
                runner.process(transform_evaluator.get_windowed_value(element, windowing.windowfn))
            runner.finish()
            runner.teardown()
    finally:
        statesampler.set_current_tracker(previous)
    outputs.append((_METRICS_TAG, (step, container.get_cumulative())))
    return outputs


def _select(outputs: list, tag) -> list:
    return [element for output_tag, element in outputs if output_tag == tag]


def _concatenate(lists) -> list:
    return [element for part in lists for element in part]


def _discard(partition) -> list:
    del partition  # computed, so its transform ran; nothing reads it
    return []
