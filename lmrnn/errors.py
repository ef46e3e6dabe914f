"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A bad input, option or file. The CLI prints its message on one line and exits 1."""
