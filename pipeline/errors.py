"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the input or the command line: the CLI prints it as one line and exits 2.

    Raise it (or ValueError) from any stage for bad input; anything else is a bug and
    keeps its traceback.
    """
