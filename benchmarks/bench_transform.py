"""Per-image cost of the pixel transform (pipeline.transform) against a bare TF decode+resize.

Same files, same process, one TensorFlow thread per op and one op at a time (the measurement
runs in a subprocess with TF_NUM_INTRAOP_THREADS=1 and TF_NUM_INTEROP_THREADS=1: one core, as
one Beam worker). The files are common.face_folder's (the data-job benchmarks' folder, smaller):
small JPEG faces (derived from ../shared/data/faces when present, else drawn), 6-12 megapixel
JPEG photos (faces enlarged with grain, half of them with EXIF orientation 6, as phones write
them), measured apart and together (the folder as it is: 5% photos, as issue 11's folder).

  bare loop      a tf.function of tf.io.decode_jpeg (ISLOW) + area resize + round to uint8,
                 called per image: the floor any per-image TF transform pays, and issue 11's
                 "1-core bare loop of the same TensorFlow decode+resize function";
  Transformer    the data job's per-file call: sniff, header facts and budgets in graph,
                 orientation, decode, resize, numpy out, and a status instead of exceptions;
  Transformer.many  the same results for 32 files per graph call (a Beam batch);
  transform_batch  the serving form: 32 images per call of a tf.function (tf.map_fn);
  inspect        header facts alone (what a bomb costs before it is refused).

Every figure is images per second, the best of REPEATS interleaved runs (the machine may be
shared). The ratio against the bare loop is what the data job's benchmark inherits.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import common

NAME = "transform"
FULL_FILES, QUICK_FILES = 1000, 200  # 5% of them photos
BATCH = 32
REPEATS = 3
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_files(folder: str, count: int) -> dict[str, list[str]]:
    """common.face_folder's `count` files: its small faces, its photos, and all of them."""
    paths = common.face_folder(folder, count)
    return {
        "faces": [path for path in paths if not common.is_photo(path)],
        "photos": [path for path in paths if common.is_photo(path)],
        "mixed": paths,
    }


def measure(files: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Images per second of each way of transforming each folder (in this process)."""
    import tensorflow as tf

    from pipeline import config
    from pipeline.data import transform

    options = config.TransformConfig(min_side=1, max_aspect_ratio=100.0)
    signature = [tf.TensorSpec([], tf.string)]

    @tf.function(input_signature=signature)
    def bare(data):
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        return tf.cast(tf.round(tf.image.resize(image, [256, 256], method="area")), tf.uint8)

    inspect = tf.function(lambda data: transform.inspect(data, options), input_signature=signature)
    batch = tf.function(
        lambda data: transform.transform_batch(data, options),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    transformer = transform.Transformer(options)

    def per_image(function):
        def loop(contents):
            for data in contents:
                function(data)

        return loop

    def batched(contents):
        for start in range(0, len(contents), BATCH):
            batch(tf.constant(contents[start : start + BATCH])).numpy()

    def many(contents):
        for start in range(0, len(contents), BATCH):
            transformer.many(contents[start : start + BATCH])

    ways = {
        "bare": per_image(lambda data: bare(data).numpy()),
        "transformer": per_image(transformer),
        "many": many,
        "batch": batched,
        "inspect": per_image(lambda data: inspect(data)["width"].numpy()),
    }
    results = {}
    for folder, paths in files.items():
        contents = []
        for path in paths:
            with open(path, "rb") as stream:
                contents.append(stream.read())
        for way in ways.values():  # trace and warm up
            way(contents[:2])
        best = dict.fromkeys(ways, 0.0)
        for _ in range(REPEATS):  # interleaved, so that a busy spell hits every figure alike
            for name, way in ways.items():
                start = time.perf_counter()
                way(contents)
                best[name] = max(best[name], len(contents) / (time.perf_counter() - start))
        results[folder] = best
    return results


def run(workdir: str, quick: bool) -> list[common.Row]:
    count = QUICK_FILES if quick else FULL_FILES
    files = make_files(os.path.join(workdir, f"files_{count}"), count)
    listing = os.path.join(workdir, "files.json")
    with open(listing, "w", encoding="utf-8") as stream:
        json.dump(files, stream)
    one_core = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    environment = {**os.environ, **one_core, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure", listing],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    results = json.loads(output.strip().splitlines()[-1])
    rows = []
    labels = {
        "faces": f"{len(files['faces'])} small JPEG faces",
        "photos": f"{len(files['photos'])} JPEG photos of 6-12 MP",
        "mixed": f"{len(files['mixed'])} JPEGs, 5% of them 6-12 MP photos",
    }
    for folder, label in labels.items():
        figures = results[folder]
        baseline = f"bare TF decode+resize loop, 1 core ({label})"

        def row(figure, value, target="", baseline=baseline, figures=figures):
            return common.Row(
                NAME, figure, value, "images/s", baseline, figures["bare"], target=target
            )

        rows += [
            common.Row(
                NAME, f"bare TF decode+resize loop, 1 core ({label})", figures["bare"], "images/s"
            ),
            row(f"Transformer (data job, per file), 1 core ({label})", figures["transformer"]),
            row(f"Transformer.many ({BATCH} per call), 1 core ({label})", figures["many"]),
            row(f"transform_batch ({BATCH} per call), 1 core ({label})", figures["batch"]),
            row(f"inspect (header facts only), 1 core ({label})", figures["inspect"]),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--measure", required=True, help="JSON file: folder name -> paths")
    args = parser.parse_args()
    with open(args.measure, encoding="utf-8") as stream:
        files = json.load(stream)
    print(json.dumps(measure(files)))


if __name__ == "__main__":
    main()
