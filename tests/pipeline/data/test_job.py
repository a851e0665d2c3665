"""pipeline.data.job: exactly one manifest row per input file, the accepted images, the outputs.

The verdicts asserted here are those any correct transform gives (accepted formats: JPEG,
PNG, GIF, BMP, WebP; TIFF and Netpbm are unsupported), never the stand-in's pixel values.
"""

import collections
import hashlib
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline, util

from pipeline import config
from pipeline.data import beam_options, job, schema, splits, transform, validate
from tests.support import image_files

ACCEPTED, REJECTED, DUPLICATE = validate.ACCEPTED, validate.REJECTED, validate.DUPLICATE
DATA = config.DataConfig()
OUTPUTS = ("manifest.csv", "summary.json", "report.md", "plots")

# ---------------------------------------------------------------------------------------------
# CleanImages on sources that carry their bytes (as the synthetic renderer's do).


def run_clean_images(sources, data=DATA, check_accepted=None, check_rows=None):
    with test_pipeline.TestPipeline() as pipeline:
        cleaned = pipeline | beam.Create(sources, reshuffle=False) | job.CleanImages(data)
        util.assert_that(cleaned["accepted"], check_accepted, label="CheckAccepted")
        util.assert_that(cleaned["manifest"], check_rows, label="CheckManifest")


def test_clean_images_both_outputs():
    good = image_files.encode(image_files.photo(seed=1), "PNG")
    other = image_files.encode(image_files.photo(seed=2), "JPEG")
    sources = [
        schema.SourceImage("mem/happy/good.png", "happy", good),
        schema.SourceImage("mem/happy/good_again.png", "happy", good),
        schema.SourceImage("mem/sad/other.jpg", "sad", other),
        schema.SourceImage("mem/sad/empty.jpg", "sad", b""),
        schema.SourceImage("mem/sad/cut.jpg", "sad", other[:500]),
        schema.SourceImage("mem/sad/words.jpg", "sad", b"not a picture"),
        schema.SourceImage("mem/sad/caf\\xe9.jpg", "sad", problem="bad_file_name"),
    ]

    def check_accepted(images):
        assert sorted(image.path for image in images) == ["mem/happy/good.png", "mem/sad/other.jpg"]
        for image in images:
            assert image.image.shape == (256, 256, 3) and image.image.dtype == np.uint8
            data = good if image.label == "happy" else other
            assert image.sha256 == hashlib.sha256(data).hexdigest()
            assert image.split == splits.assign_split(image.sha256, DATA.split_fractions)

    def check_rows(rows):
        verdicts = {row["path"]: (row["status"], row["reason"]) for row in rows}
        assert verdicts == {
            "mem/happy/good.png": (ACCEPTED, ""),
            "mem/happy/good_again.png": (DUPLICATE, ""),
            "mem/sad/other.jpg": (ACCEPTED, ""),
            "mem/sad/empty.jpg": (REJECTED, "empty"),
            "mem/sad/cut.jpg": (REJECTED, "corrupt"),
            "mem/sad/words.jpg": (REJECTED, "not_an_image"),
            "mem/sad/caf\\xe9.jpg": (REJECTED, "bad_file_name"),
        }
        assert len(rows) == len(sources)
        for row in rows:
            assert tuple(row) == job.MANIFEST_COLUMNS
            assert (row["reason"] in validate.REASONS) == (row["status"] == REJECTED)
        by_path = {row["path"]: row for row in rows}
        copy, original = by_path["mem/happy/good_again.png"], by_path["mem/happy/good.png"]
        assert copy["duplicate_of"] == "mem/happy/good.png"
        assert copy["split"] == original["split"] and copy["sha256"] == original["sha256"]
        assert original["width"] == 96 and original["height"] == 80 and original["format"] == "png"

    run_clean_images(sources, check_accepted=check_accepted, check_rows=check_rows)


def test_clean_images_on_nothing():
    run_clean_images([], check_accepted=util.is_empty(), check_rows=util.is_empty())


def test_clean_images_applies_the_transform_options():
    wide = image_files.encode(image_files.photo(200, 100), "PNG")
    square = image_files.encode(image_files.photo(100, 100), "PNG")
    sources = [
        schema.SourceImage("mem/happy/wide.png", "happy", wide),
        schema.SourceImage("mem/sad/square.png", "sad", square),
    ]
    transform_options = config.TransformConfig(
        image_size=32, resize_policy="pad", max_pixels=15_000
    )
    data = config.DataConfig(transform=transform_options, max_file_bytes=len(wide) + len(square))

    def check_accepted(images):
        (image,) = images
        assert image.path == "mem/sad/square.png" and image.image.shape == (32, 32, 3)

    def check_rows(rows):
        assert sorted((row["path"], row["reason"]) for row in rows) == [
            ("mem/happy/wide.png", "too_large"),  # 20,000 pixels: over the budget
            ("mem/sad/square.png", ""),
        ]

    run_clean_images(sources, data, check_accepted, check_rows)


def test_copies_under_one_label_are_duplicates_and_under_two_conflicts():
    happy = [("h/b.jpg", "happy"), ("h/a(1).jpg", "happy"), ("h/a.jpg", "happy")]
    assert job.find_copies("s", happy) == [
        (("h/b.jpg", "s"), (DUPLICATE, "h/a.jpg")),
        (("h/a(1).jpg", "s"), (DUPLICATE, "h/a.jpg")),
    ]
    assert job.find_copies("s", [("h/a.jpg", "happy")]) == []
    conflict = job.find_copies("s", [("h/a.jpg", "happy"), ("s/a.jpg", "sad")])
    assert sorted(conflict) == [
        (("h/a.jpg", "s"), (validate.LABEL_CONFLICT, "s/a.jpg")),
        (("s/a.jpg", "s"), (validate.LABEL_CONFLICT, "h/a.jpg")),
    ]


# ---------------------------------------------------------------------------------------------
# WriteManifest.


def _row(path: str, label: str = "happy") -> dict:
    return {column: "" for column in job.MANIFEST_COLUMNS} | {"path": path, "label": label}


@pytest.mark.parametrize("count", [0, 1, 40])
def test_write_manifest_sorts_by_path_and_leaves_no_parts(tmp_path, count):
    names = ["in/happy/a, b.jpg", 'in/sad/"quoted".png', "in/sad/line\nbreak.jpg", "in/é.jpg"]
    paths = (names + [f"in/happy/{index:03d}.jpg" for index in range(count)])[:count]
    output = str(tmp_path / "out [1]")
    with test_pipeline.TestPipeline() as pipeline:
        _ = (
            pipeline
            | beam.Create([_row(path) for path in reversed(paths)])
            | job.WriteManifest(output, shards=3)
        )
    rows = job.read_manifest(output)
    assert [row["path"] for row in rows] == sorted(paths)
    assert os.listdir(output) == ["manifest.csv"]


# ---------------------------------------------------------------------------------------------
# The whole job on a scraped-looking folder, twice.


def _make_awkward_folder(root: str) -> dict[str, tuple[str, str]]:
    """The folder on disk; returns {path relative to root: (status, reason)}."""
    files = image_files.awkward_files()
    image_files.write_files(root, files)
    expected = {relative: (status, reason) for relative, (_, status, reason) in files.items()}
    os.symlink(os.path.join(root, "nowhere.jpg"), os.path.join(root, "sad", "dead_link.jpg"))
    expected["sad/dead_link.jpg"] = (REJECTED, "unreadable")
    outside = os.path.join(os.path.dirname(root), "outside")
    image_files.write_files(
        outside,
        {
            "linked.jpg": image_files.encode(image_files.photo(seed=30), "JPEG"),
            "folder/one.png": image_files.encode(image_files.photo(seed=31), "PNG"),
            "folder/two.webp": image_files.encode(image_files.photo(seed=32), "WEBP"),
        },
    )
    os.symlink(os.path.join(outside, "linked.jpg"), os.path.join(root, "sad", "linked.jpg"))
    expected["sad/linked.jpg"] = (ACCEPTED, "")
    os.symlink(os.path.join(outside, "folder"), os.path.join(root, "happy", "linked folder"))
    expected["happy/linked folder/one.png"] = (ACCEPTED, "")
    expected["happy/linked folder/two.webp"] = (ACCEPTED, "")
    os.symlink(os.path.join(root, "happy"), os.path.join(outside, "folder", "loop"))
    undecodable = os.path.join(os.fsencode(root), b"sad", b"smile \xff.jpg")
    with open(undecodable, "wb") as stream:  # a fine photo, under a name that is not UTF-8
        stream.write(image_files.encode(image_files.photo(seed=33), "JPEG"))
    expected["sad/smile \\xff.jpg"] = (REJECTED, "bad_file_name")
    return expected


def run_job(data: config.DataConfig, output: str, beam_args=(), accepted=None) -> None:
    """The DataJob on the local runner, as `happysad preprocess` runs it.

    `accepted`: if given, the paths the job's accepted CleanImages must have.
    """
    options = beam_options.from_args(beam_args)
    with beam.Pipeline(runner=beam_options.runner_for(options), options=options) as root:
        images = root | job.DataJob(data, 0, output)
        if accepted is not None:
            paths = images | beam.Map(lambda image: image.path)
            util.assert_that(paths, util.equal_to(accepted))


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """The folder, its expected verdicts, and the outputs of two runs of the job on it.

    The first run also checks that the accepted images are exactly the accepted files.
    """
    base = tmp_path_factory.mktemp("awkward")
    root = str(base / "faces")
    expected = _make_awkward_folder(root)
    data = config.DataConfig(input=root)
    accepted = [
        os.path.join(root, path) for path, (status, _) in expected.items() if status == ACCEPTED
    ]
    outputs = [str(base / "clean [run 1]"), str(base / "clean [run 2]")]
    run_job(data, outputs[0], accepted=accepted)
    run_job(data, outputs[1], ["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    return root, expected, outputs


def _relative(root: str, row: dict) -> str:
    return os.path.relpath(row["path"], root)


def test_every_file_gets_exactly_one_row_with_its_verdict(awkward):
    root, expected, outputs = awkward
    rows = job.read_manifest(outputs[0])
    paths = [_relative(root, row) for row in rows]
    assert sorted(paths) == sorted(expected) and len(paths) == len(set(paths))
    verdicts = {_relative(root, row): (row["status"], row["reason"]) for row in rows}
    assert verdicts == expected


def test_a_label_conflict_names_a_copy_under_the_other_label(awkward):
    root, _, outputs = awkward
    details = {
        _relative(root, row): row["detail"]
        for row in job.read_manifest(outputs[0])
        if row["reason"] == "label_conflict"
    }
    happy_copy = os.path.join(root, "happy", "both.png")
    assert details == {
        "happy/both.png": f"the same bytes are also {os.path.join(root, 'sad', 'both.png')}",
        "sad/both.png": f"the same bytes are also {happy_copy}",
        "sad/both (copy).png": f"the same bytes are also {happy_copy}",
    }


def test_rows_describe_the_original_file(awkward):
    root, _, outputs = awkward
    rows = {_relative(root, row): row for row in job.read_manifest(outputs[0])}
    assert rows["happy/smile(1).jpg"]["duplicate_of"] == os.path.join(root, "happy/smile.jpg")
    assert (rows["happy/rotated.jpg"]["width"], rows["happy/rotated.jpg"]["height"]) == (
        "80",
        "120",
    )
    assert rows["happy/bomb.png"]["width"] == "30000"  # read from the header, never decoded
    assert rows["happy/actually_a_jpeg.png"]["format"] == "jpeg"  # by content, not by name
    assert rows["happy/gray.png"]["grayscale"] == "True"
    assert rows["sad/frown.jpg"]["grayscale"] == "False"
    for row in rows.values():
        if row["status"] == ACCEPTED:
            assert row["split"] in splits.SPLITS and len(row["sha256"]) == 64
        elif row["status"] == REJECTED:
            assert row["split"] == ""


def test_the_manifest_is_sorted_and_the_same_on_every_run(awkward):
    root, _, outputs = awkward
    paths = [row["path"] for row in job.read_manifest(outputs[0])]
    assert paths == sorted(paths)
    first, second = (open(os.path.join(output, "manifest.csv"), "rb").read() for output in outputs)
    assert first == second  # two workers, another order of work: the same bytes


def test_summary_counts_the_rows_and_is_written_last(awkward):
    _, expected, outputs = awkward
    output = outputs[0]
    with open(os.path.join(output, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["input_files"] == len(expected)
    statuses = collections.Counter(status for status, _ in expected.values())
    assert summary["status"] == dict(sorted(statuses.items()))
    reasons = collections.Counter(reason for _, reason in expected.values() if reason)
    assert summary["reason"] == dict(sorted(reasons.items()))
    assert sum(summary["split"].values()) == statuses[ACCEPTED]
    assert summary["transform"] == config.to_dict(DATA.transform)
    written = [
        os.path.join(directory, name)
        for directory, _, names in os.walk(output)
        for name in names
        if name != "summary.json"
    ]
    last = os.stat(os.path.join(output, "summary.json")).st_mtime_ns
    assert written and all(os.stat(path).st_mtime_ns <= last for path in written)


def test_the_report_and_nothing_else_is_written(awkward):
    _, _, outputs = awkward
    for output in outputs:
        assert sorted(os.listdir(output)) == sorted(OUTPUTS)
        assert sorted(os.listdir(os.path.join(output, "plots"))) == [
            "class_balance.png",
            "rejects.png",
            "samples.png",
            "sizes.png",
        ]
        with open(os.path.join(output, "report.md"), encoding="utf-8") as handle:
            text = handle.read()
        for reason in ("bad_file_name", "unsupported_format", "label_conflict", "corrupt"):
            assert f"| {reason} |" in text


def test_hundreds_of_damaged_files_each_get_one_verdict(tmp_path):
    """Files cut short, bit-flipped, zero-filled or replaced by junk: one row each."""
    rng = np.random.default_rng(7)
    formats = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    files, originals = {}, {}
    for index in range(150):
        image_format = formats[index % len(formats)]
        width = int(rng.integers(40, 120))
        original = image_files.encode(image_files.photo(width, 64, seed=index), image_format)
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
        relative = f"{('happy', 'sad')[index % 2]}/file_{index:03d}.{image_format.lower()}"
        files[relative], originals[relative] = bytes(data), original
    root, output = str(tmp_path / "scraped"), str(tmp_path / "out")
    image_files.write_files(root, files)
    run_job(config.DataConfig(input=root), output)

    rows = job.read_manifest(output)
    assert sorted(_relative(root, row) for row in rows) == sorted(files)
    transformer = transform.Transformer(DATA.transform)
    for row in rows:
        name = _relative(root, row)
        assert row["status"] in (ACCEPTED, REJECTED, DUPLICATE), name
        assert (row["reason"] in validate.REASONS) == (row["status"] == REJECTED), name
        if files[name] == originals[name]:
            assert row["status"] == ACCEPTED, name
        if row["status"] == ACCEPTED and name.endswith(".png"):  # CRCs: damage never passes
            fine = transformer(originals[name]).pixels
            np.testing.assert_array_equal(transformer(files[name]).pixels, fine, err_msg=name)
    statuses = collections.Counter(row["status"] for row in rows)
    assert statuses[ACCEPTED] >= len(files) // 5 and statuses[REJECTED] >= len(files) // 5


def test_the_driver_builds_the_job_without_tensorflow(tmp_path):
    # TensorFlow runs in the workers (THE transform); a driver that imported it as well would
    # hold its ~600 MB beside theirs for the whole job.
    code = (
        "import sys\n"
        "import apache_beam as beam\n"
        "from pipeline import config\n"
        "from pipeline.data import job\n"
        "pipeline = beam.Pipeline()\n"
        "for data in (config.DataConfig(), config.DataConfig(input=sys.argv[1])):\n"
        "    _ = pipeline | f'Job{data.input}' >> job.DataJob(data, 0, sys.argv[1])\n"
        "assert 'tensorflow' not in sys.modules, 'the driver imported TensorFlow'\n"
    )
    for label in ("happy", "sad"):
        (tmp_path / label).mkdir()
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True)
