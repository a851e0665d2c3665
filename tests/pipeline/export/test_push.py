"""Pushing: blessing enforced, versions never overwritten, a poller never sees half a model."""

import json
import os

import pytest
import tensorflow as tf

from pipeline import artifacts, cli, contract, errors
from pipeline.export import push
from tests.support import ram_filesystem

MODEL_SHA256 = "ab" * 32
FILES = {
    "saved_model.pb": b"graph",
    "fingerprint.pb": b"fingerprint",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"weights" * 1000,
    "assets/labels.txt": b"sad\nhappy\n",
    "assets.extra/tf_serving_warmup_requests": b"warm-up",
}


def _exported(directory, blessing=None, model_sha256=MODEL_SHA256):
    """An exported version's files, with the blessing that export copies into its card."""
    for relative, content in FILES.items():
        path = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)
    card = {"model_sha256": model_sha256, "threshold": 0.5}
    if blessing is not None:
        card["blessing"] = blessing
    with open(os.path.join(directory, contract.MODEL_CARD_PATH), "w") as handle:
        json.dump(card, handle)
    return str(directory)


def _blessing(blessed=True, model_sha256=MODEL_SHA256):
    reasons = [] if blessed else ["accuracy 0.5100 < the minimum 0.6000"]
    return {"blessed": blessed, "reasons": reasons, "model_sha256": model_sha256}


def _files_under(directory):
    found = {}
    for root, _, names in tf.io.gfile.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with tf.io.gfile.GFile(path, "rb") as handle:
                found[path[len(directory) :].strip("/")] = handle.read()
    return found


def test_blessed_model_is_pushed_as_the_next_version(tmp_path):
    model_dir = _exported(tmp_path / "export" / "7", _blessing())
    base = tmp_path / "serving"
    result = push.run(model_dir=model_dir, serving_base=str(base))
    assert result["version"] == 1 and result["path"] == str(base / "1")
    assert result["blessed"] and not result["forced"]
    assert _files_under(str(base / "1")) == _files_under(model_dir)
    assert os.listdir(base) == ["1"]
    # As readable as any folder made here: a model server running as another user can load it.
    assert os.stat(base / "1").st_mode & 0o777 == os.stat(base).st_mode & 0o777
    second = push.run(model_dir=model_dir, serving_base=str(base))
    assert second["version"] == 2 and artifacts.list_versions(str(base)) == [1, 2]


def test_unblessed_model_is_refused_with_the_reasons(tmp_path):
    model_dir = _exported(tmp_path / "export" / "1", _blessing(blessed=False))
    base = tmp_path / "serving"
    with pytest.raises(errors.UserError, match="accuracy 0.5100 < the minimum") as error:
        push.run(model_dir=model_dir, serving_base=str(base))
    assert "--force" in str(error.value)
    assert not base.exists() or os.listdir(base) == []


def test_force_pushes_an_unblessed_model(tmp_path):
    model_dir = _exported(tmp_path / "export" / "1", _blessing(blessed=False))
    base = str(tmp_path / "serving")
    result = push.run(model_dir=model_dir, serving_base=base, force=True)
    assert result["forced"] and not result["blessed"]
    assert result["reasons"] == ["accuracy 0.5100 < the minimum 0.6000"]
    assert artifacts.list_versions(base) == [1]


def test_a_model_without_blessing_is_refused(tmp_path):
    model_dir = _exported(tmp_path / "export" / "1")
    with pytest.raises(errors.UserError, match="no blessing"):
        push.run(model_dir=model_dir, serving_base=str(tmp_path / "serving"))


def test_blessing_file_from_evaluate_is_used(tmp_path):
    model_dir = _exported(tmp_path / "export" / "1", _blessing(blessed=False))
    blessing_path = tmp_path / "blessing.json"
    blessing_path.write_text(json.dumps(_blessing()))
    base = str(tmp_path / "serving")
    assert push.run(model_dir=model_dir, serving_base=base, blessing=str(blessing_path))["blessed"]


def test_a_blessing_of_another_model_is_refused(tmp_path):
    model_dir = _exported(tmp_path / "export" / "1", _blessing(model_sha256="cd" * 32))
    with pytest.raises(errors.UserError, match="another model"):
        push.run(model_dir=model_dir, serving_base=str(tmp_path / "serving"))


def test_existing_versions_are_never_overwritten(tmp_path):
    model_dir = _exported(tmp_path / "export" / "1", _blessing())
    base = tmp_path / "serving"
    _exported(base / "3")
    (base / "5").mkdir()  # a version folder without saved_model.pb is still taken
    (base / ".6.tmp-abc").mkdir()  # someone else's staging folder is not a version
    (base / "007").mkdir()  # TF Serving's rule: "007" is version 7
    with pytest.raises(errors.UserError, match="version 7 already exists"):
        push.run(model_dir=model_dir, serving_base=str(base), version=7)
    with pytest.raises(errors.UserError, match="version 3 already exists"):
        push.run(model_dir=model_dir, serving_base=str(base), version=3)
    assert (base / "3" / "saved_model.pb").read_bytes() == b"graph"
    assert artifacts.list_versions(str(base)) == [3]
    assert push.run(model_dir=model_dir, serving_base=str(base))["version"] == 8
    assert push.run(model_dir=model_dir, serving_base=str(base), version=4)["version"] == 4


def test_local_push_appears_in_one_step(tmp_path, monkeypatch):
    """While files are being copied, a poller of the base sees no version at all."""
    model_dir = _exported(tmp_path / "export" / "1", _blessing())
    base = str(tmp_path / "serving")
    seen = []
    copy = tf.io.gfile.copy

    def observed_copy(source, destination, overwrite=False):
        copy(source, destination, overwrite)
        seen.append(sorted(name for name in os.listdir(base) if not name.startswith(".")))

    monkeypatch.setattr(tf.io.gfile, "copy", observed_copy)
    push.run(model_dir=model_dir, serving_base=base)
    assert len(seen) == len(FILES) + 1  # every file and the model card
    assert all(names == [] for names in seen)
    assert sorted(os.listdir(base)) == ["1"]


def test_object_store_push_copies_saved_model_pb_last(tmp_path, monkeypatch):
    """On a store without atomic rename, the version is complete once saved_model.pb lands."""
    model_dir = _exported(tmp_path / "export" / "1", _blessing())
    base = ram_filesystem.new_base("serving")
    order, versions_seen = [], []
    copy = tf.io.gfile.copy

    def observed_copy(source, destination, overwrite=False):
        versions_seen.append(artifacts.list_versions(base))
        copy(source, destination, overwrite)
        order.append(os.path.basename(destination))

    monkeypatch.setattr(tf.io.gfile, "copy", observed_copy)
    result = push.run(model_dir=model_dir, serving_base=base)
    assert result["path"] == f"{base}/1"
    assert order[-1] == "saved_model.pb" and order.count("saved_model.pb") == 1
    assert all(seen == [] for seen in versions_seen)
    assert artifacts.list_versions(base) == [1]
    # (TF's ram:// file system lists "assets.extra" under "assets" too, so read by name.)
    for relative, content in _files_under(model_dir).items():
        with tf.io.gfile.GFile(f"{base}/1/{relative}", "rb") as handle:
            assert handle.read() == content
    with pytest.raises(errors.UserError, match="already exists"):
        artifacts.publish(model_dir, base, 1)


def test_cli_says_why_it_refuses(tmp_path, capsys):
    model_dir = _exported(tmp_path / "export" / "1", _blessing(blessed=False))
    code = cli.main(["push", "--model-dir", model_dir, "--serving-base", str(tmp_path / "s")])
    assert code == 2
    assert "refusing to push an unblessed model" in capsys.readouterr().err
    forced = cli.main(
        ["push", "--model-dir", model_dir, "--serving-base", str(tmp_path / "s"), "--force"]
    )
    assert forced == 0 and artifacts.list_versions(str(tmp_path / "s")) == [1]


def test_a_directory_without_saved_model_is_refused(tmp_path):
    with pytest.raises(errors.UserError, match="not an exported SavedModel"):
        push.run(model_dir=str(tmp_path), serving_base=str(tmp_path / "s"), force=True)
