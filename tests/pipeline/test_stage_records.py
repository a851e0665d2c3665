"""TFX-style stage records: fingerprints, caching, forced reruns."""

import json
import os

import pytest

from pipeline import artifacts, stage_records
from tests.support import ram_filesystem


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def test_fingerprint_tracks_content_names_and_membership(tmp_path):
    root = str(tmp_path / "data")
    _write(f"{root}/happy/a.jpg", "a")
    _write(f"{root}/sad/b.jpg", "b")
    first = stage_records.fingerprint(root)
    assert first["files"] == 2
    assert stage_records.fingerprint(root) == first
    _write(f"{root}/record.json", "{}")  # a stage's own record is not content
    assert stage_records.fingerprint(root)["sha256"] == first["sha256"]
    _write(f"{root}/sad/b.jpg", "B")
    edited = stage_records.fingerprint(root)["sha256"]
    assert edited != first["sha256"]
    os.rename(f"{root}/sad/b.jpg", f"{root}/sad/c.jpg")
    assert stage_records.fingerprint(root)["sha256"] != edited
    file_print = stage_records.fingerprint(f"{root}/happy/a.jpg")
    assert file_print["files"] == 1 and len(file_print["sha256"]) == 64


def test_fingerprint_of_a_folder_as_users_have_them(tmp_path):
    """Brackets in the name, a non-UTF-8 file name, a linked folder, a loop, a dead link."""
    root = str(tmp_path / "photos [1]")
    _write(f"{root}/happy/a.jpg", "a")
    with open(os.path.join(os.fsencode(root), b"happy", b"caf\xe9.jpg"), "wb") as handle:
        handle.write(b"e")
    _write(str(tmp_path / "more" / "b.jpg"), "b")
    os.symlink(tmp_path / "more", f"{root}/happy/more")
    os.symlink(root, str(tmp_path / "more" / "loop"))
    os.symlink(str(tmp_path / "nowhere.jpg"), f"{root}/happy/dead.jpg")
    first = stage_records.fingerprint(root)
    assert first["files"] == 3
    _write(str(tmp_path / "more" / "b.jpg"), "B")  # a linked file is content too
    assert stage_records.fingerprint(root)["sha256"] != first["sha256"]


def test_fingerprint_of_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        stage_records.fingerprint(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        stage_records.fingerprint(ram_filesystem.new_base("nope"))


def test_fingerprint_of_an_object_store_folder():
    root = ram_filesystem.new_base("photos")
    for name, content in (("happy/a.jpg", "a"), ("sad/b.jpg", "b")):
        artifacts.write_text(f"{root}/{name}", content)
    first = stage_records.fingerprint(root)
    assert first["files"] == 2
    artifacts.write_text(f"{root}/sad/b.jpg", "B")
    assert stage_records.fingerprint(root)["sha256"] != first["sha256"]


def test_runner_caches_until_inputs_or_parameters_change(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("v1")
    messages, calls = [], []
    runner = stage_records.StageRunner(str(tmp_path / "W"), report=messages.append)

    def execute(stage_dir):
        calls.append(stage_dir)
        _write(os.path.join(stage_dir, "out.txt"), source.read_text())
        return {"out": os.path.join(stage_dir, "out.txt")}

    outputs = runner.run("copy", {"n": (1, 2)}, {"source": str(source)}, execute)
    assert len(calls) == 1 and open(outputs["out"]).read() == "v1"
    assert runner.run("copy", {"n": (1, 2)}, {"source": str(source)}, execute) == outputs
    assert len(calls) == 1 and "up to date" in messages[-1]

    runner.run("copy", {"n": (1, 3)}, {"source": str(source)}, execute)
    assert len(calls) == 2
    source.write_text("v2")
    runner.run("copy", {"n": (1, 3)}, {"source": str(source)}, execute)
    assert len(calls) == 3 and open(outputs["out"]).read() == "v2"

    forced = stage_records.StageRunner(str(tmp_path / "W"), force=True, report=messages.append)
    forced.run("copy", {"n": (1, 3)}, {"source": str(source)}, execute)
    assert len(calls) == 4 and "forced" in " ".join(messages)

    record = json.load(open(tmp_path / "W" / "copy" / "record.json"))
    assert record["inputs"]["source"]["sha256"] == stage_records.fingerprint(str(source))["sha256"]
    assert record["parameters"] == {"n": [1, 3]}


def test_failed_stage_leaves_no_record_and_reruns(tmp_path):
    runner = stage_records.StageRunner(str(tmp_path / "W"), report=lambda _: None)

    def fail(stage_dir):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runner.run("broken", {}, {}, fail)
    assert stage_records.read_record(runner.stage_dir("broken")) is None
    assert runner.run("broken", {}, {}, lambda d: {"ok": True}) == {"ok": True}


def test_record_whose_required_outputs_are_gone_is_rerun(tmp_path):
    runner = stage_records.StageRunner(str(tmp_path / "W"), report=lambda _: None)
    target = tmp_path / "published"
    calls = []

    def publish(stage_dir):
        calls.append(1)
        target.write_text("model")
        return {"path": str(target)}

    runner.run("push", {}, {}, publish, required=["path"])
    runner.run("push", {}, {}, publish, required=["path"])
    assert len(calls) == 1
    target.unlink()
    runner.run("push", {}, {}, publish, required=["path"])
    assert len(calls) == 2 and target.exists()
