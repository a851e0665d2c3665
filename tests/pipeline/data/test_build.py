"""`happysad build`: the summary, reuse, one data job for every entry point, one-line errors."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline import cli, config, errors
from pipeline.data import build, job, splits, synthetic_faces
from tests.support import image_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LEFTOVERS = ("manifest.parts", "beam-temp", "incomplete", ".tmp")


def _seed_that_fills_every_split(num_images: int) -> int:
    for seed in range(1, 100):
        contents = [synthetic_faces.render_source_image(i, seed).data for i in range(num_images)]
        found = {splits.assign_split(hashlib.sha256(data).hexdigest()) for data in contents}
        if found == set(splits.SPLITS):
            return seed
    raise AssertionError("no seed fills every split")


def _synthetic(num_images: int = 16) -> config.Config:
    seed = _seed_that_fills_every_split(num_images)
    return config.replace(config.Config(), seed=seed, **{"data.num_images": num_images})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg, data_dir = _synthetic(), str(tmp_path_factory.mktemp("tfds"))
    return cfg, data_dir, build.run(cfg, data_dir=data_dir)


def _examples(dataset_dir: str) -> dict[str, tuple[int, bytes]]:
    """{sha256: (label, image bytes)} over every split of the dataset in `dataset_dir`."""
    found = {}
    builder = tfds.builder_from_directory(dataset_dir)
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            sha256 = example["image/sha256"].decode()
            assert splits.assign_split(sha256) == split
            found[sha256] = (int(example["label"]), example["image"].tobytes())
    return found


def _leftovers(folder) -> list[str]:
    return [
        os.path.join(directory, name)
        for directory, folders, names in os.walk(folder)
        for name in folders + names
        if any(part in name for part in LEFTOVERS)
    ]


def test_run_builds_and_describes_the_dataset(built):
    cfg, data_dir, summary = built
    name = f"synthetic_16_seed{cfg.seed}"
    assert (summary["name"], summary["config"], summary["version"]) == (
        "happysad_tfds",
        name,
        "2.0.0",
    )
    assert summary["data_dir"] == data_dir
    assert summary["dataset_dir"] == os.path.join(data_dir, "happysad_tfds", name, "2.0.0")
    assert os.path.isfile(os.path.join(summary["dataset_dir"], "dataset_info.json"))
    assert summary["report"] == os.path.join(summary["dataset_dir"], "report.md")
    assert os.path.isfile(summary["report"])
    assert summary["reused"] is False and summary["cleaning"] == {"accepted": 16}
    counted = summary["splits"]
    assert sum(split["num_examples"] for split in counted.values()) == 16
    assert sum(split["happy"] for split in counted.values()) == 8
    for split in counted.values():
        assert split["happy"] + split["sad"] == split["num_examples"]
    labels = [label for label, _ in _examples(summary["dataset_dir"]).values()]
    assert sum(labels) == 8
    assert _leftovers(data_dir) == []


def test_a_second_run_reuses_and_an_overwrite_rebuilds_the_same_examples(built):
    cfg, data_dir, summary = built
    before = _examples(summary["dataset_dir"])
    again = build.run(cfg, data_dir=data_dir)
    assert again["reused"] is True and again["splits"] == summary["splits"]
    rebuilt = build.run(cfg, data_dir=data_dir, overwrite=True)
    assert rebuilt["reused"] is False
    after = _examples(rebuilt["dataset_dir"])
    assert before.keys() == after.keys()
    for sha256, (label, image) in before.items():
        assert after[sha256][0] == label
        assert np.array_equal(
            np.frombuffer(after[sha256][1], np.uint8), np.frombuffer(image, np.uint8)
        )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-images", "1"], "at least 2"),
        (["--input", "/no/such/photos"], "/no/such/photos does not exist"),
        (["--data-dir", "{tmp}/tfds [1]"], "glob patterns"),
    ],
)
def test_options_that_do_not_fit_are_one_line_errors(tmp_path, capsys, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    if "--data-dir" not in flags:
        flags += ["--data-dir", str(tmp_path / "tfds")]
    assert cli.main(["build", "--num-images", "8", *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert os.listdir(tmp_path) == []


def test_a_folder_without_label_folders_is_a_user_error(tmp_path):
    (tmp_path / "photos").mkdir()
    cfg = config.replace(config.Config(), **{"data.input": str(tmp_path / "photos")})
    with pytest.raises(errors.UserError, match="has no sad/ sub-folder"):
        build.run(cfg, data_dir=str(tmp_path / "tfds"))


def test_a_label_without_usable_images_is_one_sentence_and_leaves_nothing(tmp_path, capsys):
    photos = tmp_path / "photos"
    image_files.write_files(
        str(photos),
        {
            "happy/a.jpg": image_files.encode(image_files.photo(seed=1), "JPEG"),
            "sad/notes.txt": b"not a face",
            "sad/scan.ppm": image_files.ppm(),
        },
    )
    data_dir = tmp_path / "tfds"
    argv = ["build", "--input", str(photos), "--data-dir", str(data_dir)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error = err.strip().splitlines()[-1]
    assert error.startswith(f"happysad build: error: no usable sad image in {photos}/sad/")
    assert "[while running" not in error
    assert _leftovers(data_dir) == []
    assert not [name for _, _, names in os.walk(data_dir) for name in names if "tfrecord" in name]


# ---------------------------------------------------------------------------------------------
# One data job: `tfds build`, `happysad build` and `happysad preprocess` agree.


def _tfds_command() -> list[str]:
    found = shutil.which("tfds", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("the tfds command is not installed beside this Python")
    return [found]


@pytest.fixture(scope="module")
def one_folder_three_ways(tmp_path_factory):
    base = tmp_path_factory.mktemp("three_ways")
    photos = base / "my photos"
    image_files.write_dataset_faces(str(photos), per_label=4)
    extra = {
        "happy/copy.jpg": (base / "my photos" / "happy" / "happy_000.jpg").read_bytes(),
        "sad/notes.txt": b"not a face",
        "sad/scan.ppm": image_files.ppm(),
    }
    image_files.write_files(str(photos), extra)
    outputs = {}
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    command = _tfds_command() + ["build", "happysad_tfds", "--imports", "happysad_tfds"]
    command += ["--config", "folder", "--manual_dir", str(photos), "--data_dir", str(base / "tfds")]
    subprocess.run(command, check=True, capture_output=True, env=environment, timeout=600)
    outputs["tfds build"] = str(base / "tfds" / "happysad_tfds" / "folder" / "2.0.0")
    argv = ["build", "--input", str(photos), "--data-dir", str(base / "happysad")]
    assert cli.main(argv) == 0
    outputs["happysad build"] = str(base / "happysad" / "happysad_tfds" / "folder" / "2.0.0")
    assert cli.main(["preprocess", "--input", str(photos), "--output", str(base / "dry")]) == 0
    outputs["happysad preprocess"] = str(base / "dry")
    return photos, outputs


def test_tfds_build_happysad_build_and_preprocess_write_the_same_manifest(one_folder_three_ways):
    photos, outputs = one_folder_three_ways
    manifests = {}
    for way, output in outputs.items():
        with open(os.path.join(output, "manifest.csv"), "rb") as handle:
            manifests[way] = handle.read()
    assert len(set(manifests.values())) == 1, sorted(manifests)
    rows = job.read_manifest(outputs["happysad preprocess"])
    reasons = {os.path.relpath(row["path"], photos): row["reason"] for row in rows}
    assert reasons["sad/scan.ppm"] == "unsupported_format"
    assert reasons["sad/notes.txt"] == "not_an_image"
    assert {row["status"] for row in rows} == {"accepted", "rejected", "duplicate"}


def test_tfds_build_and_happysad_build_make_the_same_dataset(one_folder_three_ways):
    _, outputs = one_folder_three_ways
    assert _examples(outputs["tfds build"]) == _examples(outputs["happysad build"])
