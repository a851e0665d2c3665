"""The data job (issue 11) on a folder of 20,000 JPEGs, against a 1-core loop of its transform.

The folder is common.scratch_face_folder's (shared with bench_dask): unique JPEG faces derived from ../shared/data/faces (drawn
faces without it) with small perturbations, 5% of them 6 to 12 megapixel photos. Same files,
same run:

  1-core loop      a subprocess pinned to one core with one TensorFlow thread reads every file
                   and calls THE transform as the data job's workers do
                   (`transform.Transformer.many`, batches of job._MAX_BATCH files); beside
                   it the bare floor: tf.io.decode_jpeg + area resize + round, one file per call.
  preprocess       `happysad preprocess --input F --output O` (the data job without the TFDS
                   writer: list, hash, group copies, read, transform, judge, manifest, report),
                   as a user runs it: a new process, wall clock from its start to its exit,
                   with 2 and with 1 Beam worker process (--direct_num_workers=N
                   --direct_running_mode=multi_processing).
  build            `happysad build --input F` (the same job, plus TFDS's Beam writer) with 2
                   workers, into a fresh data directory; the build itself checks that every
                   accepted image became an example.

Peak memory is summed over the command's whole process tree (the driver and its Beam worker
processes), sampled every SAMPLE_SECONDS, at two folder sizes (the smaller folder is the first
files of the bigger one, hard-linked): RSS, which counts the pages the processes share (the
TensorFlow library) once per process, and PSS, which shares them out. Targets (issue 11): 2
workers >= 0.5x the 1-core loop, 2 workers >= 1.5x 1 worker, peak memory (RSS) under 2 GB and
independent of the folder's size. Each preprocess figure is the best of REPEATS interleaved
runs (the build runs once per size); the 1-core loops are the best of two passes.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time

import common

NAME = "preprocess"
FULL_SIZES = (5000, 20000)
QUICK_SIZES = (100, 400)
REPEATS, QUICK_REPEATS = 2, 1
MEMORY_TARGET_MIB = 1907  # 2 GB


def loop_rates(paths: list[str], listing: str) -> dict[str, float]:
    """Images per second of the two 1-core loops over `paths` (best of the repeats)."""
    with open(listing, "w", encoding="utf-8") as stream:
        json.dump(paths, stream)
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--loop", listing],
        env={**os.environ, **common.COMMAND_ENVIRONMENT},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _loop(paths: list[str], repeats: int) -> dict[str, float]:
    """In the subprocess: one core, one TensorFlow thread, every file read and transformed."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipeline.data import job, transform

    transformer = transform.Transformer(transform.DEFAULT_OPTIONS)
    side = transform.DEFAULT_OPTIONS.image_size

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def bare(data):
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        return tf.cast(tf.round(tf.image.resize(image, [side, side], method="area")), tf.uint8)

    def read(path):
        with open(path, "rb") as stream:
            return stream.read()

    def transform_loop():
        for start in range(0, len(paths), job._MAX_BATCH):
            results = transformer.many(
                [read(path) for path in paths[start : start + job._MAX_BATCH]]
            )
            if any(result.pixels is None for result in results):
                raise RuntimeError("the transform refused a benchmark file")

    def bare_loop():
        for path in paths:
            bare(read(path)).numpy()

    loops = {"transform": transform_loop, "bare": bare_loop}
    transformer.many([read(path) for path in paths[: job._MAX_BATCH]])  # trace, warm the cache
    bare(read(paths[0]))
    best = dict.fromkeys(loops, 0.0)
    for _ in range(repeats):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop()
            best[name] = max(best[name], len(paths) / (time.perf_counter() - start))
    return best


def _workers(count: int) -> list[str]:
    return [f"--direct_num_workers={count}", "--direct_running_mode=multi_processing"]


def preprocess(folder: str, output: str, workers: int, count: int) -> common.Measured:
    """The figures of `happysad preprocess` of `folder`; checks every file got a row."""
    shutil.rmtree(output, ignore_errors=True)
    arguments = ["preprocess", "--input", folder, "--output", output, *_workers(workers)]
    figures = common.happysad(arguments, output.rstrip("/") + ".log")
    with open(os.path.join(output, "summary.json"), encoding="utf-8") as stream:
        summary = json.load(stream)
    if summary["input_files"] != count or summary["status"].get("accepted") != count:
        raise RuntimeError(f"{folder}: expected {count} accepted files, got {summary['status']}")
    return figures


def build(folder: str, data_dir: str, workers: int) -> common.Measured:
    """The figures of `happysad build --input folder` into a fresh data directory."""
    shutil.rmtree(data_dir, ignore_errors=True)
    arguments = ["build", "--input", folder, "--data-dir", data_dir, *_workers(workers)]
    return common.happysad(arguments, data_dir.rstrip("/") + ".log")


def run(workdir: str, quick: bool) -> list[common.Row]:
    small, count = QUICK_SIZES if quick else FULL_SIZES
    paths = common.scratch_face_folder(workdir, count)
    small_paths = common.subset_folder(paths[:small], os.path.join(workdir, f"faces_{small}"))
    folders = {count: common.folder_root(paths[0]), small: common.folder_root(small_paths[0])}
    loops = loop_rates(paths, os.path.join(workdir, "files.json"))
    runs = {}  # (command, files, workers) -> [Measured]
    for _ in range(QUICK_REPEATS if quick else REPEATS):  # interleaved: a busy spell hits all
        for files, workers in ((count, 2), (count, 1), (small, 2)):
            output = os.path.join(workdir, f"out_{files}_{workers}")
            measured = preprocess(folders[files], output, workers, files)
            runs.setdefault(("preprocess", files, workers), []).append(measured)
    for files in (small, count):
        data_dir = os.path.join(workdir, f"tfds_{files}")
        runs[("build", files, 2)] = [build(folders[files], data_dir, 2)]
    best = {
        key: common.Measured(
            min(one.seconds for one in measured),
            max(one.rss_mib for one in measured),
            max(one.pss_mib for one in measured),
        )
        for key, measured in runs.items()
    }
    return _rows(count, small, loops, best)


def _rows(count: int, small: int, loops: dict, best: dict) -> list[common.Row]:
    folder = f"{count} JPEGs, 5% of them 6-12 MP"
    loop = f"1-core loop: read + Transformer.many ({folder})"
    bare = f"1-core loop: read + bare tf.io.decode_jpeg + area resize ({folder})"
    two, one = best["preprocess", count, 2], best["preprocess", count, 1]
    small_two = best["preprocess", small, 2]
    built, small_built = best["build", count, 2], best["build", small, 2]
    command = f"happysad preprocess, {count} JPEGs"
    rate = count / two.seconds
    row = functools.partial(common.Row, NAME)
    memory = functools.partial(row, unit="MiB", higher_is_better=False)
    return [
        row(loop, loops["transform"], "images/s"),
        row(bare, loops["bare"], "images/s"),
        row(
            f"{command}, 2 Beam workers, wall clock ({two.seconds:.0f} s)",
            rate,
            "images/s",
            loop,
            loops["transform"],
            ">= 0.5x",
        ),
        row(f"{command}, 2 Beam workers, wall clock", rate, "images/s", bare, loops["bare"]),
        row(
            f"{command}, 2 Beam workers",
            rate,
            "images/s",
            f"1 worker ({one.seconds:.0f} s)",
            count / one.seconds,
            ">= 1.5x",
        ),
        memory(
            figure=f"{command}, 2 workers: peak RSS of the process tree",
            value=two.rss_mib,
            baseline=f"the same, {small} JPEGs",
            baseline_value=small_two.rss_mib,
            target=f"< {MEMORY_TARGET_MIB:,} MiB (2 GB), ~1x",
        ),
        memory(
            figure=f"{command}, 2 workers: peak PSS of the process tree (shared pages once)",
            value=two.pss_mib,
            baseline=f"the same, {small} JPEGs",
            baseline_value=small_two.pss_mib,
        ),
        memory(figure=f"{command}, 1 worker: peak RSS of the process tree", value=one.rss_mib),
        row(
            f"happysad build (the data job + TFDS's writer), {count} JPEGs, 2 workers, wall "
            f"clock ({built.seconds:.0f} s)",
            count / built.seconds,
            "images/s",
            "happysad preprocess, 2 workers",
            rate,
        ),
        memory(
            figure=f"happysad build, {count} JPEGs, 2 workers: peak RSS of the process tree "
            "(grows with the dataset: the local runner keeps a stage's whole output until the "
            "next stage reads it, and TFDS's Beam writer counts and shards every example)",
            value=built.rss_mib,
            baseline=f"the same, {small} JPEGs",
            baseline_value=small_built.rss_mib,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", required=True, help="JSON file: the list of paths")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with open(args.loop, encoding="utf-8") as stream:
        paths = json.load(stream)
    print(json.dumps(_loop(paths, args.repeats)))


if __name__ == "__main__":
    main()
