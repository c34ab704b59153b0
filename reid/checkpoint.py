"""Checkpoints: the ``Checkpoint`` schema, written atomically as a plain dict and read back without running
any pickled code."""
import contextlib
import errno
import glob
import io
import os
import pickletools
import re
import secrets
import shutil
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields

import torch

from .config import DEFAULT_INPUT_SIZE, ModelConfig
from .errors import UsageError


FORMAT = 2


@dataclass
class Checkpoint:
    """What a training checkpoint holds; ``to_dict``/``from_dict`` are its one on-disk schema.

    ``model_config`` and ``input_size`` rebuild the model and its input; ``epoch``/``step`` say where training
    stands (``step`` > 0: inside epoch ``epoch + 1``, with the figures so far in ``partial``); ``optimizer``
    (its groups' ``initial_lr`` and ``lr`` set the schedule), ``scaler``, ``rng``, ``history`` and ``best`` make
    a resumed run continue exactly;
    ``run`` records the settings of the run that wrote it (``RunConfig.to_dict()``).
    """

    model_config: ModelConfig
    model: dict
    input_size: tuple = DEFAULT_INPUT_SIZE
    pretrained: bool = False
    epoch: int = 0
    step: int = 0
    partial: dict = None
    optimizer: dict = None
    scaler: dict = None
    rng: dict = None
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"mAP": -1.0, "epoch": 0})
    run: dict = field(default_factory=dict)

    @property
    def finished(self):
        """True when no epoch was left half done (``step`` 0)."""
        return not self.step

    def to_dict(self):
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["model_config"] = asdict(self.model_config)
        record["input_size"] = list(self.input_size)
        return {"format": FORMAT, **record}

    @classmethod
    def from_dict(cls, state, source):
        """Read a checkpoint dict of this format or of format 1 (arch, model_options, args: before Nov 2026).

        Anything else (a bare tensor, a torchvision state_dict, entries of the wrong type) is a UsageError
        naming ``source``.
        """
        if not isinstance(state, dict):
            raise UsageError(f"{source} holds a {type(state).__name__}, not a checkpoint written by this "
                             f"project's main.py (a dict with the model, its settings and the training state).")
        if isinstance(state.get("format"), int) and state["format"] > FORMAT:
            raise UsageError(f"{source} is a checkpoint of format {state['format']}, written by a newer version of "
                             f"this project than this one (format {FORMAT}); update the code to read it.")
        if state.get("format") != FORMAT and not {"arch", "model_options"} <= set(state):
            shown = ", ".join(sorted(map(str, state))[:6]) or "none"
            raise UsageError(f"{source} is not a checkpoint written by this project's main.py: it has no model "
                             f"settings (its entries: {shown}). ImageNet weights go to --pretrained-path.")
        try:
            values = _format_2(state) if state.get("format") == FORMAT else _format_1(state)
            checkpoint = cls(**values)
            checkpoint._check()
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"{source} is not a usable checkpoint of this project's main.py: "
                             f"{_describe(error)}.") from None
        return checkpoint

    def _check(self):
        config = self.model_config
        if not isinstance(self.model, dict) or not self.model:
            raise ValueError("its 'model' entry is not a state_dict")
        if not isinstance(config.num_classes, int) or config.num_classes < 1:
            raise ValueError(f"its model has {config.num_classes!r} classes")
        for name in ("epoch", "step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"its '{name}' is {value!r}, not a count")
        height, width = self.input_size
        if not all(isinstance(v, int) and v >= 16 for v in (height, width)):
            raise ValueError(f"its input size is {self.input_size!r}")


def _format_2(state):
    values = {key: state[key] for key in (f.name for f in fields(Checkpoint)) if key in state}
    values["model_config"] = ModelConfig.from_dict(state["model_config"])
    values["input_size"] = tuple(state.get("input_size", DEFAULT_INPUT_SIZE))
    values["model"] = state["model"]
    return values


def _format_1(state):
    """The checkpoints written before the schema had a version: the model from ``arch`` and ``model_options``,
    the input size from the run's saved argparse values."""
    options = dict(state["model_options"])
    config = ModelConfig.from_dict({"arch": state["arch"], **options})
    saved_args = state.get("args") or {}
    size = (saved_args.get("height"), saved_args.get("width"))
    values = {key: state[key] for key in ("model", "pretrained", "epoch", "optimizer", "scaler", "rng", "history",
                                          "best") if state.get(key) is not None}
    values.update(model_config=config, step=state.get("step") or 0, partial=state.get("partial"),
                  input_size=tuple(int(v) for v in size) if None not in size else DEFAULT_INPUT_SIZE,
                  run={"format_1_args": saved_args})
    return values


def _describe(error):
    if isinstance(error, KeyError):
        return f"it has no {error.args[0]!r} entry"
    return str(error)


def read(path):
    """The ``Checkpoint`` in the file ``path`` (loaded safely, see ``load``)."""
    return Checkpoint.from_dict(load(path), path)


def write(checkpoint, path):
    """Save ``checkpoint`` atomically to ``path`` (see ``save``)."""
    save(checkpoint.to_dict(), path)


def save(state, path):
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file ``.tmp-*.pth.tar`` in the same folder, created as ``open`` creates files
    (its mode follows the umask, like every other output), flushed and fsynced, and only then renamed over
    ``path`` (an atomic replace on POSIX). On failure the temporary file is removed and the previous checkpoint
    is untouched; a full disk, a quota or a vanished folder is a UsageError that says so.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{TEMPORARY_SUFFIX}")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        _remove_if_present(temporary)
        if isinstance(error, OSError) or _is_short_write(error):
            raise _write_error(path, error) from None
        raise
    _sync_folder(folder)


def load(path):
    """Read a checkpoint with ``weights_only=True``: tensors and plain types only, never code."""
    return load_safely(path, "checkpoint", "a checkpoint.pth.tar or model_best.pth.tar written by this "
                                           "project's main.py (--resume / --checkpoint)")


def _reason(error):
    """Why ``torch.load`` could not read a file, in a few words: the zip reader's complaint without PyTorch's
    source location, else what the exception type says. Never torch's advice to load with weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    if isinstance(error, OSError):
        return error.strerror or text or type(error).__name__
    if isinstance(error, RuntimeError) and text and "weights_only" not in text:
        text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.splitlines()[0])
        return text.split(". ")[0].rstrip(".")
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    return "its contents are not what torch.save writes"


TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".tmp-", ".pth.tar"
# What an interrupted atomic write leaves in a logs folder: ``save``'s temporaries and those of results.json
# (reid.evaluator.write_results), metrics.csv (reid.experiment) and per_query*.csv (reid.evaluator.write_per_query).
STALE_TEMPORARIES = (f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}", "results.json.tmp", "metrics.csv.tmp",
                     "per_query*.csv.tmp")
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Modules whose objects every checkpoint refers to: named last when saying what a refused file holds.
_CHECKPOINT_MODULES = ("torch", "collections", "_codecs")


def remove_stale_temporaries(folder):
    """Delete what a killed process left half-written in ``folder`` (see ``STALE_TEMPORARIES``); return the
    removed paths.

    Call it when a run starts, before anything writes into the folder. A file that cannot be removed is left
    in place: it only takes disk space, and the next save uses a fresh name.
    """
    removed = []
    for pattern in STALE_TEMPORARIES:
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def load_safely(path, what, expected):
    """``torch.load(path, weights_only=True)`` on the CPU; every failure is one UsageError naming the file.

    ``what`` names the file in messages ("checkpoint", "pretrained weights file") and ``expected`` says what
    should be there. A file whose pickle refers to other Python objects (code, a whole pickled model, numpy
    arrays) is refused as such, without a word about switching the protection off.
    """
    if not os.path.isfile(path):
        problem = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"The {what} {path} {problem}; expected {expected}.")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: see below
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        objects = None if isinstance(error, (OSError, MemoryError)) else _pickled_objects(path)
        if objects:
            raise UsageError(
                f"Could not load the {what} {path}: it contains code or Python objects that a {what} does not "
                f"need (it refers to {_most_telling(objects)}), so it was not loaded: unpickling such objects "
                f"could run code. Expected {expected}.") from None
        raise UsageError(f"Could not load the {what} {path}: it is not a file written by torch.save, or it is "
                         f"damaged ({_reason(error)}). Expected {expected}.") from None


def _pickled_objects(path):
    """The Python objects ("module.name") that the pickled data in the file ``path`` refers to, found by
    parsing it with ``pickletools`` (which runs nothing): in ``data.pkl`` of a zip checkpoint, or in the
    pickles a legacy or plain pickle file starts with. Empty when the file holds no well-formed pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
                return _referenced_globals(io.BytesIO(archive.read(pickles[0]))) if pickles else []
        with open(path, "rb") as stream:
            return _referenced_globals(stream)
    except Exception:  # a damaged archive fails in assorted ways: then it holds no readable pickle
        return []


def _referenced_globals(stream):
    """The globals that the consecutive pickles at the start of ``stream`` refer to (GLOBAL, INST, and
    STACK_GLOBAL with the two strings pushed before it); parsing stops at the first malformed pickle."""
    found, strings = [], []
    while True:
        in_this_pickle = []
        try:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    in_this_pickle.append(argument.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    in_this_pickle.append(".".join(strings[-2:]) if len(strings) >= 2 else "an unnamed object")
                if isinstance(argument, str):
                    strings.append(argument)
        except Exception:  # malformed data or the end of the file, reported with assorted exception types
            return found
        found.extend(in_this_pickle)


def _most_telling(objects):
    """The first referenced object outside the modules every checkpoint uses, else the first one."""
    foreign = [name for name in objects if name.split(".")[0] not in _CHECKPOINT_MODULES]
    return (foreign or objects)[0]


def _is_short_write(error):
    """True for PyTorch's zip writer failing because the file system took fewer bytes than it was given (a
    full disk or a file-size limit): a RuntimeError "[enforce fail at inline_container.cc ...]", not OSError."""
    return isinstance(error, RuntimeError) and any(
        marker in str(error) for marker in ("inline_container", "PytorchStreamWriter"))


def _write_error(path, error):
    """The UsageError for a failed checkpoint write: what went wrong, what is still intact, what to do."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return UsageError(f"Could not write the checkpoint {path}: its folder {folder} no longer exists (was it "
                          f"deleted or unmounted during the run?). Nothing was saved.")
    out_of_space = not isinstance(error, OSError) or error.errno in _OUT_OF_SPACE
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        reason = "the file system took only part of the data (a full disk, a quota or a file-size limit)"
    if out_of_space:
        with contextlib.suppress(OSError):
            reason += f"; {shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB are free there"
    kept = ("The previous checkpoint in that folder is intact" if os.path.exists(path)
            else "No earlier file of that name was there, so nothing was lost")
    remedy = ("free some space, or choose another --logs-dir," if out_of_space
              else "choose a --logs-dir you can write to")
    return UsageError(f"Could not write the checkpoint {path}: {reason}. {kept}; {remedy} and resume from the "
                      f"last checkpoint.")


def _remove_if_present(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_folder(folder):
    """fsync the folder so that the rename itself survives a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
