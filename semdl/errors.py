"""The one exception type for mistakes a user can fix: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """A problem with the user's configuration, files or environment, explained in one line."""
