"""Signals during training: SIGINT, SIGTERM and SIGHUP become a request to stop at the next step boundary and
save."""
import errno
import os
import signal
import threading

import torch

from . import distributed

# SIGHUP: the terminal went away (a dropped SSH session). It does not exist on Windows.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the epoch loop checks after each step, so the run can save and
    exit.

    A signal the process was started to ignore stays ignored: ``nohup`` ignores SIGHUP so that a run outlives
    its terminal, and a shell starts background jobs with SIGINT ignored. On leaving, every handler is
    restored to what it was, whatever that was. Handlers can only be set in the main thread; elsewhere
    nothing is installed and the flag stays down.

    Under torchrun the flag is agreed across processes at every check (``device`` holds the tensor the
    processes exchange): a signal that reaches one process, or reaches them at different steps, stops all of
    them at the same step, where a lone stop would leave the others waiting in DDP's gradient all-reduce.
    """

    def __init__(self, device=None):
        self.signal_name = None
        self.device = device
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN or current is None:  # None: a handler set outside Python
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if signum == getattr(signal, "SIGHUP", None):
            silence_hung_up_terminal()

    def __bool__(self):
        if distributed.is_distributed():
            signum = signal.Signals[self.signal_name].value if self.signal_name else 0
            agreed = torch.tensor([signum], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            if agreed.item() and self.signal_name is None:
                self.signal_name = signal.Signals(int(agreed.item())).name
        return self.signal_name is not None


def silence_hung_up_terminal():
    """Point stdout and stderr at /dev/null when they are a terminal that has hung up.

    After an SSH session drops, every write to its terminal fails with EIO; a progress line printed before
    the checkpoint is saved would then end the run without saving. log.txt keeps its copy of the output.
    Returns the file descriptors redirected.
    """
    import termios  # POSIX only, like SIGHUP

    redirected = []
    for descriptor in (1, 2):
        try:
            termios.tcgetattr(descriptor)
            continue  # a live terminal
        except termios.error as error:
            if error.args[0] != errno.EIO:  # not a terminal at all (a file, a pipe)
                continue
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, descriptor)
        finally:
            os.close(null)
        redirected.append(descriptor)
    return redirected
