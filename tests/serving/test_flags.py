"""`happysad serve` takes tensorflow_model_server's command lines."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving import errors, flags

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_model_server_command() -> list[str]:
    """The arguments of the `tensorflow_model_server ...` line the README gives."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"tensorflow_model_server( --(?:[^\n]*\\\n)*[^\n]*)", text)
    assert match, "the README shows no tensorflow_model_server command line"
    command = match.group(1).replace("\\\n", " ").replace("#", " ")
    return command.split()


def test_the_readme_tensorflow_model_server_line_is_accepted_verbatim():
    arguments = readme_model_server_command()
    options = flags.parse(arguments)
    assert flags.check(options) == []
    assert options.port == 8500 and options.rest_api_port == 8501
    assert options.model_name == "happysad"


def test_tf_serving_integration_test_command_line_is_accepted(tmp_path):
    """The command line TF Serving's own integration tests start the server with."""
    arguments = [
        "--port=8500",
        "--rest_api_port=8501",
        "--rest_api_timeout_in_ms=5000",
        f"--grpc_socket_path={tmp_path}/tf-serving.sock",
        "--model_name=default",
        f"--model_base_path={tmp_path}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.so_reuseaddr=1",
        "--enable_batching",
        f"--batching_parameters_file={tmp_path}/batching.txt",
        f"--monitoring_config_file={tmp_path}/monitoring.txt",
        "--model_config_file_poll_wait_seconds=1",
    ]
    options = flags.parse(arguments)
    assert flags.check(options) == []
    assert (options.rest_api_timeout_in_ms, options.enable_batching) == (5000, True)
    assert options.grpc_socket_path == f"{tmp_path}/tf-serving.sock"


def test_defaults_are_tf_servings():
    options = flags.ServerOptions()
    assert (options.port, options.rest_api_port, options.model_name) == (8500, 0, "default")
    assert options.file_system_poll_wait_seconds == 1
    assert options.model_config_file_poll_wait_seconds == 0
    assert options.max_num_load_retries == 5
    assert options.load_retry_interval_micros == 60_000_000
    assert options.rest_api_timeout_in_ms == 30000
    assert options.enable_model_warmup and not options.enable_batching
    assert options.saved_model_tags == "serve"
    assert not options.enable_signature_method_name_check


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--enable_batching"], True),
        (["--enable_batching=true"], True),
        (["--enable_batching=false"], False),
        (["--enable_batching=1"], True),
        (["--enable_batching=0"], False),
        ([], False),
    ],
)
def test_boolean_flags_take_tf_servings_spellings(arguments, expected):
    assert flags.parse(arguments).enable_batching is expected


def test_values_may_also_follow_the_flag():
    options = flags.parse(["--model_name", "m", "--port", "9000"])
    assert (options.model_name, options.port) == ("m", 9000)


@pytest.mark.parametrize("argument", ["--nope=1", "--model=happysad", "--Port=1", "--port=x"])
def test_unknown_flags_and_bad_values_are_one_line_and_exit_2(argument, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flags.parse([argument])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("happysad serve: error:") and error.count("\n") == 1


def test_relative_base_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert flags.parse(["--model_base_path=models/m"]).model_base_path == str(
        tmp_path / "models" / "m"
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model_base_path=/m", "--ssl_config_file=/ssl.txt"], "--ssl_config_file is not"),
        (["--model_base_path=/m", "--use_alts_credentials"], "--use_alts_credentials"),
        (["--model_base_path=/m", "--port=0"], "grpc_port or server_options.grpc_socket_path"),
        ([], "model_base_path and server_options.model_config_file are empty"),
        (
            ["--model_base_path=/m", "--batching_parameters_file=/b.txt"],
            "without setting server_options.enable_batching",
        ),
        (["--model_base_path=/m", "--mixed_precision=fp16"], "only bfloat16"),
    ],
)
def test_what_tf_serving_refuses_is_refused(arguments, message):
    with pytest.raises(errors.UserError, match=re.escape(message)):
        flags.check(flags.parse(arguments))


def test_flags_without_effect_here_are_accepted_with_a_warning():
    warnings = flags.check(flags.parse(["--model_base_path=/m", "--enable_profiler=false"]))
    assert warnings == ["--enable_profiler=False has no effect in happysad serve"]


def test_help_marks_the_extras_and_version_prints_two_lines():
    command = [sys.executable, "-m", "serving"]
    help_text = subprocess.run([*command, "--help"], capture_output=True, text=True).stdout
    assert "--model_config_file" in help_text and "--grpc_socket_path" in help_text
    assert re.search(r"--rest_api_host.*\n?.*\[happysad\]", help_text)
    version = subprocess.run([*command, "--version"], capture_output=True, text=True)
    lines = version.stdout.splitlines()
    assert version.returncode == 0 and len(lines) == 2
    assert lines[0].startswith("TensorFlow ModelServer:") and lines[1].startswith(
        "TensorFlow Library:"
    )
