"""Per-image cost of the pixel transform (pipeline.transform) against a bare TF decode+resize.

Same files, same process, one TensorFlow thread per op and one op at a time (the measurement
runs in a subprocess with TF_NUM_INTRAOP_THREADS=1 and TF_NUM_INTEROP_THREADS=1: one core, as
one Beam worker). Folders: small JPEG faces (derived from ../shared/data/faces when present,
else drawn), 6-12 megapixel JPEG photos (faces enlarged with grain, half of them with EXIF
orientation 6, as phones write them), and a mix with 5% photos as issue 11's data-job folder.

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
import glob
import json
import os
import subprocess
import sys
import time

import common
import numpy as np
from PIL import Image

NAME = "transform"
FULL_FACES, QUICK_FACES = 1000, 200
FULL_PHOTOS, QUICK_PHOTOS = 12, 4
PHOTO_SIZES = ((3000, 2000), (3600, 2400), (4000, 3000))  # 6, 8.6 and 12 megapixels
BATCH = 32
REPEATS = 3
ORIENTATION_TAG = 0x0112
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _faces() -> list[Image.Image]:
    root = common.shared_faces_dir()
    if root is not None:
        paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))
        return [Image.open(path).convert("RGB") for path in paths]
    faces = []
    for index in range(32):  # drawn faces: an ellipse, eyes and a mouth on a plain ground
        rows, columns = np.mgrid[0:250, 0:250]
        image = np.full((250, 250, 3), 60 + 5 * index, np.uint8)
        inside = ((columns - 125) / 80.0) ** 2 + ((rows - 125) / 105.0) ** 2 <= 1
        image[inside] = (205, 170, 140)
        for side in (-1, 1):
            image[95:105, 125 + side * 35 - 5 : 125 + side * 35 + 5] = (40, 30, 30)
        image[165 + 10 * (index % 2) : 172 + 10 * (index % 2), 95:155] = (130, 50, 60)
        faces.append(Image.fromarray(image))
    return faces


def _save(image: Image.Image, path: str, **options) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, "JPEG", **options)
    return path


def make_files(folder: str, faces: int, photos: int) -> dict[str, list[str]]:
    """Small face JPEGs (64..250 px, varied crops and brightness) and 6-12 MP photo JPEGs."""
    sources, rng = _faces(), np.random.default_rng(0)
    small, large = [], []
    for index in range(faces):
        path = os.path.join(folder, "faces", f"face_{index:05d}.jpg")
        if not os.path.exists(path):
            face = sources[index % len(sources)]
            crop = rng.uniform(0.75, 1.0)
            width, height = int(face.width * crop), int(face.height * crop)
            left, top = (
                rng.integers(0, face.width - width + 1),
                rng.integers(0, face.height - height + 1),
            )
            side = int(rng.integers(64, 251))
            variant = face.crop((left, top, left + width, top + height)).resize(
                (side, int(side * 1.2))
            )
            pixels = np.asarray(variant, np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
            _save(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), path, quality=90)
        small.append(path)
    for index in range(photos):
        path = os.path.join(folder, "photos", f"photo_{index:03d}.jpg")
        if not os.path.exists(path):
            width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
            face = sources[index % len(sources)].resize((width, height), Image.BICUBIC)
            pixels = np.asarray(face, np.float32) + rng.normal(0, 4, (height, width, 3))
            exif = Image.Exif()
            exif[ORIENTATION_TAG] = 6 if index % 2 else 1
            photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            _save(photo, path, quality=90, exif=exif.tobytes())
        large.append(path)
    mixed = small[: photos * 19] + large  # 5% photos, as issue 11's data-job folder
    return {"faces": small, "photos": large, "mixed": mixed}


def measure(files: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Images per second of each way of transforming each folder (in this process)."""
    import tensorflow as tf

    from pipeline.data import transform

    options = transform.TransformOptions(min_side=1, max_aspect_ratio=100.0)
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
    faces, photos = (QUICK_FACES, QUICK_PHOTOS) if quick else (FULL_FACES, FULL_PHOTOS)
    files = make_files(os.path.join(workdir, "files"), faces, photos)
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
