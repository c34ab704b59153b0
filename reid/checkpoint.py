"""Checkpoints: plain dicts written atomically and read back without running any pickled code."""
import os
import re
import tempfile
import warnings

import torch

from .errors import UsageError


def trained_input_size(state):
    """The (height, width) a training checkpoint was trained at, from the run's saved arguments; None when the
    checkpoint does not record it."""
    try:
        return int(state["args"]["height"]), int(state["args"]["width"])
    except (KeyError, TypeError, ValueError):
        return None


def save(state, path):
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and only then renamed
    over ``path`` (an atomic replace on POSIX). On failure (a full disk, say) the temporary file is removed,
    the previous checkpoint is untouched, and a UsageError says so.
    """
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise UsageError(f"Could not write the checkpoint {path}: {error.strerror or error}. "
                             f"The previous checkpoint in that folder is intact; free some space or "
                             f"choose another --logs-dir and resume from it.") from None
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path):
    """Read a checkpoint with ``weights_only=True``: tensors and plain types only, never code."""
    if not os.path.isfile(path):
        raise UsageError(f"The checkpoint {path} does not exist (--resume / --checkpoint expects a "
                         f"checkpoint.pth.tar or model_best.pth.tar written by main.py).")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a garbage file: see below
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        code = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
        if code:
            raise UsageError(
                f"Could not load the checkpoint {path}: it refers to the Python object {code[1]}, not only to "
                f"tensors and plain values, and is refused because unpickling it could run code. Use a "
                f"checkpoint written by this project's main.py.") from None
        raise UsageError(f"Could not load the checkpoint {path}: it is damaged or not a PyTorch checkpoint "
                         f"({_reason(error)}).") from None


def _reason(error):
    """The informative part of a torch.load error: the unpickler's complaint, without torch's advice to
    load with weights_only=False or its terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if detail:
        return detail[1].strip().rstrip(".")
    return text.splitlines()[0].rstrip(".") if text else f"{type(error).__name__}: the file is empty or cut short"
