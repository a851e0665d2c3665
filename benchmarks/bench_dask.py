"""The data job on a Dask cluster (pipeline/data/dask_runner.py) against the local runner.

The job is `happysad build --input F` (the TFDS build: list, hash, group copies, read, THE
transform, judge, manifest, report, then TFDS's writer) on common.face_folder's folder of
distinct face JPEGs (derived from ../shared/data/faces, drawn faces without it; 5% of them 6-12
megapixel photos), shared with bench_preprocess in the run's scratch folder: FULL_IMAGES, or
QUICK_IMAGES with --quick. Same folder, same run:

- the local runner `happysad build` uses without --runner (the FnApiRunner) with 2 worker
  processes, against DaskRunner on a LocalCluster of 2 single-threaded worker processes on the
  same 2 cores: the cost of the engine. Target: at most 1.5x the local runner's wall clock.
- DaskRunner on 2 workers against 1 worker: the work is spread. Target: at least 1.5x faster.
  Beside it, the CPU time the workers spent (user + system, all workers): what a second worker
  adds (moving data between workers, its own imports), whatever else runs on the machine.

Each figure is one build into a fresh data_dir, run as a user runs it (a new `happysad build`
process; wall clock from its start to its exit). A Dask cluster outlives its jobs, and its workers keep their imports (TensorFlow's
alone is seconds of CPU): each cluster is started and warmed by a WARMUP_IMAGES build before
the clock, and the first ("cold") job of a new 2-worker cluster is given too. The local runner
starts its worker processes within every job. The machine may be shared: each figure is the
best of REPEATS runs, interleaved.
"""

import functools
import glob
import os
import shutil

import common
import distributed
import psutil

NAME = "dask"
FULL_IMAGES = 20000
QUICK_IMAGES = 400
WARMUP_IMAGES = 40
REPEATS = 2
QUICK_REPEATS = 1


def build_seconds(folder: str, data_dir: str, beam_args: list[str]) -> float:
    """Wall-clock seconds of `happysad build --input folder` into a fresh data_dir."""
    shutil.rmtree(data_dir, ignore_errors=True)
    arguments = ["build", "--input", folder, "--data-dir", data_dir, *beam_args]
    seconds = common.happysad(arguments, data_dir.rstrip("/") + ".log").seconds
    if not glob.glob(os.path.join(data_dir, "happysad_tfds", "*", "*", "dataset_info.json")):
        raise RuntimeError(f"the build of {folder} wrote no dataset into {data_dir}")
    return seconds


def local_seconds(folder: str, data_dir: str) -> float:
    flags = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    return build_seconds(folder, data_dir, flags)


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def dask_seconds(folder: str, data_dir: str, workers: int, warmup: str | None) -> tuple:
    """(wall seconds, workers' CPU seconds) of the build on a new loopback LocalCluster.

    `workers` single-threaded worker processes; `warmup`: a folder built first, untimed.
    """
    with distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        flags = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
        if warmup:
            build_seconds(warmup, data_dir, flags)
        with distributed.Client(cluster) as client:
            before = client.run(_cpu_seconds)
            seconds = build_seconds(folder, data_dir, flags)
            after = client.run(_cpu_seconds)
    return seconds, sum(after[worker] - before[worker] for worker in after)


def run(workdir: str, quick: bool) -> list[common.Row]:
    count = QUICK_IMAGES if quick else FULL_IMAGES
    paths = common.scratch_face_folder(workdir, count)
    folder = common.folder_root(paths[0])
    warmup = common.folder_root(
        common.subset_folder(paths[:WARMUP_IMAGES], os.path.join(workdir, "warmup"))[0]
    )
    data_dir = os.path.join(workdir, "tfds")
    wall = {"local": [], "cold 2": [], "warm 2": [], "warm 1": []}
    cpu = {"warm 2": [], "warm 1": []}
    for _ in range(QUICK_REPEATS if quick else REPEATS):
        wall["local"].append(local_seconds(folder, data_dir))
        wall["cold 2"].append(dask_seconds(folder, data_dir, 2, warmup=None)[0])
        for workers in (2, 1):
            seconds, cpu_seconds = dask_seconds(folder, data_dir, workers, warmup)
            wall[f"warm {workers}"].append(seconds)
            cpu[f"warm {workers}"].append(cpu_seconds)
    best = {name: min(values) for name, values in wall.items()}
    job = f"happysad build --input, {count} JPEGs (5% 6-12 MP)"
    local = f"local runner (FnApiRunner), 2 worker processes, {best['local']:.1f} s"
    one_worker = f"DaskRunner, 1 worker, {best['warm 1']:.1f} s"
    row = functools.partial(common.Row, NAME, higher_is_better=False)
    return [
        row(
            figure=f"{job}: DaskRunner, 2 workers, wall clock",
            value=best["warm 2"],
            unit="s",
            baseline=local,
            baseline_value=best["local"],
            target="<= 1.5x",
        ),
        row(
            figure=f"{job}: DaskRunner, 2 workers, first job of the cluster, wall clock",
            value=best["cold 2"],
            unit="s",
            baseline=local,
            baseline_value=best["local"],
        ),
        common.Row(
            NAME,
            f"{job}: DaskRunner, 2 workers",
            count / best["warm 2"],
            "images/s",
            baseline=one_worker,
            baseline_value=count / best["warm 1"],
            target=">= 1.5x",
        ),
        row(
            figure=f"{job}: DaskRunner, 2 workers, CPU time of the workers",
            value=min(cpu["warm 2"]),
            unit="s",
            baseline="DaskRunner, 1 worker",
            baseline_value=min(cpu["warm 1"]),
        ),
    ]
