"""The one exception type for problems with what the user gave us (a file, a folder, a flag)."""


class UsageError(Exception):
    """Bad input from the user: ``main`` prints the message as one paragraph and exits with status 2.

    The message names the file or flag and says what was expected, so no traceback is needed.
    """


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved; ``main`` exits with 128 + signal."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
