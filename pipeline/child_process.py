"""Run one stage in a child process, as TFX runs each component in its own, and say how it ended.

A crash in native code (a oneDNN or driver bug, the kernel's OOM killer) takes the child down,
not the orchestrator, which reports it as one line naming the stage and the signal. The child
is started with "spawn": it shares no TensorFlow or Beam state with the parent, and imports
nothing heavy before its logging is set up.
"""

import importlib
import multiprocessing
import signal
import traceback

from pipeline import errors


class StageDied(errors.UserError):
    """A stage's process was killed by a signal; nothing of it was recorded."""


def run(stage: str, function: str, *args, **kwargs):
    """`module:function(*args, **kwargs)` in a fresh process; its return value, or its error.

    Raises:
        StageDied: the process ended by a signal (the message says how to resume).
        UserError / ValueError: what the stage raised for bad input.
        RuntimeError: any other failure in the stage, with its traceback.
    """
    context = multiprocessing.get_context("spawn")  # no forked TensorFlow or Beam state
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_main, args=(sender, function, args, kwargs), name=f"happysad-{stage}"
    )
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:  # the child ended without answering
        outcome = None
    process.join()
    if process.exitcode is not None and process.exitcode < 0:
        name = signal.Signals(-process.exitcode).name
        raise StageDied(
            f"stage {stage} died of {name} (signal {-process.exitcode}); nothing of it was "
            "recorded: run the same command again to resume (finished stages are skipped, "
            "training continues after its last completed epoch)"
        )
    if outcome is None:
        raise RuntimeError(f"stage {stage} exited with status {process.exitcode} and no result")
    kind, value = outcome
    if kind == "ok":
        return value
    if kind == "user_error":
        raise errors.UserError(value)
    raise RuntimeError(f"stage {stage} failed:\n{value}")


def _main(sender, function: str, args: tuple, kwargs: dict) -> None:
    from pipeline import cli  # the same logging as the command line

    cli.configure_logging()
    module_name, name = function.split(":")
    try:
        result = getattr(importlib.import_module(module_name), name)(*args, **kwargs)
    except cli.USER_ERRORS as error:
        sender.send(("user_error", str(error) or type(error).__name__))
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        sender.send(("error", traceback.format_exc()))
    else:
        sender.send(("ok", result))
    sender.close()
