"""Flags generated from config dataclasses."""

import argparse
import dataclasses

import pytest

from pipeline import flags


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    output: str = dataclasses.field(metadata={"help": "where to write"})
    epochs: int = dataclasses.field(default=3, metadata={"help": "passes"})
    rate: float | None = dataclasses.field(default=None, metadata={"help": "rate, e.g. 5%"})
    augment: bool = dataclasses.field(default=False, metadata={"help": "augment"})
    policy: str = dataclasses.field(
        default="stretch", metadata={"help": "resize", "choices": ("stretch", "pad")}
    )
    port: int = dataclasses.field(
        default=8501, metadata={"help": "port", "flags": ("--rest_api_port",)}
    )
    beam_args: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "beam", "passthrough": True}
    )


@dataclasses.dataclass(frozen=True)
class PositionalConfig:
    images: tuple[str, ...] = dataclasses.field(metadata={"help": "files", "positional": True})
    server: str = dataclasses.field(default="http://localhost:8501", metadata={"help": "url"})


def _parse(config_class, argv):
    argv = flags.normalize_bool_values(config_class, argv)
    parser = argparse.ArgumentParser()
    flags.add_config_arguments(parser, config_class)
    namespace, extra = parser.parse_known_args(argv)
    return flags.config_from_args(config_class, namespace, extra)


def test_defaults_types_and_both_spellings():
    config = _parse(ExampleConfig, ["--output", "out"])
    assert config == ExampleConfig(output="out")
    config = _parse(ExampleConfig, ["--output=o", "--epochs", "7", "--rate", "0.5", "--augment"])
    assert (config.epochs, config.rate, config.augment) == (7, 0.5, True)
    assert _parse(ExampleConfig, ["--output=o", "--no-augment"]).augment is False


@pytest.mark.parametrize(
    "argv, expected",
    [(["--augment=true"], True), (["--augment=false"], False), (["--augment=0"], False)],
)
def test_bool_flags_take_tf_serving_style_values(argv, expected):
    assert _parse(ExampleConfig, ["--output=o", *argv]).augment is expected


def test_bool_flag_rejects_nonsense():
    with pytest.raises(SystemExit):
        _parse(ExampleConfig, ["--output=o", "--augment=maybe"])


def test_explicit_flag_names_and_passthrough():
    config = _parse(
        ExampleConfig, ["--output=o", "--rest_api_port", "9000", "--runner=DirectRunner"]
    )
    assert config.port == 9000
    assert config.beam_args == ("--runner=DirectRunner",)


def test_optional_accepts_none_and_choices_are_enforced():
    assert _parse(ExampleConfig, ["--output=o", "--rate", "none"]).rate is None
    with pytest.raises(SystemExit):
        _parse(ExampleConfig, ["--output=o", "--policy", "zoom"])


def test_required_flag_missing_exits():
    with pytest.raises(SystemExit):
        _parse(ExampleConfig, [])


def test_positional_tuple():
    config = _parse(PositionalConfig, ["a.jpg", "b.png", "--server", "http://h:1"])
    assert config == PositionalConfig(images=("a.jpg", "b.png"), server="http://h:1")
    assert flags.passthrough_field(PositionalConfig) is None
    assert flags.passthrough_field(ExampleConfig) == "beam_args"


def test_help_renders_every_field(capsys):
    parser = argparse.ArgumentParser()
    flags.add_config_arguments(parser, ExampleConfig)
    parser.print_help()
    out = capsys.readouterr().out
    assert "--rest_api_port" in out and "rate, e.g. 5%" in out and "(default: stretch)" in out
