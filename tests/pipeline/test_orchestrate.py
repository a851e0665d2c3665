"""`happysad run`: every stage into one work directory, cached reruns, lineage, refusals."""

import json
import os

import cv2
import numpy as np
import pytest

from pipeline import cli, errors, orchestrate, stage_records

STAGES = ("preprocess", "build", "train", "evaluate", "export", "push")


def _write_faces(root, per_label=20):
    """Bright discs are happy, dark ones sad: learnable in one epoch, enough for three splits."""
    rng = np.random.default_rng(0)
    for label, shift in (("happy", 80), ("sad", -80)):
        os.makedirs(root / label)
        for index in range(per_label):
            image = rng.normal(128, 25, (48 + index, 56, 3))
            rows, columns = np.mgrid[: image.shape[0], :56]
            image[(rows - image.shape[0] / 2) ** 2 + (columns - 28) ** 2 < 18**2] += shift
            cv2.imwrite(str(root / label / f"{index}.png"), np.clip(image, 0, 255).astype(np.uint8))
    (root / "sad" / "notes.txt").write_text("not an image")


def _config(tmp_path, **overrides):
    values = dict(
        workdir=str(tmp_path / "W"),
        input=str(tmp_path / "faces"),
        recipe="seed",
        epochs=1,
        batch_size=8,
        min_accuracy=0.0,
    )
    values.update(overrides)
    return orchestrate.RunConfig(**values)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    _write_faces(tmp_path / "faces")
    config = _config(tmp_path)
    return tmp_path, config, orchestrate.run(config)


def test_every_stage_leaves_its_outputs_and_record(first_run):
    tmp_path, config, summary = first_run
    workdir = tmp_path / "W"
    for stage in STAGES:
        record = stage_records.read_record(str(workdir / stage))
        assert record is not None and record.stage == stage
    assert summary["preprocess"]["input_files"] == 41
    assert summary["preprocess"]["status"]["rejected"] == 1
    assert (workdir / "preprocess" / "report.md").is_file()
    assert (workdir / "train" / "model.keras").is_file()
    assert (workdir / "evaluate" / "metrics.json").is_file()
    assert (workdir / "evaluate" / "confusion_matrix.png").is_file()
    pushed = workdir / "serving" / "happysad" / "1"
    assert summary["push"]["path"] == str(pushed)
    assert (pushed / "saved_model.pb").is_file()


def test_the_served_model_traces_back_to_its_data_and_parameters(first_run):
    tmp_path, config, summary = first_run
    card_path = tmp_path / "W" / "serving" / "happysad" / "1" / "assets" / "model_card.json"
    lineage = json.loads(card_path.read_text())["lineage"]
    assert lineage["build"]["outputs"]["name"] == "happysad_tfds"
    assert lineage["build"]["outputs"]["config"].startswith("folder")
    assert lineage["build"]["outputs"]["version"] == summary["build"]["version"]
    assert lineage["preprocess"]["outputs"]["input_files"] == 41
    assert lineage["preprocess"]["inputs"]["images"]["files"] == 41
    assert lineage["train"]["parameters"]["model"] == "seed_cnn"
    assert lineage["train"]["parameters"]["epochs"] == 1


def test_a_rerun_skips_every_stage_and_force_reruns_them(first_run, caplog):
    tmp_path, config, summary = first_run
    caplog.set_level("INFO")
    again = orchestrate.run(config)
    skipped = [line for line in caplog.messages if "up to date" in line]
    assert len(skipped) == len(STAGES)
    assert again["push"]["path"] == summary["push"]["path"]

    (tmp_path / "faces" / "happy" / "0.png").unlink()  # the input changed: everything reruns
    caplog.clear()
    changed = orchestrate.run(config)
    assert not [line for line in caplog.messages if "up to date" in line]
    assert changed["preprocess"]["input_files"] == 40
    assert changed["push"]["version"] == 2  # a new version beside the first, never over it

    caplog.clear()
    forced = orchestrate.run(_config(tmp_path, force=True))
    assert not [line for line in caplog.messages if "up to date" in line]
    assert forced["push"]["version"] == 3


def test_an_unblessed_model_is_not_pushed(first_run):
    tmp_path, config, _ = first_run
    strict = _config(tmp_path, workdir=str(tmp_path / "strict"), min_accuracy=1.01)
    with pytest.raises(errors.UserError, match="not blessed"):
        orchestrate.run(strict)
    assert not os.path.exists(orchestrate.serving_base(strict))
    assert os.path.isdir(os.path.join(strict.workdir, "export", "happysad", "1"))


def test_missing_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["run", "--workdir", str(tmp_path / "W"), "--input", str(tmp_path / "nope")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
