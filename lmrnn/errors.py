"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A bad input, option or file. The CLI prints its message on one line and exits 1."""


class Diverged(UserError):
    """Training stopped after too many non-finite steps in a row. A hyperparameter search
    records such a trial as failed and goes on; elsewhere it is a UserError like any other."""
