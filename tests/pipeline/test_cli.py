"""The `happysad` entry point: stage listing, errors as one line with a non-zero exit."""

import subprocess
import sys

import pytest

from pipeline import cli


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for stage in (
        "build",
        "preprocess",
        "train",
        "evaluate",
        "export",
        "push",
        "serve",
        "predict",
        "run",
        "tune",
    ):
        assert f"  {stage} " in out


def test_unknown_stage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fly"])
    assert exit_info.value.code == 2
    assert "unknown stage 'fly'" in capsys.readouterr().err


def test_console_script_help_is_fast_and_needs_no_tensorflow():
    code = (
        "import sys; from pipeline import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules and 'apache_beam' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    "stage, flags",
    [
        ("build", ["--input", "--num-images", "--resize-policy", "--data-dir", "--overwrite"]),
        ("preprocess", ["--input", "--output", "--image-size", "--split-fractions"]),
        ("train", ["--recipe", "--seed", "--epochs", "--filters", "--augment", "--output-dir"]),
        ("tune", ["--recipe", "--tuner", "--max-trials", "--train-best", "--output-dir"]),
        ("evaluate", ["--model-path", "--threshold-policy", "--min-accuracy", "--baseline"]),
        ("export", ["--model-path", "--export-base", "--warmup-images", "--evaluation-dir"]),
        ("push", ["--model-dir", "--serving-base", "--blessing", "--force", "--version"]),
        ("run", ["--workdir", "--input", "--recipe", "--epochs", "--min-accuracy", "--force"]),
    ],
)
def test_every_stage_has_help_with_its_flags(capsys, stage, flags):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: happysad {stage}")
    for flag in flags:
        assert flag in out, flag
