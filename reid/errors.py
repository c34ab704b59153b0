"""The one exception type for problems with what the user gave us (a file, a folder, a flag)."""

_WORKER_LINE = f"\n{__name__}.UsageError: "


class UsageError(Exception):
    """Bad input from the user: ``main`` prints the message as one paragraph and exits with status 2.

    The message names the file or flag and says what was expected, so no traceback is needed.
    """

    def __str__(self):
        """The message, also when a DataLoader worker raised it (an unreadable image with -j > 0).

        PyTorch re-raises a worker's exception in the main process with the worker's whole traceback as
        the message; the user's message is what follows the traceback's ``reid.errors.UsageError:`` line.
        """
        text = super().__str__()
        if text.startswith("Caught UsageError in DataLoader worker") and _WORKER_LINE in text:
            return text.partition(_WORKER_LINE)[2].strip()
        return text


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved; ``main`` exits with 128 + signal."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
