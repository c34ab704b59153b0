"""The files of a run folder (--logs-dir): the folder's checks and its claim, ``log.txt`` (a copy of stdout),
``run.json`` (what repeats the run), ``metrics.csv`` and ``curves.png``. Checkpoints are ``reid.checkpoint``'s,
``results.json`` is ``reid.evaluator``'s."""
import contextlib
import csv
import datetime
import errno
import importlib.metadata
import json
import os
import secrets
import platform
import subprocess
import sys

import torch
import torchvision

from . import checkpoint, figures
from .errors import UsageError
from .losses import TERMS

try:
    import fcntl
except ImportError:  # Windows: no flock, so two runs started at once into one folder are not told apart
    fcntl = None

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
    if not present or overwrite or continues(folder, resume, evaluate):
        return
    raise UsageError(
        f"The logs folder {folder} (--logs-dir/--log) already holds a run ({', '.join(present)}), which this "
        f"command would replace. Continue that run with --resume {os.path.join(folder, 'checkpoint.pth.tar')}, "
        f"write to another --logs-dir, or add --overwrite to start over and replace its files.")


def continues(folder, resume, evaluate=False):
    """True when ``resume`` is a checkpoint in ``folder`` and the run trains on from it (not only evaluates it)."""
    return bool(resume) and not evaluate and os.path.dirname(os.path.abspath(resume)) == os.path.abspath(folder)


def claim_logs_dir(folder, resume=None, evaluate=False, overwrite=False):
    """Claim ``folder`` (--logs-dir) for this run: its log.txt, opened for appending, with an exclusive lock on it
    that the caller holds until the run ends (closing the file, or the process ending in any way, releases it).

    The lock comes before ``check_logs_dir_is_free``, so that the check and the claim are one step: of two runs
    started at once into one folder, the second is refused here and writes nothing there.
    """
    log_path = os.path.join(folder, "log.txt")
    try:
        os.makedirs(folder, exist_ok=True)
        log = open(log_path, "a", buffering=1, errors="backslashreplace")
    except OSError as error:
        raise UsageError(f"Cannot write to the logs folder {folder} (--logs-dir/--log): "
                         f"{error.strerror or error}. Choose a folder you can write to.") from None
    try:
        _lock(log, folder)
        check_logs_dir_is_free(folder, resume, evaluate, overwrite)
    except BaseException:
        log.close()
        raise
    return log


def _lock(log, folder):
    if fcntl is None:
        return
    try:
        fcntl.flock(log.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"The logs folder {folder} (--logs-dir/--log) is in use by another run right now (it holds the lock on "
            f"{log.name}): this command would mix its files with that run's. Write to another --logs-dir, or wait "
            f"until that run has ended and continue it with --resume {os.path.join(folder, 'checkpoint.pth.tar')}."
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        print(f"note: the file system of {folder} does not support locks ({error.strerror}); a second run started "
              f"into it while this one runs would not be refused.")


RUN_RECORD = "run.json"
RECORDS = (RUN_RECORD, "results.json", "checkpoint.pth.tar")  # where --rerun finds a run's settings, best first


def write_run_record(folder, config, record):
    """Write ``run.json`` into ``folder`` atomically: what this start of the run was asked to do (``record``:
    main.py's parsed flags and which were given), its settings, command line, working folder and software versions.

    A run continued in its own folder keeps the records of its earlier starts, oldest first, under ``earlier``.
    """
    path = os.path.join(folder, RUN_RECORD)
    entry = {**record, "argv": list(config.command), "cwd": os.getcwd(),
             "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "versions": software_versions(), "config": config.to_dict()}
    if continues(folder, config.resume, config.evaluate) and os.path.isfile(path):
        try:
            with open(path) as handle:
                previous = json.load(handle)
            earlier = previous.pop("earlier", [])
            entry["earlier"] = [*earlier, previous] if isinstance(earlier, list) else [previous]
        except (OSError, ValueError, AttributeError) as error:
            print(f"note: the earlier {path} could not be read ({error}); it is replaced without its history")
    try:
        with replacing(path) as handle:
            json.dump(entry, handle, indent=2)
            handle.write("\n")
    except OSError as error:
        raise UsageError(f"Cannot write {path}: {error.strerror or error}. Free some space, or choose another "
                         f"--logs-dir.") from None


def software_versions():
    """The versions a run depends on: this code's (``code_version``), Python's, PyTorch's and torchvision's."""
    return {"code": code_version(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}


def code_version():
    """``git describe --always --dirty --tags`` when this package runs from a git checkout, else the installed
    package's version, else "unknown"; never an error (git may be absent)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(root, ".git")):
        try:
            result = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            if result.returncode == 0 and result.stdout.strip():
                return f"git {result.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return importlib.metadata.version("dsp-reid")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_run_settings(folder):
    """What the run in ``folder`` (--rerun) was asked to do: ``(path, settings)`` from the first of ``RECORDS``
    the folder holds. ``settings`` has ``args`` (main.py's flags by argparse destination) and ``explicit`` (those
    given on its command line), or, for runs from before run.json, ``command`` (its recorded command line) or
    ``args`` alone (format-1 runs, which only knew the paper's recipe)."""
    if not os.path.isdir(folder):
        raise UsageError(f"--rerun {folder}: there is no such folder; give the --logs-dir of an earlier run.")
    present = [name for name in RECORDS if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise UsageError(f"--rerun {folder}: the folder holds none of {', '.join(RECORDS)}, the files that record a "
                         f"run's settings; give the --logs-dir of an earlier run.")
    path = os.path.join(folder, present[0])
    if present[0] == "checkpoint.pth.tar":
        settings = _settings_of(checkpoint.read(path).run)
    else:
        record = _read_json(path)
        settings = record if "args" in record and present[0] == RUN_RECORD else _settings_of(record.get("config",
                                                                                                        record))
    if not (isinstance(settings.get("args"), dict) and isinstance(settings.get("explicit", []), list)
            or _is_command(settings.get("command"))):
        raise UsageError(f"{path} (--rerun) records no command line or flags of its run; expected the file main.py "
                         f"writes into its --logs-dir.")
    return path, settings


def _settings_of(run):
    """``read_run_settings``'s settings of a ``RunConfig.to_dict()`` (or an older results.json's record)."""
    if not isinstance(run, dict):
        return {}
    if _is_command(run.get("command")):
        return {"command": run["command"]}
    old_args = run.get("format_1_args", run.get("args"))
    return {"args": old_args, "explicit": []} if isinstance(old_args, dict) else {}


def _is_command(value):
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UsageError(f"Cannot read {path} (--rerun): {getattr(error, 'strerror', None) or error}. Expected the "
                         f"JSON file main.py writes into its --logs-dir.") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path} (--rerun) holds a JSON {type(record).__name__}, not the record of a run.")
    return record


def warn(message):
    """Print ``warning: message`` on stderr and, during a run (when stdout is its ``Tee``), into log.txt."""
    line = f"warning: {message}\n"
    sys.stderr.write(line)
    sys.stderr.flush()
    if isinstance(sys.stdout, Tee):
        sys.stdout._to_log("write", line)


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
    with replacing_path(path, f"{path}.tmp") as temporary, open(temporary, "w", **open_options) as handle:
        yield handle


@contextlib.contextmanager
def replacing_path(path, temporary=None):
    """A temporary path to write ``path`` through (by default a new hidden name next to it), renamed over
    ``path`` when the block succeeds and removed when it fails: a crash leaves the old file or the new one, and
    a link at ``path`` is replaced, never written through."""
    if temporary is None:
        folder, name = os.path.split(path)
        temporary = os.path.join(folder, f".tmp-{secrets.token_hex(8)}-{name}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
