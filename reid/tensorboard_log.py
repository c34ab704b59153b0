"""TensorBoard event files of a training run, written into its logs folder (``events.out.tfevents.*`` next to
``metrics.csv``), so that ``tensorboard --logdir logs/`` names each run by its folder.

The step of every tag is the epoch (1-based), as in ``metrics.csv``:

- ``Loss/total`` and ``Loss/<term>`` (``ce_parts``, ``ce_global``, ``ce_ds``, ``triplet``: the terms the loss has),
  ``Train/accuracy``, ``Train/images_per_second``, ``Train/seconds``: ``metrics.csv``'s columns;
- ``LR/<group>``: the learning rate of each optimiser group (``backbone``, ``new``) where ``metrics.csv`` reads
  its ``lr`` (the new layers'), after the epoch;
- ``Val/rank1``, ``Val/mAP``, ``Val/mINP`` or ``Test/<dataset>/...``: each evaluation, as fractions; the final
  one of each ``--test-dataset`` at the last epoch;
- the text ``settings``: the command and the resolved settings of the session, at the first epoch it trains.

A session opens its writer with ``purge_step`` at the first epoch it trains: TensorBoard then drops whatever an
interrupted session wrote past the checkpoint it resumes from, so each epoch is shown once. Every epoch's events
are flushed before its checkpoint is written, so no epoch is missing either.
"""
import json
import os
import shlex

from .errors import UsageError
from .figures import display_name
from .losses import TERMS


class RunBoard:
    """Writes a run's scalars through a ``SummaryWriter``; writes nothing when ``writer`` is None.

    The writer appends to its event file from a thread of its own, which fails with a traceback of its own when
    the folder is gone; so every write first checks that the folder is there, and a failure is a ``UsageError``
    naming the folder."""

    def __init__(self, writer=None):
        self.writer = writer

    def __enter__(self):
        return self

    def __exit__(self, error_type, *error):
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OSError as close_error:
            if error_type is None:
                raise self._write_error(close_error) from None

    def add_epoch(self, row, param_groups):
        """An epoch's ``metrics.csv`` row (without its evaluation) and the optimiser groups' learning rates."""
        if self.writer is None:
            return
        epoch = row["epoch"]
        scalars = {"Loss/total": row["loss"], **{f"Loss/{term}": row[term] for term in TERMS if term in row},
                   "Train/accuracy": row["accuracy"], "Train/images_per_second": row["images_per_second"],
                   "Train/seconds": row["seconds"]}
        scalars.update({f"LR/{group.get('name', index)}": group["lr"] for index, group in enumerate(param_groups)})
        self._add(scalars, epoch)

    def add_evaluation(self, epoch, results, dataset, split="test"):
        """rank-1, mAP and mINP of an evaluation: ``Val/...`` for the validation split, else
        ``Test/<dataset>/...``."""
        if self.writer is None:
            return
        prefix = "Val" if split == "val" else f"Test/{dataset}"
        self._add({f"{prefix}/{key}": results[key] for key in ("rank1", "mAP", "mINP")}, epoch)

    def _add(self, scalars, step):
        folder = self.writer.get_logdir()
        if not os.path.isdir(folder):
            raise self._write_error(FileNotFoundError(f"the folder {display_name(folder)} no longer exists"))
        try:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()
        except OSError as error:
            raise self._write_error(error) from None

    def _write_error(self, error):
        return UsageError(f"Could not write the TensorBoard events in {display_name(self.writer.get_logdir())}: "
                          f"{error}. Training stopped there. If the folder still holds checkpoint.pth.tar, make it "
                          "writable and resume from that checkpoint; otherwise start the run again.")


NO_BOARD = RunBoard()


def open_board(logs_dir, first_epoch, settings, enabled=True):
    """The ``RunBoard`` of a session that trains from epoch ``first_epoch`` (1-based) on, with ``settings``
    (``RunConfig.to_dict()``) as its text; one that writes nothing when not ``enabled`` (--no-tensorboard, or a
    process other than the main one)."""
    if not enabled:
        return NO_BOARD
    try:
        from torch.utils.tensorboard import SummaryWriter  # imported only when used: it loads tensorboard
    except ImportError:
        raise UsageError("TensorBoard logging needs the tensorboard package: pip install -r requirements.txt, or "
                         "train with --no-tensorboard.") from None
    writer = SummaryWriter(logs_dir, purge_step=first_epoch)
    writer.add_text("settings", settings_text(settings), first_epoch)
    writer.flush()
    return RunBoard(writer)


def settings_text(settings):
    """Markdown: the command, then every setting as indented (code-block) JSON."""
    command = display_name(shlex.join(settings.get("command", [])))
    body = json.dumps({key: value for key, value in settings.items() if key != "command"}, indent=2)
    return f"`{command}`\n\n" + "\n".join(f"    {line}" for line in body.splitlines())
