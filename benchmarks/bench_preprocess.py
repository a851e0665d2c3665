"""Preprocessing throughput: the Beam pipeline against a plain single-process OpenCV loop.

Same images, same run: (a) read + cv2.imdecode + cv2.resize(INTER_AREA) to 256x256 in one
process, the most one core does for this job; (b) CleanImages (read, hash, dedupe, validate,
decode, normalise, resize, colour statistics, split) with the DirectRunner's options for 1 and
2 worker processes, on the local runner `happysad preprocess` uses (the portable FnApiRunner
that DirectRunner falls back to, pipeline/beam_options.py); (c) the whole `happysad
preprocess` run with 2 workers, writing images, TFRecords, manifest and report. Target: (b)
with 2 workers at least 1.2x (a). The figures keep the name DirectRunner: its options, its
engine.

The DirectRunner's start (pipeline translation, worker processes, gRPC, imports) is a fixed
cost of seconds, more than (a) takes for the whole folder, so (b) is also given with it
excluded: the same pipeline timed on a SMALL_IMAGES folder, subtracted, per worker count.
The workers keep freed heap (imaging.keep_freed_memory, in ValidateImages.setup); the loop is
timed under the same allocator setting, and once before it for reference. The machine may be
shared: every figure is the best of REPEATS runs, interleaved.
"""

import functools
import glob
import os
import time

import apache_beam as beam
import common
import cv2
import numpy as np

from pipeline.data import beam_options, imaging, preprocess

NAME = "preprocess"
FULL_IMAGES = 4000
QUICK_IMAGES = 600
SMALL_IMAGES = 40
REPEATS = 3


def make_faces(folder: str, count: int) -> list[str]:
    """`count` small face JPEGs under folder/happy and folder/sad, all with distinct bytes.

    Varied crops, flips, sizes (64..250 px) and brightness of the shared LFW-style faces when
    they are present, else drawn cartoon faces.
    """
    existing = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))
    if len(existing) >= count:
        return existing[:count]
    faces = _shared_faces() or _drawn_faces()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        label = ("happy", "sad")[index % 2]
        face = faces[label][index // 2 % len(faces[label])]
        height, width = face.shape[:2]
        crop = rng.uniform(0.75, 1.0)
        crop_height, crop_width = int(height * crop), int(width * crop)
        top = rng.integers(0, height - crop_height + 1)
        left = rng.integers(0, width - crop_width + 1)
        variant = face[top : top + crop_height, left : left + crop_width]
        if rng.random() < 0.5:
            variant = variant[:, ::-1]
        side = int(rng.integers(64, 251))
        variant = cv2.resize(variant, (side, int(side * rng.uniform(0.9, 1.25))))
        variant = cv2.convertScaleAbs(
            variant, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-20, 20)
        )
        path = os.path.join(folder, label, f"face_{index:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, variant, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def _shared_faces() -> dict | None:
    root = common.shared_faces_dir()
    if root is None:
        return None
    return {
        label: [cv2.imread(path) for path in sorted(glob.glob(os.path.join(root, label, "*.jpg")))]
        for label in ("happy", "sad")
    }


def _drawn_faces() -> dict:
    faces = {"happy": [], "sad": []}
    for index in range(32):
        image = np.full((250, 250, 3), 60 + 5 * index, np.uint8)
        cv2.ellipse(image, (125, 125), (80, 105), 0, 0, 360, (140, 170, 205), -1)
        for side in (-1, 1):
            cv2.circle(image, (125 + side * 35, 100), 9, (30, 30, 40), -1)
        smile = index % 2 == 0
        start, end = (0, 180) if smile else (180, 360)
        cv2.ellipse(image, (125, 170 if smile else 185), (35, 15), 0, start, end, (60, 50, 130), 4)
        faces["happy" if smile else "sad"].append(image)
    return faces


def opencv_loop(paths: list[str]) -> float:
    """Images per second of the plain loop: read, decode, BGR->RGB, resize, on one core."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the limit of one core: no OpenCV worker threads on the other
    try:
        start = time.perf_counter()
        for path in paths:
            with open(path, "rb") as stream:
                data = np.frombuffer(stream.read(), np.uint8)
            image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            cv2.resize(image, (256, 256), interpolation=imaging.INTERPOLATION)
        return len(paths) / (time.perf_counter() - start)
    finally:
        cv2.setNumThreads(threads)


def beam_arguments(workers: int) -> list[str]:
    return [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]


def clean_images_seconds(folder: str, workers: int) -> float:
    """Wall-clock seconds of ListLabelledFiles | CleanImages into counts, startup included."""
    options = beam_options.from_args(beam_arguments(workers))
    start = time.perf_counter()
    with beam.Pipeline(runner=beam_options.runner_for(options), options=options) as root:
        cleaned = root | preprocess.ListLabelledFiles(folder) | preprocess.CleanImages()
        _ = cleaned["accepted"] | "CountAccepted" >> beam.combiners.Count.Globally()
        _ = cleaned["manifest"] | "CountRows" >> beam.combiners.Count.Globally()
    return time.perf_counter() - start


def full_run(folder: str, output: str, workers: int) -> float:
    """Images per second of `happysad preprocess` (images, TFRecords, manifest, report)."""
    config = preprocess.PreprocessConfig(
        input=folder, output=output, beam_args=tuple(beam_arguments(workers))
    )
    start = time.perf_counter()
    summary = preprocess.run(config)
    return summary["input_files"] / (time.perf_counter() - start)


def _small_copy(paths: list[str], folder: str, count: int) -> str:
    """A folder with `count` of the images, half per label: measures the fixed startup cost."""
    for path in paths[: count // 2] + paths[-count // 2 :]:
        label = os.path.basename(os.path.dirname(path))
        target = os.path.join(folder, label, os.path.basename(path))
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(path, target)
    return folder


def run(workdir: str, quick: bool) -> list[common.Row]:
    count = QUICK_IMAGES if quick else FULL_IMAGES
    folder = os.path.join(workdir, f"faces_{count}")
    paths = make_faces(folder, count)
    small = _small_copy(sorted(paths), os.path.join(workdir, "faces_small"), SMALL_IMAGES)
    opencv_loop(paths[:200])  # warm the page cache and OpenCV
    default_loop = max(opencv_loop(paths) for _ in range(REPEATS))
    imaging.keep_freed_memory()  # what every Beam worker does in ValidateImages.setup
    loop, seconds, startup = 0.0, {1: [], 2: []}, {1: [], 2: []}
    for _ in range(REPEATS):  # interleaved, so that a busy spell hits every figure alike
        loop = max(loop, opencv_loop(paths))
        for workers in (1, 2):
            seconds[workers].append(clean_images_seconds(folder, workers))
            startup[workers].append(clean_images_seconds(small, workers))
    wall = {workers: count / min(seconds[workers]) for workers in (1, 2)}
    steady = {
        workers: (count - SMALL_IMAGES) / (min(seconds[workers]) - min(startup[workers]))
        for workers in (1, 2)
    }
    whole = full_run(folder, os.path.join(workdir, "out"), 2)
    baseline = f"OpenCV loop, 1 core ({count} JPEGs)"
    row = functools.partial(
        common.Row, NAME, unit="images/s", baseline=baseline, baseline_value=loop
    )
    rows = [
        common.Row(
            NAME,
            f"OpenCV decode+resize loop, 1 core, default allocator ({count} JPEGs)",
            default_loop,
            "images/s",
        ),
        common.Row(NAME, f"OpenCV decode+resize loop, 1 core ({count} JPEGs)", loop, "images/s"),
    ]
    for workers in (1, 2):
        target = ">= 1.2x" if workers == 2 else ""
        name = f"CleanImages, DirectRunner, {workers} worker{'s' if workers > 1 else ''}"
        rows += [
            row(figure=f"{name}, wall clock", value=wall[workers], target=target),
            row(
                figure=f"{name}, startup ({min(startup[workers]):.1f} s) excluded",
                value=steady[workers],
                target=target,
            ),
        ]
    rows.append(row(figure="happysad preprocess (all outputs), 2 workers, wall clock", value=whole))
    return rows
