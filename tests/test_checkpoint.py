import os

import pytest
import torch

from reid import checkpoint
from reid.errors import UsageError


def test_save_and_load_round_trip(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "args": {"lr": 0.1, "name": "x", "flags": [1, 2]}}
    checkpoint.save(state, path)
    loaded = checkpoint.load(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"], "no temporary file is left behind"


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth.tar")
    checkpoint.save({"epoch": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UsageError, match="No space left on device.*previous checkpoint"):
        checkpoint.save({"epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]


class CreatesAFile:
    """Unpickling this object would run ``open(path, 'w')``: a stand-in for malicious code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"model": CreatesAFile(str(marker))}, path)
    with pytest.raises(UsageError, match="evil.pth.tar"):
        checkpoint.load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_damaged_or_missing_checkpoints_are_named(tmp_path, content):
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="bad.pth.tar"):
        checkpoint.load(str(path))
    with pytest.raises(UsageError, match="does not exist"):
        checkpoint.load(str(tmp_path / "missing.pth.tar"))
