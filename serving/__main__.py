"""`happysad serve` and `python -m serving`: the command line of the model server.

Flags are parsed before TensorFlow is imported, so `--help` and flag errors answer at once.
"""

import os
import sys
from collections.abc import Sequence

from serving import flags


def main(argv: Sequence[str] | None = None, prog: str = flags.PROG) -> int:
    """Entry point of `happysad serve`; returns the exit status.

    0 after a clean shutdown; 1 when an initial model cannot be loaded (TF Serving's
    "Failed to start server"); 2 for bad flags or config files (one line on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    options = flags.parse(argv, prog)
    if options.version:
        flags.print_version()
        return 0
    from serving import server

    return server.run(options, prog)


if __name__ == "__main__":
    sys.exit(main(prog="python -m serving"))
