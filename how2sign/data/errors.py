"""The one error type the data layer raises for problems a user must fix."""

from __future__ import annotations


class DataError(ValueError):
    """A user-facing data problem. Its message is one line naming the file, folder or column at fault;
    the command line prints it and exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(str(message).replace("\r", " ").replace("\n", " "))
