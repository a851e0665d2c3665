"""`happysad preprocess`: the data job as a dry run, writing its report and nothing else."""

import json
import os

from pipeline import cli, config
from pipeline.data import job, preprocess
from tests.support import image_files, ram_filesystem

OUTPUTS = ["manifest.csv", "plots", "report.md", "summary.json"]


def _summary(output) -> dict:
    with open(os.path.join(output, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _everything_under(folder) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(directory, name), folder)
        for directory, folders, names in os.walk(folder)
        for name in folders + names
    )


def test_a_folder_named_like_a_pattern_gets_the_report_and_nothing_else(tmp_path):
    photos = tmp_path / "my photos [2024]"
    image_files.write_faces(str(photos), per_label=3)
    (photos / "sad" / "notes.txt").write_text("not an image")
    output = tmp_path / "clean [run 1]"
    assert cli.main(["preprocess", "--input", str(photos), "--output", str(output)]) == 0
    assert sorted(os.listdir(output)) == OUTPUTS  # no images/, tfrecords/, manifest.parts
    leftovers = [
        name
        for name in _everything_under(tmp_path)
        if "beam-temp" in name or ".tmp" in name or "manifest.parts" in name
    ]
    assert leftovers == []
    summary = _summary(output)
    assert summary["input_files"] == 7 and summary["status"] == {"accepted": 6, "rejected": 1}
    rows = {row["path"]: row for row in job.read_manifest(str(output))}
    assert rows[str(photos / "sad" / "notes.txt")]["reason"] == "not_an_image"


def test_a_rerun_replaces_the_outputs_and_takes_beam_options(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    image_files.write_faces(str(first), per_label=3)
    image_files.write_faces(str(second), per_label=1, seed=1)
    output = str(tmp_path / "out")
    assert cli.main(["preprocess", "--input", str(first), "--output", output]) == 0
    argv = ["preprocess", "--input", str(second), "--output", output, "--resize-policy=crop"]
    assert cli.main(argv + ["--direct_num_workers=2", "--direct_running_mode=in_memory"]) == 0
    rows = job.read_manifest(output)
    assert [os.path.relpath(row["path"], second) for row in rows] == [
        "happy/happy_000.jpg",
        "sad/sad_000.jpg",
    ]
    assert _summary(output)["transform"]["resize_policy"] == "crop"


def test_a_wrong_input_is_one_line_and_keeps_the_previous_outputs(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "manifest.csv").write_text("path,label\n")
    argv = ["preprocess", "--input", str(tmp_path / "nope"), "--output", str(output)]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "does not exist" in error[0]
    assert (output / "manifest.csv").read_text() == "path,label\n"


def test_an_output_that_cannot_be_made_is_one_line_and_leaves_nothing(tmp_path, capsys):
    image_files.write_faces(str(tmp_path / "photos"), per_label=1)
    (tmp_path / "a file").write_text("")
    output = tmp_path / "a file" / "out"
    argv = ["preprocess", "--input", str(tmp_path / "photos"), "--output", str(output)]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot make the output folder" in error[0]
    assert sorted(os.listdir(tmp_path)) == ["a file", "photos"]


def test_the_synthetic_faces_take_the_data_flags(tmp_path):
    output = tmp_path / "out"
    argv = ["preprocess", "--output", str(output), "--num-images", "6", "--image-size", "64"]
    assert cli.main(argv) == 0
    summary = _summary(output)
    assert summary["input_files"] == 6 and summary["status"] == {"accepted": 6}
    assert summary["label"] == {"happy": 3, "sad": 3}
    assert summary["transform"]["image_size"] == 64


def test_a_class_imbalance_is_reported(tmp_path):
    photos = tmp_path / "photos"
    files = image_files.face_files(per_label=6)
    sad = sorted(name for name in files if name.startswith("sad/"))[2:]
    image_files.write_files(str(photos), {k: v for k, v in files.items() if k not in sad})
    output = str(tmp_path / "out")
    summary = preprocess.run(
        config.Config(data=config.DataConfig(input=str(photos))), output=output
    )
    (warning,) = [text for text in summary["warnings"] if text.startswith("class imbalance")]
    assert "6 happy vs 2 sad" in warning and "3.0:1" in warning
    with open(os.path.join(output, "report.md"), encoding="utf-8") as handle:
        assert warning in handle.read()


def test_object_store_input_and_output():
    """gs:// or s3:// folders work as local ones do: here TensorFlow's ram:// file system."""
    from apache_beam.io.filesystems import FileSystems

    root, output = ram_filesystem.new_base("photos"), ram_filesystem.new_base("report")
    for relative, content in image_files.face_files(per_label=2).items():
        with FileSystems.create(f"{root}/{relative}") as stream:
            stream.write(content)
    summary = preprocess.run(config.Config(data=config.DataConfig(input=root)), output=output)
    assert summary["status"] == {"accepted": 4}
    rows = job.read_manifest(output)
    assert [row["path"][len(root) + 1 :] for row in rows] == sorted(
        image_files.face_files(per_label=2)
    )
    for name in ("report.md", "summary.json", "plots/samples.png"):
        assert FileSystems.exists(f"{output}/{name}"), name
