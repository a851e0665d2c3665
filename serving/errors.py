"""The one exception type that means "the command line or a config file asks for the impossible".

`happysad serve` and `happysad predict` print it as one line and exit with status 2. It is
the serving package's own type: `serving` imports nothing from `pipeline`.
"""


class UserError(ValueError):
    """Bad flags, config files or inputs of a serving command; anything else is a bug."""
