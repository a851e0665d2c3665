"""pipeline.child_process: a stage in a spawned process, and how it ended, in one line."""

import signal

import pytest

from pipeline import child_process, errors


def test_the_return_value_comes_back():
    assert child_process.run("build", "math:hypot", 3, 4) == 5.0
    assert child_process.run("build", "builtins:dict", a=1, b=[2]) == {"a": 1, "b": [2]}


@pytest.mark.parametrize("number, name", [(signal.SIGKILL, "SIGKILL"), (signal.SIGSEGV, "SIGSEGV")])
def test_a_stage_killed_by_a_signal_is_one_line_naming_the_stage_and_the_signal(number, name):
    # signal.raise_signal sends the signal to the very process that calls it: the child.
    with pytest.raises(child_process.StageDied) as died:
        child_process.run("train", "signal:raise_signal", number)
    message = str(died.value)
    assert "\n" not in message
    assert message.startswith(f"stage train died of {name} (signal {int(number)})")
    assert "run the same command again to resume" in message
    assert isinstance(died.value, errors.UserError)  # the CLI shows it as one line, exit 2


def test_bad_input_in_the_stage_is_a_user_error_with_its_message(tmp_path):
    with pytest.raises(errors.UserError, match="No such file or directory"):
        child_process.run("evaluate", "os:listdir", str(tmp_path / "missing"))


def test_any_other_failure_comes_back_with_its_traceback():
    with pytest.raises(RuntimeError, match="stage export failed:") as failed:
        child_process.run("export", "operator:truediv", 1, 0)
    assert "ZeroDivisionError" in str(failed.value) and "Traceback" in str(failed.value)


def test_an_exit_without_an_answer_says_so():
    with pytest.raises(RuntimeError, match="stage push exited with status 3 and no result"):
        child_process.run("push", "os:_exit", 3)
