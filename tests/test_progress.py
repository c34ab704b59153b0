"""Progress output: tqdm bars on a terminal, plain lines (no carriage returns) when stderr is a file or a pipe."""
import io
import os
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from reid import datasets
from reid.progress import PlainProgress, progress_bar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_file_gets_plain_lines(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(range(3), desc="epoch 1", unit="step")
    assert isinstance(bar, tqdm)
    for step in bar:
        bar.set_postfix({"loss": f"{step:.4f}", "acc": "1.0%"})
    bar.close()
    assert "\r" in terminal.getvalue() and "loss=2.0000, acc=1.0%" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(range(3), desc="features"), PlainProgress)


def test_a_hidden_bar_writes_nothing_anywhere(monkeypatch):
    for stream in (Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        with progress_bar(total=5, show=False) as bar:
            bar.update(5)
        assert list(progress_bar(range(4), show=False)) == [0, 1, 2, 3]
        assert stream.getvalue() == ""


def test_plain_lines_come_every_n_steps_and_at_the_last_one():
    out = io.StringIO()
    bar = PlainProgress(range(23), total=23, desc="epoch 1", unit="step", every=5, file=out)
    for step in bar:
        bar.set_postfix({"loss": f"{30 - step:.4f}", "acc": "1.0%", "img/s": "96.0"})
    lines = out.getvalue().splitlines()
    assert [re.search(r"step (\d+)/23", line).group(1) for line in lines] == ["5", "10", "15", "20", "23"]
    assert lines[0].startswith("epoch 1  step 5/23  loss 26.0000  acc 1.0%  img/s 96.0  ETA ")
    assert "done in " in lines[-1] and "ETA" not in lines[-1]
    assert "\r" not in out.getvalue()


def test_without_every_a_line_comes_every_tenth_even_when_updated_by_more_than_one():
    out = io.StringIO()
    with PlainProgress(total=100, desc="indexing", unit="img", file=out) as bar:
        for _ in range(4):
            bar.update(min(32, 100 - bar.n))
    assert [line.split("  ")[1] for line in out.getvalue().splitlines()] == [
        "img 32/100", "img 64/100", "img 96/100", "img 100/100"]


def test_a_resumed_epoch_counts_from_where_it_stopped():
    out = io.StringIO()
    bar = PlainProgress(range(6), total=10, desc="epoch 2", unit="step", initial=4, every=3, file=out)
    assert list(bar) == list(range(6))
    assert [line.split("  ")[1] for line in out.getvalue().splitlines()] == ["step 6/10", "step 9/10",
                                                                            "step 10/10"]


@pytest.mark.slow
def test_a_run_written_to_a_file_has_one_line_per_print_freq_steps_and_no_redraws(tiny_args, tiny_synthetic,
                                                                                   tmp_path):
    """main.py with stdout and stderr in a file, as under nohup or a job scheduler. With --no-tensorboard the run
    folder gets no event files."""
    epochs, print_freq, batch = 2, 2, 16
    train = datasets.create("synthetic", str(tiny_synthetic), combine_trainval=True, verbose=False).train
    steps = len(train) // batch  # the sampler drops the last partial batch
    assert steps > print_freq, "the run must have steps between two lines"
    logs, output = tmp_path / "logs", tmp_path / "run.log"
    argv = tiny_args(tiny_synthetic, logs, "--epochs", str(epochs), "--eval-freq", "100", "--combine-trainval",
                     "--print-freq", str(print_freq), "--no-tensorboard")
    with open(output, "w") as handle:
        result = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
                                timeout=600)
    text = output.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text
    for epoch in range(1, epochs + 1):
        shown = re.findall(rf"^epoch {epoch}  step (\d+)/{steps}  loss [\d.]+  acc [\d.]+%  img/s [\d.]+  ",
                           text, re.MULTILINE)
        expected = [*range(print_freq, steps + 1, print_freq)]
        expected += [steps] if steps % print_freq else []
        assert [int(step) for step in shown] == expected, text
        assert f"Epoch {epoch}/{epochs}  loss" in text
    assert not [name for name in os.listdir(logs) if name.startswith("events.out.tfevents")]
