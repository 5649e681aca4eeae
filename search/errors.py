"""The service's user-facing error type: the CLI prints its one-line message and exits 2."""


class UserError(Exception):
    """Bad input from the user: a file, key, value or URL that cannot work. The message names it."""
