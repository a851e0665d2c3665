"""pipeline.preprocess: every awkward file gets one manifest row with the right verdict."""

import collections
import dataclasses
import gzip
import io
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline, util
from PIL import Image

from pipeline import cli, errors
from pipeline.data import imaging, preprocess, schema, splits

ACCEPTED, REJECTED, DUPLICATE = imaging.ACCEPTED, imaging.REJECTED, imaging.DUPLICATE


def photo(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth colourful picture; every seed gives different bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [
        127
        + 120 * np.sin(x / rng.uniform(5, 15) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(8, 20))
        for _ in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(array, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    picture = array if isinstance(array, Image.Image) else Image.fromarray(array)
    picture.save(buffer, image_format, **params)
    return buffer.getvalue()


def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit PNG header claiming side x side pixels, with a little pixel data."""
    import struct
    import zlib

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + side // 8) * 100)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 80 x 120 becomes 120 x 80... swapped
    return encode(photo(120, 80, seed=7), "JPEG", exif=exif.tobytes())


def make_awkward_folder(root: str) -> dict[str, tuple[str, str]]:
    """Writes a scraped-looking happy/ sad/ folder; returns {relative path: (status, reason)}."""
    smile = encode(photo(seed=1), "JPEG", quality=90)
    both = encode(photo(seed=2), "PNG")
    truncated = encode(photo(seed=3), "JPEG")[:-300]
    sixteen_bit = (photo(seed=4)[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    animation = io.BytesIO()
    frames = [Image.fromarray(photo(seed=seed)) for seed in (5, 6)]
    frames[0].save(animation, "GIF", save_all=True, append_images=frames[1:])
    files = {
        # happy/
        "happy/smile.jpg": (smile, ACCEPTED, ""),
        "happy/smile(1).jpg": (smile, DUPLICATE, ""),
        "happy/nested/deeper/grin.png": (encode(photo(seed=10), "PNG"), ACCEPTED, ""),
        "happy/no_extension": (encode(photo(seed=11), "JPEG"), ACCEPTED, ""),
        "happy/actually_a_jpeg.png": (encode(photo(seed=12), "JPEG"), ACCEPTED, ""),
        "happy/gray.png": (encode(photo(seed=13)[:, :, 1], "PNG"), ACCEPTED, ""),
        "happy/alpha.png": (
            encode(np.dstack([photo(seed=14), np.full((80, 96), 128, np.uint8)]), "PNG"),
            ACCEPTED,
            "",
        ),
        "happy/cmyk.jpg": (
            encode(Image.fromarray(photo(seed=15)).convert("CMYK"), "JPEG"),
            ACCEPTED,
            "",
        ),
        "happy/deep16.png": (encode(sixteen_bit, "PNG"), ACCEPTED, ""),
        "happy/anim.gif": (animation.getvalue(), ACCEPTED, ""),
        "happy/photo.webp": (encode(photo(seed=16), "WEBP"), ACCEPTED, ""),
        "happy/rotated.jpg": (rotated_jpeg(), ACCEPTED, ""),
        "happy/big.jpg": (
            encode(np.kron(photo(seed=17), np.ones((20, 25, 1), np.uint8)), "JPEG"),
            ACCEPTED,
            "",
        ),
        "happy/both.png": (both, REJECTED, imaging.LABEL_CONFLICT),
        "happy/bomb.png": (bomb_png(), REJECTED, imaging.TOO_LARGE),
        "happy/truncated.jpg": (truncated, REJECTED, imaging.CORRUPT),
        "happy/empty.jpg": (b"", REJECTED, imaging.EMPTY),
        "happy/notes.jpg": (b"remember to download the sad ones\n", REJECTED, imaging.NOT_AN_IMAGE),
        "happy/.DS_Store": (b"\x00\x00\x00\x01Bud1" + bytes(200), REJECTED, imaging.NOT_AN_IMAGE),
        "happy/drawing.svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg"/>',
            REJECTED,
            imaging.UNSUPPORTED_FORMAT,
        ),
        "happy/tiny.png": (encode(photo(16, 16, seed=18), "PNG"), REJECTED, imaging.TOO_SMALL),
        "happy/banner.jpg": (
            encode(photo(400, 60, seed=19), "JPEG"),
            REJECTED,
            imaging.EXTREME_ASPECT,
        ),
        "happy/photo.jpg.gz": (gzip.compress(smile), REJECTED, imaging.NOT_AN_IMAGE),
        # sad/
        "sad/frown.jpg": (encode(photo(seed=20), "JPEG"), ACCEPTED, ""),
        "sad/frown.bmp": (encode(photo(seed=21), "BMP"), ACCEPTED, ""),
        "sad/frown.tiff": (encode(photo(seed=22), "TIFF"), ACCEPTED, ""),
        "sad/both.png": (both, REJECTED, imaging.LABEL_CONFLICT),
        "sad/both (copy).png": (both, REJECTED, imaging.LABEL_CONFLICT),
        "sad/truncated_a.jpg": (truncated, REJECTED, imaging.CORRUPT),
        "sad/truncated_b.jpg": (truncated, REJECTED, imaging.CORRUPT),
        "sad/truncated.png": (encode(photo(seed=23), "PNG")[:400], REJECTED, imaging.CORRUPT),
        "sad/404.png": (b"<!DOCTYPE html><html>Not Found</html>", REJECTED, imaging.NOT_AN_IMAGE),
    }
    expected = {}
    for relative, (data, status, reason) in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(data)
        expected[relative] = (status, reason)
    os.symlink(os.path.join(root, "nowhere.jpg"), os.path.join(root, "sad", "dead_link.jpg"))
    expected["sad/dead_link.jpg"] = (REJECTED, imaging.UNREADABLE)
    outside = os.path.join(root, "elsewhere.jpg")  # not under a label folder: not an input
    with open(outside, "wb") as stream:
        stream.write(encode(photo(seed=30), "JPEG"))
    os.symlink(outside, os.path.join(root, "sad", "linked.jpg"))
    expected["sad/linked.jpg"] = (ACCEPTED, "")
    return expected


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> tuple[str, dict]:
    root = str(tmp_path_factory.mktemp("awkward"))
    return root, make_awkward_folder(root)


def relative(root: str, path: str) -> str:
    return os.path.relpath(path, root)


# ---------------------------------------------------------------------------------------------
# Listing.


def test_list_labelled_files_finds_every_file(awkward):
    root, expected = awkward
    sources = preprocess.list_labelled_files(root)
    assert sorted(relative(root, source.path) for source in sources) == sorted(expected)
    for source in sources:
        assert source.label == relative(root, source.path).split(os.sep)[0]
        assert source.data is None


def test_list_labelled_files_transform(awkward):
    root, expected = awkward
    with test_pipeline.TestPipeline() as pipeline:
        paths = (
            pipeline
            | preprocess.ListLabelledFiles(root)
            | beam.Map(lambda source: (relative(root, source.path), source.label))
        )
        wanted = [(path, path.split(os.sep)[0]) for path in expected]
        util.assert_that(paths, util.equal_to(wanted))


def test_list_labelled_files_explains_a_wrong_folder(tmp_path):
    with pytest.raises(errors.UserError, match="does not exist"):
        preprocess.list_labelled_files(str(tmp_path / "missing"))
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / "a.jpg").write_bytes(b"x")
    with pytest.raises(errors.UserError, match="no sad/ sub-folder"):
        preprocess.list_labelled_files(str(tmp_path))
    (tmp_path / "sad" / "only_folders").mkdir(parents=True)
    with pytest.raises(errors.UserError, match="is empty"):
        preprocess.list_labelled_files(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Cleaning, in memory (sources that carry their bytes, like the synthetic renderer).


def test_find_copies():
    happy = [("h/b.jpg", "happy"), ("h/a(1).jpg", "happy"), ("h/a.jpg", "happy")]
    assert preprocess.find_copies("s", happy) == [
        (("h/b.jpg", "s"), (DUPLICATE, "h/a.jpg")),
        (("h/a(1).jpg", "s"), (DUPLICATE, "h/a.jpg")),
    ]
    assert preprocess.find_copies("s", [("h/a.jpg", "happy")]) == []
    conflict = preprocess.find_copies("s", [("h/a.jpg", "happy"), ("s/a.jpg", "sad")])
    assert sorted(conflict) == [
        (("h/a.jpg", "s"), (imaging.LABEL_CONFLICT, "")),
        (("s/a.jpg", "s"), (imaging.LABEL_CONFLICT, "")),
    ]


def run_clean_images(
    sources, options=imaging.DEFAULT_OPTIONS, check_accepted=None, check_rows=None
):
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create(sources, reshuffle=False) | preprocess.CleanImages(options)
        util.assert_that(cleaned["accepted"], check_accepted, label="CheckAccepted")
        util.assert_that(cleaned["manifest"], check_rows, label="CheckManifest")


def test_clean_images_both_outputs():
    good = encode(photo(seed=1), "PNG")
    sources = [
        schema.SourceImage("mem/happy/good.png", "happy", good),
        schema.SourceImage("mem/happy/good_again.png", "happy", good),
        schema.SourceImage("mem/sad/other.jpg", "sad", encode(photo(seed=2), "JPEG")),
        schema.SourceImage("mem/sad/empty.jpg", "sad", b""),
        schema.SourceImage("mem/sad/cut.jpg", "sad", encode(photo(seed=3), "JPEG")[:500]),
        schema.SourceImage("mem/sad/words.jpg", "sad", b"not a picture"),
    ]

    def check_accepted(images):
        assert sorted(image.path for image in images) == ["mem/happy/good.png", "mem/sad/other.jpg"]
        for image in images:
            assert image.image.shape == (256, 256, 3) and image.image.dtype == np.uint8
            assert (image.width, image.height) == (96, 80)
            assert image.split == splits.assign_split(image.sha256)

    def check_rows(rows):
        verdicts = {row["path"]: (row["status"], row["reason"]) for row in rows}
        assert verdicts == {
            "mem/happy/good.png": (ACCEPTED, ""),
            "mem/happy/good_again.png": (DUPLICATE, ""),
            "mem/sad/other.jpg": (ACCEPTED, ""),
            "mem/sad/empty.jpg": (REJECTED, imaging.EMPTY),
            "mem/sad/cut.jpg": (REJECTED, imaging.CORRUPT),
            "mem/sad/words.jpg": (REJECTED, imaging.NOT_AN_IMAGE),
        }
        assert len(rows) == len(sources)
        for row in rows:
            assert set(row) == set(preprocess.MANIFEST_COLUMNS)
        (copy,) = [row for row in rows if row["status"] == DUPLICATE]
        assert copy["duplicate_of"] == "mem/happy/good.png" and copy["split"]

    run_clean_images(sources, check_accepted=check_accepted, check_rows=check_rows)


def test_clean_images_on_nothing():
    run_clean_images([], check_accepted=util.is_empty(), check_rows=util.is_empty())


def test_clean_images_applies_its_options():
    sources = [
        schema.SourceImage("mem/happy/wide.png", "happy", encode(photo(200, 100), "PNG")),
        schema.SourceImage("mem/sad/square.png", "sad", encode(photo(100, 100), "PNG")),
    ]
    options = imaging.CleaningOptions(image_size=32, resize_policy="pad", max_pixels=15_000)

    def check_accepted(images):
        (image,) = images
        assert image.path == "mem/sad/square.png" and image.image.shape == (32, 32, 3)

    def check_rows(rows):
        reasons = sorted(row["reason"] for row in rows)
        assert reasons == ["", imaging.TOO_LARGE]

    run_clean_images(sources, options, check_accepted, check_rows)


def test_writers_on_images_and_on_nothing(tmp_path):
    import tensorflow as tf

    image = np.zeros((256, 256, 3), np.uint8)
    image[:, :, 0] = 200
    clean = [
        schema.CleanImage(
            f"in/{label}/{index}.jpg", label, f"{index:064x}", split, image, 90, 80, "jpeg"
        )
        for index, (label, split) in enumerate(
            [("happy", "train"), ("sad", "train"), ("sad", "test")]
        )
    ]
    for name, images in (("some", clean), ("none", [])):
        output = str(tmp_path / name)
        rows = [
            {column: "" for column in preprocess.MANIFEST_COLUMNS} | {"path": c.path}
            for c in images
        ]
        with test_pipeline.TestPipeline() as pipeline:
            _ = (
                pipeline
                | "CreateImages" >> beam.Create(images)
                | preprocess.WriteExamples(output, write_images=True)
            )
            _ = (
                pipeline
                | "CreateRows" >> beam.Create(rows[::-1])
                | preprocess.WriteManifest(output)
            )
        assert [row["path"] for row in preprocess.read_manifest(output)] == sorted(
            c.path for c in images
        )
        for split in splits.SPLITS:
            files = tf.io.gfile.glob(os.path.join(output, "tfrecords", f"{split}-*-of-*.tfrecord"))
            assert files, split  # every split gets its file, even an empty one
            records = list(tf.data.TFRecordDataset(files))
            assert len(records) == sum(c.split == split for c in images)
            for record in records:
                example = tf.io.parse_single_example(record, preprocess.example_feature_spec())
                decoded = tf.io.decode_png(example["image/encoded"]).numpy()
                assert np.array_equal(decoded, image)  # lossless
        pngs = [name for _, _, names in os.walk(output) for name in names if name.endswith(".png")]
        assert len(pngs) == len(images)


# ---------------------------------------------------------------------------------------------
# End to end: a folder on disk through `run`, and the CLI.


@pytest.fixture(scope="module")
def preprocessed(awkward, tmp_path_factory):
    root, expected = awkward
    output = str(tmp_path_factory.mktemp("out"))
    config = preprocess.PreprocessConfig(input=root, output=output)
    summary = preprocess.run(config)
    return root, expected, output, summary


def test_run_gives_every_file_exactly_one_row_with_the_right_verdict(preprocessed):
    root, expected, output, summary = preprocessed
    rows = preprocess.read_manifest(output)
    paths = [relative(root, row["path"]) for row in rows]
    assert sorted(paths) == sorted(expected)  # every input, once
    assert len(paths) == len(set(paths))
    verdicts = {relative(root, row["path"]): (row["status"], row["reason"]) for row in rows}
    for path, verdict in expected.items():
        assert verdicts[path] == verdict, path
    by_path = {relative(root, row["path"]): row for row in rows}
    assert by_path["happy/smile(1).jpg"]["duplicate_of"] == os.path.join(root, "happy/smile.jpg")
    assert by_path["happy/rotated.jpg"]["width"] == "80"  # displayed size, EXIF applied
    assert by_path["happy/bomb.png"]["width"] == "30000"
    assert by_path["happy/actually_a_jpeg.png"]["format"] == "jpeg"
    assert by_path["happy/cmyk.jpg"]["mode"] == "CMYK"
    assert by_path["happy/gray.png"]["grayscale"] == "True"


def test_run_summary_counts_the_manifest(preprocessed):
    _, expected, output, summary = preprocessed
    assert summary["input_files"] == len(expected)
    assert summary["status"] == dict(
        sorted(collections.Counter(s for s, _ in expected.values()).items())
    )
    reasons = collections.Counter(reason for _, reason in expected.values() if reason)
    assert summary["reason"] == dict(sorted(reasons.items()))
    assert sum(summary["split"].values()) == summary["status"][ACCEPTED]
    with open(os.path.join(output, preprocess.SUMMARY_FILE), encoding="utf-8") as stream:
        import json

        assert json.load(stream)["input_files"] == len(expected)


def test_run_writes_images_tfrecords_and_report(preprocessed):
    import tensorflow as tf

    _, _, output, summary = preprocessed
    written = []
    for directory, _, names in os.walk(os.path.join(output, preprocess.IMAGES_DIR)):
        written += [os.path.join(directory, name) for name in names]
    assert len(written) == summary["status"][ACCEPTED]
    for path in written:
        split, label = path.split(os.sep)[-3:-1]
        assert split in splits.SPLITS and label in schema.LABELS
        assert Image.open(path).size == (256, 256)

    spec = preprocess.example_feature_spec()
    for split in splits.SPLITS:
        files = tf.io.gfile.glob(
            os.path.join(output, preprocess.TFRECORDS_DIR, f"{split}-*.tfrecord")
        )
        assert files, split
        examples = [
            tf.io.parse_single_example(record, spec) for record in tf.data.TFRecordDataset(files)
        ]
        assert len(examples) == summary["split"].get(split, 0)
        for example in examples:
            assert example["split"].numpy().decode() == split
            image = tf.io.decode_png(example["image/encoded"])
            assert image.shape == (256, 256, 3)
            assert example["label"].numpy() == schema.label_id(
                example["label/text"].numpy().decode()
            )

    assert os.path.exists(os.path.join(output, "report.md"))
    for plot in ("class_balance", "sizes", "rejects", "samples"):
        assert os.path.getsize(os.path.join(output, "plots", f"{plot}.png")) > 1000
    leftovers = [name for _, _, names in os.walk(output) for name in names if ".tmp" in name]
    assert leftovers == []


def test_cli_replaces_previous_outputs_and_passes_beam_options(preprocessed, tmp_path):
    _, _, output, _ = preprocessed
    small = tmp_path / "small"
    for label, seed in (("happy", 40), ("sad", 41)):
        (small / label).mkdir(parents=True)
        (small / label / "one.png").write_bytes(encode(photo(seed=seed), "PNG"))
    argv = ["preprocess", "--input", str(small), "--output", output, "--no-report"]
    assert cli.main(argv + ["--direct_running_mode=in_memory", "--resize-policy=crop"]) == 0
    rows = preprocess.read_manifest(output)
    assert [row["status"] for row in rows] == [ACCEPTED, ACCEPTED]
    images = [name for _, _, names in os.walk(os.path.join(output, "images")) for name in names]
    assert len(images) == 2  # the first run's images are gone
    assert not os.path.exists(os.path.join(output, "report.md"))


def test_cli_reports_a_wrong_input_in_one_line_and_keeps_previous_outputs(tmp_path, capsys):
    previous = tmp_path / "out" / preprocess.MANIFEST_FILE
    previous.parent.mkdir()
    previous.write_text("path,label\n")
    argv = ["preprocess", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert previous.exists()


def test_run_on_synthetic_faces(tmp_path):
    config = preprocess.PreprocessConfig(
        output=str(tmp_path), num_synthetic=6, write_images=False, report=False
    )
    summary = preprocess.run(dataclasses.replace(config, image_size=64))
    assert summary["input_files"] == 6
    assert summary["status"] == {ACCEPTED: 6}
    assert summary["label"] == {"happy": 3, "sad": 3}


def test_examples_are_what_tensorflow_writes():
    import tensorflow as tf

    image = np.zeros((64, 48, 3), np.uint8)
    clean = schema.CleanImage("in/sad/visage é.jpg", "sad", "ab" * 32, "test", image, 9, 8, "png")
    png = preprocess.encode_png(image)

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": bytes_feature(png),
                "image/format": bytes_feature(b"png"),
                "image/height": int_feature(64),
                "image/width": int_feature(48),
                "label": int_feature(0),
                "label/text": bytes_feature(b"sad"),
                "sha256": bytes_feature(("ab" * 32).encode()),
                "split": bytes_feature(b"test"),
                "filename": bytes_feature(clean.path.encode()),
            }
        )
    )
    assert tf.train.Example.FromString(preprocess.to_example(clean, png)) == expected


def damaged_corpus(root: str, count: int = 300) -> dict[str, tuple[bytes, bytes]]:
    """`count` files of every format, most mutilated as downloads and disks mutilate them.

    Returns {relative path: (content, the intact original)}.
    """
    rng = np.random.default_rng(7)
    formats = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    files = {}
    for index in range(count):
        original = encode(photo(int(rng.integers(40, 120)), 64, seed=index), formats[index % 6])
        data = bytearray(original)
        damage = index % 5
        if damage == 1:  # cut short anywhere
            data = data[: int(rng.integers(1, len(data)))]
        elif damage == 2:  # bytes flipped, header and body alike
            for position in rng.integers(0, len(data), 8):
                data[position] ^= int(rng.integers(1, 256))
        elif damage == 3:  # a tail of zeros, as a download that stopped writing
            start = int(rng.integers(len(data) // 4, len(data)))
            data[start:] = bytes(len(data) - start)
        elif damage == 4:  # random junk with an image's name
            data = bytearray(rng.bytes(int(rng.integers(0, 3000))))
        relative = f"{('happy', 'sad')[index % 2]}/file_{index:03d}.{formats[index % 6].lower()}"
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(bytes(data))
        files[relative] = bytes(data), original
    return files


def test_hundreds_of_damaged_files_each_get_one_verdict(tmp_path):
    root, output = str(tmp_path / "scraped"), str(tmp_path / "out")
    files = damaged_corpus(root)
    summary = preprocess.run(preprocess.PreprocessConfig(input=root, output=output, report=False))

    def cleaned(data):
        return imaging.clean_image_bytes(data)[0]

    rows = preprocess.read_manifest(output)
    assert sorted(relative(root, row["path"]) for row in rows) == sorted(files)
    assert summary["input_files"] == len(files)
    for row in rows:
        name = relative(root, row["path"])
        assert row["status"] in (ACCEPTED, REJECTED, DUPLICATE), name
        assert (row["reason"] in imaging.REASONS) == (row["status"] == REJECTED), name
        data, original = files[name]
        if data == original:
            assert row["status"] == ACCEPTED, name
        if row["status"] == ACCEPTED and name.endswith(".png"):  # CRCs: damage never passes
            assert np.array_equal(cleaned(data), cleaned(original)), name
    assert summary["status"][ACCEPTED] >= len(files) // 5
    assert summary["status"][REJECTED] >= len(files) // 5  # the junk, at least
