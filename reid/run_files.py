"""The files of a run folder (--logs-dir): the folder's checks, ``log.txt`` (a copy of stdout), ``metrics.csv``
and ``curves.png``. Checkpoints are ``reid.checkpoint``'s, ``results.json`` is ``reid.evaluator``'s."""
import contextlib
import csv
import os

from . import figures
from .errors import UsageError
from .losses import TERMS

METRICS_COLUMNS = ("epoch", "loss", *TERMS, "accuracy", "lr", "seconds", "images_per_second", "eval_split",
                   "rank1", "mAP")


class Tee:
    """Write to the terminal and to ``log.txt`` at once.

    When ``log.txt`` cannot be written any more (a full disk), the run says so once and goes on with the
    terminal only: the log is a copy, and losing it must not stop training or lose the next checkpoint. A
    terminal that fails (a dropped SSH session) is dropped the same way, and the log goes on.
    """

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self._to_stream("write", text)
        self._to_log("write", text)

    def flush(self):
        self._to_stream("flush")
        self._to_log("flush")

    def _to_stream(self, method, *arguments):
        if self.stream is None:
            return
        try:
            getattr(self.stream, method)(*arguments)
        except OSError:
            self.stream = None

    def _to_log(self, method, *arguments):
        if self.log is None:
            return
        try:
            getattr(self.log, method)(*arguments)
        except OSError as error:
            log, self.log = self.log, None
            with contextlib.suppress(OSError):
                log.close()
            self._to_stream("write", f"\nwarning: cannot write to {log.name} ({error.strerror or error}); the "
                                     f"output goes to the terminal only from here on.\n")

    def isatty(self):
        return self.stream is not None and self.stream.isatty()


RUN_FILES = ("checkpoint.pth.tar", "model_best.pth.tar", "results.json", "metrics.csv")


def check_logs_dir_is_free(folder, resume=None, evaluate=False, overwrite=False):
    """Refuse to start a run whose files would replace those of an earlier run in ``folder`` (--logs-dir).

    Continuing that run (``resume`` is a checkpoint in ``folder``, not only to ``evaluate`` it) or ``overwrite``
    is allowed.
    """
    present = [name for name in RUN_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present or overwrite:
        return
    resume_folder = os.path.dirname(os.path.abspath(resume)) if resume else None
    if resume_folder == os.path.abspath(folder) and not evaluate:
        return
    raise UsageError(
        f"The logs folder {folder} (--logs-dir/--log) already holds a run ({', '.join(present)}), which this "
        f"command would replace. Continue that run with --resume {os.path.join(folder, 'checkpoint.pth.tar')}, "
        f"write to another --logs-dir, or add --overwrite to start over and replace its files.")


def prepare_logs_dir(path):
    """Create --logs-dir and return the path of its log.txt; a clear error when it cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        log_path = os.path.join(path, "log.txt")
        with open(log_path, "a"):
            pass
    except OSError as error:
        raise UsageError(f"Cannot write to the logs folder {path} (--logs-dir/--log): "
                         f"{error.strerror or error}. Choose a folder you can write to.") from None
    return log_path


def write_epoch_files(logs_dir, history):
    """metrics.csv and curves.png; a full disk or a vanished folder gives a clear error (after the checkpoint)."""
    path = os.path.join(logs_dir, "metrics.csv")
    try:
        _write_metrics(path, history)
        path = os.path.join(logs_dir, "curves.png")
        figures.plot_curves(history, path)
    except OSError as error:
        raise UsageError(f"Cannot write {path}: {error.strerror or error}. The checkpoint of this epoch was "
                         f"saved before it; free some space and resume from it.") from None


def _write_metrics(path, history):
    with replacing(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: row.get(key, "") for key in METRICS_COLUMNS})


@contextlib.contextmanager
def replacing(path, **open_options):
    """Write a text file through ``path + '.tmp'``, renamed over ``path`` at the end: a crash leaves the old file
    or the new one, never half of one; the temporary file is removed when writing fails."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w", **open_options) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
