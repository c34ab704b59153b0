"""Checkpoints: plain dicts written atomically and read back without running any pickled code."""
import os
import tempfile

import torch

from .errors import UsageError


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
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"Could not load the checkpoint {path}: it is damaged, not a PyTorch checkpoint, or holds "
            f"objects other than tensors and plain values, which are refused because unpickling them could "
            f"run code ({first_line}).") from None
