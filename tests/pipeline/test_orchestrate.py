"""`happysad run`: build → train → evaluate → export → push into one work directory.

Cached reruns, lineage, the blessing gate, and a stage killed by a signal: reported in one
line, no record left, and the same command resumes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from pipeline import cli, config, demo, errors, orchestrate, stage_records
from pipeline.data import job

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("build", "train", "evaluate", "export", "push")


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


# The seed recipe shrunk to seconds; the bar lowered so that one epoch is blessed.
SMALL = {
    "train.epochs": 1,
    "train.batch_size": 8,
    "train.model.filters": 4,
    "train.model.dense_units": 8,
    "train.xla": "off",
    "evaluate.min_accuracy": 0.0,
    "evaluate.min_auc": 0.0,
}


def _config(faces, **changes) -> config.Config:
    return config.replace(config.seed(), **{"data.input": str(faces), **SMALL, **changes})


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    _write_faces(tmp_path / "faces")
    cfg = _config(tmp_path / "faces")
    workdir = str(tmp_path / "W")
    return tmp_path, cfg, workdir, orchestrate.run(cfg, workdir=workdir)


@pytest.mark.slow
def test_every_stage_leaves_its_outputs_and_record(first_run):
    _, cfg, workdir, summary = first_run
    folders = set(os.listdir(workdir))
    assert {*STAGES, "serving"} <= folders and "preprocess" not in folders
    for stage in STAGES:
        record = stage_records.read_record(os.path.join(workdir, stage))
        assert record is not None and record.stage == stage
    dataset_dir = summary["build"]["dataset_dir"]
    assert dataset_dir.startswith(os.path.join(workdir, "build"))
    assert summary["build"]["report"] == os.path.join(dataset_dir, "report.md")
    rows = job.read_manifest(dataset_dir)
    assert len(rows) == 41 and [row["reason"] for row in rows].count("not_an_image") == 1
    assert os.path.isfile(os.path.join(workdir, "train", "model.keras"))
    for name in ("metrics.json", "blessing.json", "confusion_matrix.png"):
        assert os.path.isfile(os.path.join(workdir, "evaluate", name)), name
    pushed = os.path.join(orchestrate.serving_base(cfg, workdir), "1")
    assert summary["push"]["path"] == pushed
    assert os.path.isfile(os.path.join(pushed, "saved_model.pb"))


@pytest.mark.slow
def test_the_served_model_traces_back_to_its_data_and_parameters(first_run):
    _, cfg, workdir, summary = first_run
    card_path = os.path.join(summary["push"]["path"], "assets", "model_card.json")
    with open(card_path, encoding="utf-8") as handle:
        card = json.load(handle)
    lineage = card["lineage"]
    assert lineage["recipe"] == "seed"
    build = lineage["build"]
    assert build["outputs"]["name"] == "happysad_tfds"
    assert build["outputs"]["config"] == "folder"
    assert build["outputs"]["version"] == summary["build"]["version"]
    assert build["inputs"]["images"]["files"] == 41
    assert build["parameters"]["data"]["input"] == cfg.data.input
    assert build["code_version"]["sources_sha256"]
    trained = config.from_dict(config.TrainConfig, lineage["train"]["parameters"]["train"])
    assert trained == cfg.train and lineage["train"]["parameters"]["seed"] == cfg.seed
    assert config.from_dict(config.Config, card["config"]) == cfg


@pytest.mark.slow
def test_the_pushed_model_is_served_and_answers_happysad_predict(first_run, capfd, monkeypatch):
    """End to end, as `make demo` does it: `happysad serve` the push, `happysad predict`."""
    _, _, workdir, _ = first_run
    monkeypatch.setenv("PYTHONPATH", ROOT)
    with socket.socket() as probe:  # a free port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    images = demo.sample_images(workdir)
    assert {os.path.basename(os.path.dirname(path)) for path in images} == {"happy", "sad"}
    assert demo.main(["--workdir", workdir, "--port", str(port)]) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    answers = [json.loads(line) for line in lines]
    assert len(answers) == len(images)
    for answer in answers:
        assert answer["label"] in ("happy", "sad") and 0.0 <= answer["probability"] <= 1.0


@pytest.mark.slow
def test_a_rerun_skips_every_stage(first_run, caplog):
    _, cfg, workdir, summary = first_run
    caplog.set_level("INFO")
    again = orchestrate.run(cfg, workdir=workdir)
    skipped = [line for line in caplog.messages if "up to date" in line]
    assert len(skipped) == len(STAGES)
    assert again["push"]["path"] == summary["push"]["path"]


@pytest.mark.slow
def test_an_unblessed_model_is_exported_but_not_pushed(first_run, caplog):
    tmp_path, _, workdir, _ = first_run
    strict = _config(tmp_path / "faces", **{"evaluate.min_accuracy": 1.01})
    caplog.set_level("INFO")
    with pytest.raises(errors.UserError, match="not blessed"):
        orchestrate.run(strict, workdir=workdir)
    skipped = [line.split("]")[0][1:] for line in caplog.messages if "up to date" in line]
    assert skipped == ["build", "train"]  # only the bar changed
    assert os.listdir(orchestrate.serving_base(strict, workdir)) == ["1"]  # nothing new
    assert os.path.isdir(os.path.join(workdir, "export", "happysad", "1"))


@pytest.mark.slow
def test_changed_input_reruns_every_stage_and_pushes_a_new_version(first_run, caplog):
    tmp_path, cfg, workdir, _ = first_run
    (tmp_path / "faces" / "happy" / "0.png").unlink()
    caplog.set_level("INFO")
    changed = orchestrate.run(cfg, workdir=workdir)
    assert not [line for line in caplog.messages if "up to date" in line]
    assert changed["build"]["cleaning"]["accepted"] == 39
    assert changed["push"]["version"] == 2  # a new version beside the first, never over it
    # (--force reruns stages whose record matches: test_stage_records covers it.)


def test_missing_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["run", "--workdir", str(tmp_path / "W"), "--input", str(tmp_path / "nope")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not os.path.exists(tmp_path / "W")


# ---------------------------------------------------------------------------------------------
# A stage killed by a signal (the kernel's OOM killer, a crash in native code).


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def _is_stage_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"multiprocessing.spawn" in handle.read()
    except OSError:
        return False


def _epochs_done(workdir: str) -> int:
    try:
        with open(os.path.join(workdir, "train", "checkpoints", "state.json")) as handle:
            return json.load(handle)["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the stage in /proc")
def test_a_killed_stage_is_one_line_leaves_no_record_and_the_rerun_resumes(tmp_path):
    _write_faces(tmp_path / "faces")
    workdir = str(tmp_path / "W")
    argv = ["run", "--workdir", workdir, "--input", str(tmp_path / "faces"), "--recipe", "seed"]
    argv += ["--epochs", "8", "--batch-size", "8", "--filters", "4", "--dense-units", "8"]
    argv += ["--xla", "off", "--min-accuracy", "0", "--min-auc", "0"]
    environment = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + 300
    while command.poll() is None and time.monotonic() < deadline:
        if _epochs_done(workdir) >= 1:  # the train stage is past its first epoch: kill it
            stages = [pid for pid in _children(command.pid) if _is_stage_process(pid)]
            if stages:
                killed = stages[0]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.02)
    _, err = command.communicate(timeout=300)
    assert killed is not None, f"the train stage was never seen running: {err[-2000:]}"
    assert command.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("happysad run: error: stage train died of SIGKILL (signal 9)")
    assert stage_records.read_record(os.path.join(workdir, "build")) is not None
    assert stage_records.read_record(os.path.join(workdir, "train")) is None
    epochs_before = _epochs_done(workdir)
    assert 1 <= epochs_before < 8

    assert cli.main(argv) == 0  # the same command again
    record = stage_records.read_record(os.path.join(workdir, "train"))
    assert record.outputs["resumed_from_epoch"] == epochs_before
    assert record.outputs["epochs_completed"] == 8
    assert stage_records.read_record(os.path.join(workdir, "push")) is not None
