"""pipeline.data.sources: every file under happy/ and sad/ listed once, links followed, reads bounded."""

import gzip
import os

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing import test_pipeline, util

from pipeline import errors
from pipeline.data import schema, sources
from tests.support import ram_filesystem


def _write(path: str, data: bytes = b"x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data)
    return path


def _assert_lists(root: str, expected: list[schema.SourceImage]) -> None:
    with test_pipeline.TestPipeline() as pipeline:
        listed = pipeline | sources.ListImages(root)
        util.assert_that(listed, util.equal_to(expected))


def test_every_file_under_both_labels_is_listed_once(tmp_path):
    root = str(tmp_path)
    inside = [
        "happy/a.jpg",
        "happy/.hidden.png",
        "happy/no_extension",
        "happy/nested/deeper/b.png",
        "sad/c.jpg",
        "sad/d e [1].jpg",
    ]
    for relative in inside:
        _write(os.path.join(root, relative))
    _write(os.path.join(root, "elsewhere.jpg"))  # not under a label folder: not an input
    _write(os.path.join(root, "other", "f.jpg"))
    expected = [
        schema.SourceImage(os.path.join(root, relative), relative.split("/")[0])
        for relative in inside
    ]
    _assert_lists(root, expected)


def test_empty_label_folders_list_nothing(tmp_path):
    (tmp_path / "happy").mkdir()
    (tmp_path / "sad" / "only_folders").mkdir(parents=True)
    _assert_lists(str(tmp_path), [])


def test_a_symlinked_folder_is_followed_and_a_link_loop_ends(tmp_path):
    root = str(tmp_path / "faces")
    _write(os.path.join(root, "happy", "own.jpg"))
    _write(os.path.join(root, "sad", "own.jpg"))
    outside = tmp_path / "more_smiles"
    _write(str(outside / "x.jpg"))
    _write(str(outside / "deeper" / "y.png"))
    os.symlink(outside, os.path.join(root, "happy", "more"))
    os.symlink(os.path.join(root, "happy"), os.path.join(root, "happy", "more", "loop"))
    os.symlink(os.path.join(root, "sad"), os.path.join(root, "sad", "again"))
    expected = [
        schema.SourceImage(os.path.join(root, "happy", "own.jpg"), "happy"),
        schema.SourceImage(os.path.join(root, "happy", "more", "x.jpg"), "happy"),
        schema.SourceImage(os.path.join(root, "happy", "more", "deeper", "y.png"), "happy"),
        schema.SourceImage(os.path.join(root, "sad", "own.jpg"), "sad"),
    ]
    _assert_lists(root, expected)


def test_broken_links_and_undecodable_names_are_listed_with_their_problem(tmp_path):
    root = str(tmp_path)
    _write(os.path.join(root, "happy", "fine.jpg"))
    _write(os.path.join(root, "elsewhere.jpg"))
    os.makedirs(os.path.join(root, "sad"))
    os.symlink(os.path.join(root, "elsewhere.jpg"), os.path.join(root, "happy", "linked.jpg"))
    os.symlink(os.path.join(root, "nowhere.jpg"), os.path.join(root, "sad", "dead.jpg"))
    _write(os.path.join(os.fsencode(root), b"sad", b"caf\xe9.jpg"))  # Latin-1, not UTF-8
    expected = [
        schema.SourceImage(os.path.join(root, "happy", "fine.jpg"), "happy"),
        schema.SourceImage(os.path.join(root, "happy", "linked.jpg"), "happy"),
        schema.SourceImage(
            os.path.join(root, "sad", "dead.jpg"), "sad", problem=sources.UNREADABLE
        ),
        schema.SourceImage(
            os.path.join(root, "sad", "caf\\xe9.jpg"), "sad", problem=sources.BAD_FILE_NAME
        ),
    ]
    _assert_lists(root, expected)


def test_a_wrong_input_folder_is_one_sentence(tmp_path):
    with pytest.raises(errors.UserError, match="does not exist"):
        sources.ListImages(str(tmp_path / "missing"))
    (tmp_path / "happy").mkdir()
    with pytest.raises(errors.UserError, match="no sad/ sub-folder"):
        sources.check_root(str(tmp_path))
    (tmp_path / "sad").mkdir()
    assert sources.check_root(str(tmp_path) + "/") == str(tmp_path)


def test_object_store_folders_are_listed_like_local_ones():
    root = ram_filesystem.new_base("faces")
    for relative in ("happy/a.jpg", "happy/x/b.png", "sad/c.jpg"):
        with FileSystems.create(f"{root}/{relative}") as stream:
            stream.write(b"x")
    expected = [
        schema.SourceImage(f"{root}/happy/a.jpg", "happy"),
        schema.SourceImage(f"{root}/happy/x/b.png", "happy"),
        schema.SourceImage(f"{root}/sad/c.jpg", "sad"),
    ]
    _assert_lists(root, expected)


def test_read_bytes_is_raw_bounded_and_says_why_not(tmp_path):
    compressed = gzip.compress(b"\xff\xd8\xff" + bytes(100))
    gz = schema.SourceImage(_write(str(tmp_path / "photo.jpg.gz"), compressed), "happy")
    assert sources.read_bytes(gz, 1000) == (compressed, "")  # never gunzipped
    assert sources.read_bytes(gz, len(compressed) - 1) == (None, sources.TOO_LARGE)
    empty = schema.SourceImage(_write(str(tmp_path / "empty.jpg"), b""), "sad")
    assert sources.read_bytes(empty, 1000) == (None, sources.EMPTY)
    gone = schema.SourceImage(str(tmp_path / "gone.jpg"), "sad")
    assert sources.read_bytes(gone, 1000) == (None, sources.UNREADABLE)
    named = schema.SourceImage(str(tmp_path / "x"), "sad", problem=sources.BAD_FILE_NAME)
    assert sources.read_bytes(named, 1000) == (None, sources.BAD_FILE_NAME)
    in_memory = schema.SourceImage("synthetic/happy/1.jpg", "happy", data=b"abc")
    assert sources.read_bytes(in_memory, 3) == (b"abc", "")
