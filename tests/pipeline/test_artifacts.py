"""pipeline.artifacts: writes that appear whole, hashes, histories, versions as TF Serving counts."""

import hashlib
import os

import pytest

import pipeline
from pipeline import artifacts, errors
from tests.support import ram_filesystem


def _files(folder) -> list[str]:
    return sorted(name for _, _, names in os.walk(folder) for name in names)


def test_writes_replace_the_file_whole_and_leave_no_temporary(tmp_path):
    path = str(tmp_path / "deep" / "er" / "value.json")
    artifacts.write_json(path, {"b": (1, 2), "a": {"x"}.__class__.__name__})
    assert artifacts.read_json(path) == {"a": "set", "b": [1, 2]}
    with open(path, encoding="utf-8") as handle:
        assert handle.read().endswith("}\n")
    artifacts.write_text(path, "{}")
    assert artifacts.read_json(path) == {} and _files(tmp_path) == ["value.json"]


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = str(tmp_path / "plot.png")
    artifacts.write_bytes(path, b"old")

    def half_then_fail(temporary):
        with open(temporary, "wb") as handle:
            handle.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        artifacts.write_with(path, half_then_fail)
    assert open(path, "rb").read() == b"old" and _files(tmp_path) == ["plot.png"]


def test_the_temporary_file_keeps_the_extension(tmp_path):
    seen = []

    def save(temporary):
        seen.append(temporary)
        with open(temporary, "wb") as handle:
            handle.write(b"model")

    artifacts.write_with(str(tmp_path / "model.keras"), save)
    assert seen[0].endswith(".keras") and not os.path.exists(seen[0])
    assert (tmp_path / "model.keras").read_bytes() == b"model"


def test_read_json_and_read_bytes_say_what_is_wrong(tmp_path):
    with pytest.raises(errors.UserError, match="cannot read"):
        artifacts.read_json(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(errors.UserError, match="is not valid JSON"):
        artifacts.read_json(str(tmp_path / "bad.json"))


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    data = os.urandom(3 * 2**20 + 5)  # more than one read
    (tmp_path / "blob").write_bytes(data)
    assert artifacts.file_sha256(str(tmp_path / "blob")) == hashlib.sha256(data).hexdigest()


def test_read_history_takes_keras_na_as_missing(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,0.7,NA\n1,0.5,0.55\n")
    assert artifacts.read_history(str(path)) == {
        "epoch": [0.0, 1.0],
        "loss": [0.7, 0.5],
        "val_loss": [None, 0.55],
    }
    assert artifacts.read_history(str(tmp_path / "none.csv")) == {}


def test_code_version_names_the_package_and_its_sources():
    version = artifacts.code_version()
    assert version["happysad"] == pipeline.__version__
    assert len(version["sources_sha256"]) == 64
    assert artifacts.code_version()["sources_sha256"] == version["sources_sha256"]


def _version(base, name, complete=True):
    folder = base / name
    folder.mkdir(parents=True)
    if complete:
        (folder / "saved_model.pb").write_bytes(b"graph")


def test_versions_are_counted_as_tf_serving_counts_them(tmp_path):
    base = tmp_path / "serving"
    assert artifacts.list_versions(str(base)) == [] and artifacts.next_version(str(base)) == 1
    _version(base, "3")
    _version(base, "007")  # TF Serving parses the whole name: version 7
    _version(base, "5", complete=False)  # being pushed: not served, but taken
    _version(base, ".9.tmp-abc")  # a staging folder: not a version
    _version(base, "v10")
    assert artifacts.list_versions(str(base)) == [3, 7]
    assert artifacts.latest_version_dir(str(base)) == str(base / "007")
    assert artifacts.version_dir(str(base), 3) == str(base / "3")
    with pytest.raises(errors.UserError, match="no complete version 5"):
        artifacts.version_dir(str(base), 5)
    assert artifacts.next_version(str(base)) == 8
    assert artifacts.check_version(str(base), None) == 8
    assert artifacts.check_version(str(base), 6) == 6
    for taken in (5, 7):
        with pytest.raises(errors.UserError, match=f"version {taken} already exists"):
            artifacts.check_version(str(base), taken)
    with pytest.raises(errors.UserError, match="positive"):
        artifacts.check_version(str(base), 0)


def test_publish_moves_a_staged_version_into_place(tmp_path):
    base = str(tmp_path / "export")
    staging = artifacts.staging_dir(base, 1)
    os.makedirs(os.path.join(staging, "variables"))
    for name in ("saved_model.pb", "variables/variables.index"):
        with open(os.path.join(staging, name), "wb") as handle:
            handle.write(name.encode())
    assert artifacts.publish(staging, base, 1, move=True) == os.path.join(base, "1")
    assert os.listdir(base) == ["1"] and artifacts.list_versions(base) == [1]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no model here")
    with pytest.raises(errors.UserError, match="not a SavedModel directory"):
        artifacts.publish(str(tmp_path / "notes"), base)
    assert os.listdir(base) == ["1"]


def test_object_store_paths_join_with_slashes_and_remove_every_object():
    base = ram_filesystem.new_base("artifacts")
    for name in ("a/1.txt", "a/b/2.txt"):
        artifacts.write_text(artifacts.join(base, name), name)
    assert artifacts.join(base, "a", "1.txt") == f"{base}/a/1.txt"
    assert artifacts.read_bytes(f"{base}/a/b/2.txt") == b"a/b/2.txt"
    artifacts.remove(artifacts.join(base, "a"))
    with pytest.raises(errors.UserError, match="cannot read"):
        artifacts.read_bytes(f"{base}/a/1.txt")
