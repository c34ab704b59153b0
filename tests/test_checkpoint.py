"""reid.checkpoint's file layer: atomic saves that survive a full disk, stale temporaries, and loading that
never runs pickled code and explains every refusal in one paragraph."""
import os
import pickle
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from reid import checkpoint, models
from reid.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNSAFE_ADVICE = ("weights_only", "Re-running", "trusted source", "add_safe_globals")


def test_save_and_load_round_trip(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "args": {"lr": 0.1, "name": "x", "flags": [1, 2]}}
    checkpoint.save(state, path)
    loaded = checkpoint.load(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"], "no temporary file is left behind"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_checkpoint_gets_the_file_mode_open_gives_every_other_output(tmp_path, umask):
    previous = os.umask(umask)
    try:
        checkpoint.save({"epoch": 1}, str(tmp_path / "checkpoint.pth.tar"))
        (tmp_path / "metrics.csv").write_text("epoch\n")
    finally:
        os.umask(previous)
    mode = os.stat(tmp_path / "checkpoint.pth.tar").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "metrics.csv").st_mode & 0o777


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth.tar")
    checkpoint.save({"epoch": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UsageError, match="No space left on device.*previous checkpoint in that folder is intact"):
        checkpoint.save({"epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]


FILLS_THE_DISK = """
import resource, signal, sys, torch
from reid import checkpoint
from reid.errors import UsageError

path = sys.argv[1]
checkpoint.save({"epoch": 1, "weights": torch.ones(10)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    checkpoint.save({"epoch": 2, "weights": torch.zeros(1_000_000)}, path)
except UsageError as error:
    print(error)
    sys.exit(2)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_a_disk_that_fills_up_during_the_write_gives_one_message_and_keeps_the_previous_checkpoint(tmp_path):
    """PyTorch's zip writer reports a short write as RuntimeError "[enforce fail at inline_container.cc ...]",
    not as OSError; a file-size limit makes the real writer fail exactly as a full disk does."""
    path = tmp_path / "checkpoint.pth.tar"
    result = subprocess.run([sys.executable, "-c", FILLS_THE_DISK, str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"Could not write the checkpoint {path}: the file system took only part of the data")
    assert "The previous checkpoint in that folder is intact" in message and "\n" not in message
    assert "enforce fail" not in message and "Traceback" not in result.stderr
    saved = checkpoint.load(str(path))
    assert saved["epoch"] == 1 and torch.equal(saved["weights"], torch.ones(10))
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"], "the temporary file is removed"


def test_a_folder_that_vanished_is_named(tmp_path):
    folder = tmp_path / "logs"
    with pytest.raises(UsageError, match=f"its folder {folder} no longer exists"):
        checkpoint.save({"epoch": 1}, str(folder / "checkpoint.pth.tar"))


@pytest.mark.parametrize("failure", [KeyboardInterrupt, pickle.PicklingError])
def test_an_interrupted_or_failing_save_removes_its_temporary_file_and_raises_on(tmp_path, monkeypatch, failure):
    """Ctrl-C during a save, and a save that fails for a reason other than the disk (a bug), propagate as they
    are; either way the temporary file goes and the previous checkpoint stays."""
    path = str(tmp_path / "checkpoint.pth.tar")
    checkpoint.save({"epoch": 1}, path)
    real_save = torch.save

    def fail_halfway(state, handle, *args, **kwargs):
        real_save(state, handle, *args, **kwargs)
        raise failure("stopped")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(failure):
        checkpoint.save({"epoch": 2}, path)
    assert os.listdir(tmp_path) == ["checkpoint.pth.tar"]
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1


def test_stale_temporaries_of_a_killed_process_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "logs [run 1]"  # glob characters in the folder name are taken literally
    folder.mkdir()
    stale = [".tmp-k3x9q2ab.pth.tar", ".tmp-0123abcd.pth.tar", "results.json.tmp", "metrics.csv.tmp"]
    kept = ["checkpoint.pth.tar", "model_best.pth.tar", "results.json", "metrics.csv", "notes.tmp",
            "tmp-x.pth.tar"]
    for name in stale + kept:
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / ".tmp-inner.pth.tar").write_bytes(b"x")
    removed = checkpoint.remove_stale_temporaries(str(folder))
    assert sorted(os.path.basename(path) for path in removed) == sorted(stale)
    assert sorted(os.listdir(folder)) == sorted(kept + ["sub"])
    assert (folder / "sub" / ".tmp-inner.pth.tar").exists()
    assert checkpoint.remove_stale_temporaries(str(tmp_path / "missing")) == []


# Loading ----------------------------------------------------------------------------------------------------

class RunsACommand:
    """The classic malicious pickle: unpickling it calls ``os.system``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_zip(state, path):
    torch.save(state, path)


def write_legacy(state, path):
    torch.save(state, path, _use_new_zipfile_serialization=False)


def write_plain_pickle(state, path):
    with open(path, "wb") as handle:
        pickle.dump(state, handle)


def assert_one_safe_paragraph(message):
    assert "\n" not in message, message
    for advice in UNSAFE_ADVICE:
        assert advice not in message, message


@pytest.mark.parametrize("write", [write_zip, write_legacy, write_plain_pickle])
def test_a_pickle_that_runs_code_is_refused_as_such_and_never_runs(tmp_path, write):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    write({"model": RunsACommand(f"touch {marker}"), "epoch": 1}, path)
    with pytest.raises(UsageError) as refused:
        checkpoint.load(str(path))
    message = str(refused.value)
    assert message.startswith(f"Could not load the checkpoint {path}: it contains code or Python objects that a "
                              f"checkpoint does not need (it refers to {os.system.__module__}.system), so it was "
                              f"not loaded")
    assert "damaged" not in message
    assert_one_safe_paragraph(message)
    assert not marker.exists()


def test_objects_a_checkpoint_does_not_need_are_named(tmp_path):
    path = tmp_path / "numpy.pth.tar"
    torch.save({"model": {"w": np.zeros(3)}}, path)
    with pytest.raises(UsageError, match=r"it refers to numpy\.") as refused:
        checkpoint.load(str(path))
    assert_one_safe_paragraph(str(refused.value))


def real_checkpoint_bytes(tmp_path):
    path = tmp_path / "good.pth.tar"
    torch.save({"model": {"w": torch.ones(1000)}, "epoch": 1}, path)
    return path.read_bytes()


def other_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


@pytest.mark.parametrize("make", [
    lambda path, good: path.write_bytes(b""),
    lambda path, good: path.write_bytes(b"garbage"),
    lambda path, good: path.write_text("epoch: 1\nmodel: weights\n"),
    lambda path, good: path.write_bytes(good[: len(good) // 2]),
    lambda path, good: path.write_bytes(good[:200] + bytes(50) + good[250:]),
    lambda path, good: other_zip(path),
], ids=["empty", "garbage", "text", "cut short", "overwritten bytes", "another zip"])
def test_a_junk_file_gets_one_paragraph(tmp_path, make):
    path = tmp_path / "bad.pth.tar"
    make(path, real_checkpoint_bytes(tmp_path))
    with pytest.raises(UsageError) as refused:
        checkpoint.load(str(path))
    message = str(refused.value)
    assert message.startswith(f"Could not load the checkpoint {path}: it is not a file written by torch.save, or "
                              f"it is damaged (")
    assert message.endswith("written by this project's main.py (--resume / --checkpoint).")
    assert_one_safe_paragraph(message)


def test_missing_checkpoints_and_folders_are_named(tmp_path):
    with pytest.raises(UsageError, match="missing.pth.tar does not exist; expected a checkpoint.pth.tar"):
        checkpoint.load(str(tmp_path / "missing.pth.tar"))
    with pytest.raises(UsageError, match="is a folder; expected"):
        checkpoint.load(str(tmp_path))


# --pretrained-path goes through the same safe loading -----------------------------------------------------

def test_pretrained_weights_that_run_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": RunsACommand(f"touch {marker}")}, path)
    with pytest.raises(UsageError) as refused:
        models.create("resnet18", num_classes=3, pretrained_path=str(path))
    message = str(refused.value)
    assert message.startswith(f"Could not load the pretrained weights file {path}: it contains code or Python "
                              f"objects that a pretrained weights file does not need")
    assert "--pretrained-path" in message
    assert_one_safe_paragraph(message)
    assert not marker.exists()


def test_a_whole_pickled_model_as_pretrained_weights_names_its_class(tmp_path):
    path = tmp_path / "resnet18-model.pth"
    torch.save(torchvision.models.resnet18(), path)
    with pytest.raises(UsageError, match=r"it refers to torchvision\.models\.resnet\.ResNet"):
        models.create("resnet18", num_classes=3, pretrained_path=str(path))


@pytest.mark.parametrize("content, expected", [
    (b"", "it is not a file written by torch.save, or it is damaged (the file is empty or cut short)"),
    (torch.ones(3), "holds a Tensor that is not a state_dict"),
    ({"fc.weight": torch.ones(2), "version": 2}, "holds a dict that is not a state_dict"),
])
def test_pretrained_weights_that_are_not_a_state_dict_get_one_paragraph(tmp_path, content, expected):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UsageError, match=re.escape(expected)) as refused:
        models.create("resnet18", num_classes=3, pretrained_path=str(path))
    assert_one_safe_paragraph(str(refused.value))
