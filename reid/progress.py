"""Progress of long loops: a tqdm bar on a terminal, plain lines everywhere else.

A tqdm bar redraws itself with carriage returns. Written to a file (``main.py ... > run.log 2>&1``, a job
scheduler's log, a notebook reading a pipe) every redraw stays in it, and tools that split on carriage returns
show each one as a line. So when stderr is not a terminal, ``progress_bar`` returns a ``PlainProgress``, which
prints one line every ``every`` steps and at the last step, and nothing in between.
"""
import math
import sys
import time

from tqdm import tqdm

LINES_PER_LOOP = 10  # without ``every``: a line every tenth of the loop


def progress_bar(iterable=None, *, total=None, desc="", unit="it", initial=0, every=None, show=True):
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``) when stderr is a terminal, else a
    ``PlainProgress``; a silent pass-through when not ``show`` (the other processes under torchrun).

    ``initial`` steps are already done (a resumed epoch). ``every``: a plain line every that many steps; None
    for a line every tenth of ``total``.
    """
    if total is None and iterable is not None:
        total = len(iterable)
    if not show:
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every=every)


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class PlainProgress:
    """The part of tqdm's interface used here (iterating, ``update``, ``set_postfix``, ``close``, ``with``), which
    prints a line to ``file`` (stderr) after every ``every``-th step and after the last one, such as::

        epoch 1  step 20/270  loss 29.9613  acc 1.2%  img/s 96.0  ETA 0:46
        features  batch 53/53  done in 0:04
    """

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, every=None, file=None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.every = every or max(1, math.ceil((total or 0) / LINES_PER_LOOP))
        self.postfix = {}
        self.file = file if file is not None else sys.stderr
        self.started = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.close()

    def update(self, n=1):
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or (self.n == self.total and before != self.total):
            print(self.line(), file=self.file, flush=True)

    def set_postfix(self, ordered_dict=None, **values):
        """Values shown on the next line (as ``name value``), in their order."""
        self.postfix = {**(ordered_dict or {}), **values}

    def close(self):
        pass

    def line(self):
        parts = [self.desc] if self.desc else []
        parts.append(f"{self.unit} {self.n}/{self.total}" if self.total else f"{self.unit} {self.n}")
        parts += [f"{name} {value}" for name, value in self.postfix.items()]
        elapsed = time.perf_counter() - self.started
        if self.total and self.n >= self.total:
            parts.append(f"done in {tqdm.format_interval(elapsed)}")
        elif self.total and self.n > self.initial:
            remaining = elapsed / (self.n - self.initial) * (self.total - self.n)
            parts.append(f"ETA {tqdm.format_interval(remaining)}")
        return "  ".join(parts)
