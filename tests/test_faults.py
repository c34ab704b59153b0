"""Faults and bad input: killed and interrupted runs, a diverging loss, files that would run code, broken
datasets, a full disk and impossible flags. Every failure must be one clear message and a non-zero exit, and
must never lose what was saved before it."""
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import main
import single_features_cam
import single_images_features_3
from reid import checkpoint, data, datasets, evaluator, experiment, images, losses, maps, models, trainer
from reid.datasets import synthetic
from reid.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # end to end through main.py: `pytest -m "not slow"` skips them
SIZE = ["--height", "96", "--width", "32"]
FEW_EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _checkpoint_bytes():
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "model": {"weight": torch.arange(6.0).view(2, 3)}, "args": {"lr": 0.1}}, buffer)
    return buffer.getvalue()


VALID_CHECKPOINT = _checkpoint_bytes()


def run_main(capsys, monkeypatch, argv):
    """``main.main(argv)`` as ``python main.py argv`` would run it: (exit code, stdout, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    code = main.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, *expected, exit_code=2):
    """Exit ``exit_code``, no traceback; for a usage error, one ``error: `` paragraph holding ``expected``
    (the lines before it are the progress bars)."""
    assert code == exit_code, err
    assert "Traceback" not in err and 'File "' not in err, err
    if exit_code == 2:
        err = err.strip().splitlines()[-1]
        assert err.startswith("error: "), err
    for text in expected:
        assert text in err, (text, err)


def metrics_rows(logs):
    with open(os.path.join(logs, "metrics.csv")) as handle:
        return list(csv.DictReader(handle))


def assert_same_run(expected_logs, logs):
    """Per-epoch loss, accuracy, rank-1 and mAP, and the final test metrics, equal to 1e-6."""
    expected, got = metrics_rows(expected_logs), metrics_rows(logs)
    assert [row["epoch"] for row in got] == [row["epoch"] for row in expected]
    for a, b in zip(expected, got):
        for key in ("loss", "accuracy", "lr", "rank1", "mAP"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), (a["epoch"], key)
    final = [json.loads((path / "results.json").read_text()) for path in (expected_logs, logs)]
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert final[0][key] == pytest.approx(final[1][key], abs=1e-6), key


# Killed and interrupted runs ------------------------------------------------------------------------------

def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint_that_resumes(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                     monkeypatch):
    logs = tmp_path / "logs"
    path = logs / "checkpoint.pth.tar"
    command = [sys.executable, "main.py", *tiny_args(tiny_synthetic, logs, "--epochs", "100", "--eval-freq", "1000")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists(), "no checkpoint was written"
        time.sleep(0.3)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = checkpoint.load(str(path))
    assert saved["epoch"] >= 1 and not saved["step"]
    epochs = str(saved["epoch"] + 1)
    code, out, err = run_main(capsys, monkeypatch, tiny_args(tiny_synthetic, logs, "--epochs", epochs,
                                                             "--eval-freq", "1000", "--resume", str(path)))
    assert code == 0, err
    assert f"resumed from {path}: epoch {saved['epoch']}" in out and f"Epoch {epochs}/{epochs}" in out
    assert checkpoint.load(str(path))["epoch"] == saved["epoch"] + 1
    assert (logs / "results.json").is_file()


KILLED_DURING_A_SAVE = """
import os, signal, sys, torch
from reid import checkpoint

path = sys.argv[1]
checkpoint.save({"epoch": 1, "weights": torch.ones(1000)}, path)
real_save = torch.save

def save_then_die(state, handle):
    real_save(state, handle)
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_die
checkpoint.save({"epoch": 2, "weights": torch.zeros(1000)}, path)
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    result = subprocess.run([sys.executable, "-c", KILLED_DURING_A_SAVE, str(path)], cwd=ROOT, timeout=120)
    assert result.returncode == -signal.SIGKILL
    saved = checkpoint.load(str(path))
    assert saved["epoch"] == 1 and torch.equal(saved["weights"], torch.ones(1000))


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler during the test. A background job or a CI runner may start pytest with SIGINT
    ignored, and ``StopRequest`` rightly keeps an ignored signal ignored; the test sends SIGINT itself."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupted_mid_epoch_and_resumed_equals_the_uninterrupted_run(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                        monkeypatch, python_sigint_handler,
                                                                        signal_after):
    """SIGTERM/SIGINT at several points of a 2-epoch run (3 steps an epoch): after a first step, after the
    last step of an epoch (the run then stops at the end of that epoch), in the second epoch, during the last
    evaluation. Each run resumes from the checkpoint the previous one left, and the last one ends with the
    same per-epoch figures and final metrics as a run never interrupted."""
    def argv(logs, *extra):
        return tiny_args(tiny_synthetic, logs, "--epochs", "2", "--step-size", "1", *extra)

    code, _, err = run_main(capsys, monkeypatch, argv(tmp_path / "whole"))
    assert code == 0, err
    logs = tmp_path / "interrupted"
    path = logs / "checkpoint.pth.tar"
    resume = ["--resume", str(path)]
    stops = [  # (what to wrap, after how many calls, signal, message, saved (epoch, step))
        ((trainer, "part_accuracy"), 1, signal.SIGTERM, "during epoch 1 after step 1", (0, 1)),
        ((trainer, "part_accuracy"), 2, signal.SIGINT, "after epoch 1", (1, 0)),
        ((trainer, "part_accuracy"), 2, signal.SIGTERM, "during epoch 2 after step 2", (1, 2)),
        ((evaluator, "evaluate"), 1, signal.SIGINT, "after epoch 2", (2, 0)),
    ]
    for number, ((owner, name), calls, signum, when, position) in enumerate(stops):
        with monkeypatch.context() as patch:
            signal_after(patch, owner, name, calls, signum)
            code, out, err = run_main(capsys, patch, argv(logs, *(resume if number else [])))
        assert_clean_error(code, err, f"Stopped by {signum.name} {when}; the checkpoint {path} holds that point",
                           exit_code=128 + signum)
        command = err.split("Resume with:\n", 1)[1].strip()
        assert command.endswith(f"main.py {' '.join(argv(logs))} --resume {path}"), command
        saved = checkpoint.load(str(path))
        assert (saved["epoch"], saved["step"]) == position
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers are restored"
        if number == 2:
            assert f"resumed from {path}: epoch 1\n" in out
    code, out, err = run_main(capsys, monkeypatch, argv(logs, *resume))
    assert code == 0, err
    assert_same_run(tmp_path / "whole", logs)


def test_a_mid_epoch_resume_with_loader_workers_replays_the_same_augmentations(tiny_args, tiny_synthetic, tmp_path,
                                                                               capsys, monkeypatch, signal_after):
    """With -j 1 the random flips are drawn in a worker process: each image's augmentation seed comes from the
    sampler, so the steps after a mid-epoch resume see the same flips as in the uninterrupted run."""
    def argv(logs, *extra):
        return tiny_args(tiny_synthetic, logs, "--epochs", "1", *extra, "-j", "1")

    code, _, err = run_main(capsys, monkeypatch, argv(tmp_path / "whole"))
    assert code == 0, err
    logs = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        signal_after(patch, trainer, "part_accuracy", 1, signal.SIGTERM)
        code, _, err = run_main(capsys, patch, argv(logs))
    assert code == 128 + signal.SIGTERM, err
    code, _, err = run_main(capsys, monkeypatch, argv(logs, "--resume", str(logs / "checkpoint.pth.tar")))
    assert code == 0, err
    assert_same_run(tmp_path / "whole", logs)


# Problems met during training ------------------------------------------------------------------------------

STRAY_FILES = ("Thumbs.db", "notes.txt", "0001_c1.jpg")


@pytest.fixture(scope="module")
def earlier_run(tiny_args, tiny_synthetic, tmp_path_factory):
    """One epoch trained on a copy of the tiny dataset holding a grayscale JPEG, an RGBA PNG and three files
    outside the naming scheme: (dataset root, logs folder). Tests copy the logs before resuming from them."""
    root = tmp_path_factory.mktemp("earlier") / "data"
    shutil.copytree(tiny_synthetic, root)
    train = root / "bounding_box_train"
    names = sorted(os.listdir(train))
    Image.open(train / names[0]).convert("L").save(train / names[0])
    Image.open(train / names[1]).convert("RGBA").save(train / names[1].replace(".jpg", ".png"))
    os.remove(train / names[1])
    for stray in STRAY_FILES:
        (train / stray).write_bytes(b"not part of the dataset")
    logs = root.parent / "logs"
    assert main.main(tiny_args(root, logs, "--epochs", "1")) == 0
    return root, logs


def test_grayscale_and_rgba_images_train_and_odd_names_are_counted(earlier_run):
    root, logs = earlier_run
    train = root / "bounding_box_train"
    modes = {Image.open(train / name).mode for name in os.listdir(train) if name not in STRAY_FILES}
    assert {"L", "RGBA", "RGB"} <= modes
    log = (logs / "log.txt").read_text()
    assert "Epoch 1/1" in log and "ignored 3 files whose names do not match the naming scheme" in log
    assert checkpoint.load(str(logs / "checkpoint.pth.tar"))["epoch"] == 1


def resumable_copy(earlier_run, tmp_path):
    root, logs = earlier_run
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    return root, copy


def first_image_of_epoch_two(root):
    """The training image the second epoch reads first (the shuffled order is a function of seed and epoch)."""
    dataset = datasets.create("synthetic", root, verbose=False)
    sampler = data.ShuffleSampler(len(dataset.train), 16, seed=1)
    sampler.set_epoch(1)
    index, _ = next(iter(sampler))
    return dataset.train[index][0]


@pytest.mark.parametrize("damage,workers", [("empty", "0"), ("truncated", "1"), ("text", "0")])
def test_an_unreadable_image_stops_training_naming_it_and_keeps_the_checkpoint(tiny_args, earlier_run, tmp_path, capsys,
                                                                               monkeypatch, damage, workers):
    root, logs = resumable_copy(earlier_run, tmp_path)
    data_copy = tmp_path / "data"
    shutil.copytree(root, data_copy)
    victim = first_image_of_epoch_two(data_copy)
    with open(victim, "rb") as handle:
        content = handle.read()
    with open(victim, "wb") as handle:
        handle.write({"empty": b"", "truncated": content[:len(content) // 2], "text": b"user notes\n"}[damage])
    path = logs / "checkpoint.pth.tar"
    argv = tiny_args(data_copy, logs, "--epochs", "2", "--resume", str(path))
    argv[argv.index("-j") + 1] = workers
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, f"Cannot read the image {victim}", "remove or replace it",
                       f"The last checkpoint, {path} (end of epoch 1), is intact")
    assert checkpoint.load(str(path))["epoch"] == 1
    assert [row["epoch"] for row in metrics_rows(logs)] == ["1"]
    assert "Epoch 1/1" in (logs / "log.txt").read_text()


def test_an_unreadable_gallery_image_with_workers_is_named_without_a_worker_traceback(tiny_args, earlier_run, tmp_path,
                                                                                      capsys, monkeypatch):
    root, logs = resumable_copy(earlier_run, tmp_path)
    data_copy = tmp_path / "data"
    shutil.copytree(root, data_copy)
    victim = data_copy / "bounding_box_test" / sorted(os.listdir(data_copy / "bounding_box_test"))[-1]
    victim.write_bytes(b"")
    argv = tiny_args(data_copy, tmp_path / "eval", "--evaluate", "--resume", str(logs / "checkpoint.pth.tar"))
    argv[argv.index("-j") + 1] = "1"
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, f"Cannot read the image {victim}")
    assert "DataLoader worker" not in err


def test_a_non_finite_loss_names_the_epoch_and_step_and_keeps_the_last_checkpoint(tiny_args, earlier_run, tmp_path,
                                                                                  capsys, monkeypatch):
    root, logs = resumable_copy(earlier_run, tmp_path)
    path = logs / "checkpoint.pth.tar"
    before = path.read_bytes()

    class DivergingLoss(losses.DeepSupervisionLoss):
        calls = 0

        def forward(self, logits, targets):
            DivergingLoss.calls += 1
            loss = super().forward(logits, targets)
            return loss._replace(total=loss.total * float("nan")) if DivergingLoss.calls == 2 else loss

    monkeypatch.setattr(experiment, "build_criterion", lambda train_config: DivergingLoss())
    code, _, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "3", "--resume", str(path)))
    assert_clean_error(code, err, "The loss became nan at epoch 2, step 2", "lower --lr",
                       f"The last checkpoint, {path} (end of epoch 1), is intact")
    assert path.read_bytes() == before
    assert [row["epoch"] for row in metrics_rows(logs)] == ["1"]


def test_a_full_disk_keeps_the_previous_checkpoint(tiny_args, earlier_run, tmp_path, capsys, monkeypatch):
    """The disk fills up during epoch 2: log.txt cannot grow (it points at /dev/full), then the checkpoint
    write fails; the run says so clearly and the epoch-1 checkpoint and metrics stay as they were."""
    root, logs = resumable_copy(earlier_run, tmp_path)
    path = logs / "checkpoint.pth.tar"
    before = path.read_bytes()
    if os.path.exists("/dev/full"):
        os.remove(logs / "log.txt")
        os.symlink("/dev/full", logs / "log.txt")
    real_save = torch.save

    def save_until_the_disk_is_full(state, handle, *args, **kwargs):
        if isinstance(state, dict) and state.get("epoch") == 2:
            handle.write(b"partial bytes")
            raise OSError(28, "No space left on device")
        return real_save(state, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    code, out, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "2", "--resume", str(path)))
    assert_clean_error(code, err, f"Could not write the checkpoint {path}: No space left on device",
                       "previous checkpoint in that folder is intact")
    if os.path.islink(logs / "log.txt"):
        assert out.count("warning: cannot write to") == 1 and "Epoch 2/2" in out
    assert path.read_bytes() == before
    assert not [name for name in os.listdir(logs) if name.startswith(".tmp-") or name.endswith(".tmp")], \
        "no temporary file"
    assert [row["epoch"] for row in metrics_rows(logs)] == ["1"]


# Checkpoints and arrays that would run code ---------------------------------------------------------------

class CreatesAFile:
    """Unpickling this object would run ``open(path, 'w')``: a stand-in for malicious code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def malicious(tmp_path):
    """A checkpoint and a .npy that would create ``marker`` if they were unpickled."""
    marker = tmp_path / "pwned"
    torch.save({"arch": "resnet18", "model_options": {"num_classes": 7}, "model": CreatesAFile(str(marker)),
                "epoch": 1}, tmp_path / "evil.pth.tar")
    np.save(tmp_path / "evil.npy", np.array([CreatesAFile(str(marker))], dtype=object), allow_pickle=True)
    return {"checkpoint": str(tmp_path / "evil.pth.tar"), "npy": str(tmp_path / "evil.npy"), "marker": marker}


@pytest.mark.parametrize("extra", [[], ["--evaluate"]])
def test_main_refuses_a_malicious_checkpoint_without_running_it(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                monkeypatch, malicious, extra):
    argv = tiny_args(tiny_synthetic, tmp_path / "logs", "--epochs", "2", "--resume", malicious["checkpoint"],
                     *extra)
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, f"Could not load the checkpoint {malicious['checkpoint']}", "could run code")
    assert not malicious["marker"].exists()


@pytest.fixture(scope="module")
def harmless(tmp_path_factory):
    """An image and a tiny checkpoint that load fine, to pair with the malicious file under test."""
    folder = tmp_path_factory.mktemp("harmless")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(
        folder / "person.png")
    model = models.create("resnet18", num_classes=4, num_features=8)
    checkpoint.save({"arch": "resnet18", "model_options": dict(model.options), "model": model.state_dict(),
                     "epoch": 1, "args": {}}, str(folder / "good.pth.tar"))
    return {"image": str(folder / "person.png"), "good": str(folder / "good.pth.tar")}


@pytest.mark.parametrize("tool,argv", [
    (single_images_features_3, ["--image", "{image}", "--checkpoint", "{checkpoint}"]),
    (single_images_features_3, ["--image", "{image}", "-a", "resnet18", "--compare", "{checkpoint}"]),
    (single_images_features_3, ["--image", "{npy}", "-a", "resnet18"]),
    (single_images_features_3, ["--correlation", "{npy}"]),
    (single_features_cam, ["--image", "{image}", "--checkpoint", "{checkpoint}"]),
    (single_features_cam, ["--image", "{npy}", "--checkpoint", "{good}"]),
], ids=["features --checkpoint", "features --compare", "features --image npy", "features --correlation",
        "cam --checkpoint", "cam --image npy"])
def test_feature_tools_refuse_malicious_files_without_running_them(tool, argv, malicious, harmless, tmp_path, capsys):
    values = {**harmless, **malicious}
    argv = [part.format(**values) for part in argv] + ["--out", str(tmp_path / "out")]
    if "--correlation" not in argv:
        argv += SIZE
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "could run code" in err and "Traceback" not in err
    assert not malicious["marker"].exists()


# Bad input through the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist; download Market-1501"),
    ("file", "is not a folder"),
    ("layout", "has no sub-folder query (it contains: bounding_box_test, bounding_box_train, queries)"),
    ("empty split", "has no usable image (1 files with other names were ignored)"),
])
def test_dataset_problems_are_one_clear_message(tiny_args, tiny_synthetic, tmp_path, capsys, monkeypatch, case,
                                                expected):
    root = tmp_path / "Market-1501"
    if case == "file":
        root.write_text("not a folder")
    elif case != "missing":
        shutil.copytree(tiny_synthetic, root, ignore=shutil.ignore_patterns("*.json"))
    if case == "layout":
        os.rename(root / "query", root / "queries")
    elif case == "empty split":
        shutil.rmtree(root / "query")
        os.makedirs(root / "query")
        (root / "query" / "readme.txt").write_text("x")
    argv = tiny_args(root, tmp_path / "logs", "--epochs", "1")
    argv[argv.index("-d") + 1] = "market"
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, str(root), expected)


@pytest.mark.parametrize("flags,expected", [
    (["-b", "64"], "fewer than one batch of -b/--batch-size 64"),
    (["--num-instances", "3"], "must be a multiple of --num-instances (3)"),
    (["--width", "8"], "--width 8 is too small"),
    (["--parts", "0"], "--parts must be at least 1"),
    (["-j", "-1"], "-j/--workers must be 0 or more"),
    (["--lr", "0"], "--lr must be positive"),
    (["-a", "resnet9"], "Unknown architecture 'resnet9'"),
    (["-b", "1"], "-b/--batch-size must be at least 2 for training"),
    (["--momentum", "-0.9"], "--momentum must be a finite number, 0 or more"),
    (["--weight-decay=-1e-4"], "--weight-decay must be a finite number, 0 or more"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--part-weight", "nan"], "--part-weight must be a finite number"),
    (["--ds-weight", "inf"], "--ds-weight must be a finite number"),
    (["--seed", str(2**70)], "--seed must be in [0, 2**32)"),
    (["--device", "gpu"], "Unknown --device 'gpu'"),
    (["--visrank", "-1"], "--visrank must be 0 or more"),
    (["--height", "100000"], "--height 100000 is larger than 4096 pixels"),
    (["--test-dataset", "imagenet"], "Unknown dataset 'imagenet'"),
])
def test_impossible_flags_are_one_clear_message(tiny_args, tiny_synthetic, tmp_path, capsys, monkeypatch, flags,
                                                expected):
    code, _, err = run_main(capsys, monkeypatch, tiny_args(tiny_synthetic, tmp_path / "logs", "--epochs", "1",
                                                           *flags))
    assert_clean_error(code, err, expected)


def test_a_checkpoint_of_another_architecture(tiny_args, earlier_run, tmp_path, capsys, monkeypatch):
    """-a is overridden by the checkpoint's own architecture (with a note); a checkpoint whose weights do not
    fit its recorded architecture is refused, naming the first tensor that differs."""
    root, logs = earlier_run
    path = str(logs / "checkpoint.pth.tar")
    argv = tiny_args(root, tmp_path / "other", "--evaluate", "--resume", path)
    argv[argv.index("-a") + 1] = "resnet34"
    code, out, err = run_main(capsys, monkeypatch, argv)
    assert code == 0, err
    assert "note: using the checkpoint's model settings: arch=resnet18" in out
    saved = checkpoint.load(path)
    saved["model_config"]["arch"] = "resnet34"
    torch.save(saved, tmp_path / "mislabelled.pth.tar")
    argv[argv.index("--resume") + 1] = str(tmp_path / "mislabelled.pth.tar")
    argv[argv.index("--logs-dir") + 1] = str(tmp_path / "mislabelled")
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, "does not fit the model being built (resnet34", "Use the same -a/--arch")


# Property-based: the .npy image loader ---------------------------------------------------------------------

IMAGE_SIDES = st.integers(1, 12)
UINT8_IMAGES = hnp.arrays(np.uint8, st.tuples(IMAGE_SIDES, IMAGE_SIDES, st.just(3)))


@FEW_EXAMPLES
@given(UINT8_IMAGES)
def test_any_uint8_image_round_trips_in_both_layouts(hwc):
    expected = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    assert torch.equal(images.image_from_array(hwc, "hwc"), expected)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    if hwc.shape[1] != 3:  # a 3 x H x 3 array is read as H x W x 3, the layout --to-npy writes
        assert torch.equal(images.image_from_array(chw, "chw"), expected)


@FEW_EXAMPLES
@given(UINT8_IMAGES, st.sampled_from([np.float16, np.float32, np.float64]))
def test_floats_in_0_1_map_to_the_same_pixels_and_floats_above_1_are_refused(hwc, dtype):
    """Floats are read on torchvision's [0, 1] scale whatever their values: never guessed from the maximum."""
    expected = images.image_from_array(hwc, "uint8")
    assert torch.equal(images.image_from_array((hwc / 255.0).astype(dtype), "[0, 1]"), expected)
    if hwc.max() > 1:
        with pytest.raises(UsageError, match=r"outside \[0, 1\]"):
            images.image_from_array(hwc.astype(dtype), "[0, 255]")


ANY_DTYPE = st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.bool_, np.float16,
                             np.float32, np.float64, np.complex64])
ANY_SHAPE = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)


@FEW_EXAMPLES
@given(hnp.arrays(ANY_DTYPE, ANY_SHAPE))
def test_any_array_loads_as_an_rgb_image_or_is_refused_with_a_usage_error(array):
    try:
        image = images.image_from_array(array, "array.npy")
    except UsageError as error:
        assert "array.npy" in str(error)
        return
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert image.shape[1:] in (array.shape, array.shape[:2], array.shape[1:])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("npy")


def npy_header(descr, shape):
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (-(len(text) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


NPY_FILES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda rest: b"\x93NUMPY\x01\x00" + rest, st.binary(max_size=200)),
    st.builds(lambda descr, shape, rest: npy_header(descr, shape) + rest,
              st.sampled_from(["|u1", "<f4", "<f8", "<c8", "|O", "<U3", "|b1", [("a", "<i4")], "?", "<i8"]),
              st.lists(st.integers(0, 4), max_size=4).map(tuple), st.binary(max_size=300)))


@FEW_EXAMPLES
@given(content=NPY_FILES)
def test_any_bytes_in_an_npy_file_load_or_give_a_usage_error(scratch, content):
    """Garbage, garbage after the .npy magic string, and well-formed headers of any dtype and shape followed
    by any data: each loads or is refused with a UsageError naming the file, never another exception."""
    path = str(scratch / "image.npy")
    with open(path, "wb") as handle:
        handle.write(content)
    for load in (images.load_image, maps.load_feature_map):
        try:
            load(path)
        except UsageError as error:
            assert path in str(error)


@pytest.mark.parametrize("shape", [(2 ** 40,), (2 ** 20, 2 ** 20, 3), (10 ** 30,)])
def test_an_npy_header_claiming_a_huge_array_is_refused(tmp_path, shape):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_header("|u1", shape) + bytes(48))
    for load in (images.load_image, maps.load_feature_map):
        with pytest.raises(UsageError, match="huge.npy"):
            load(str(path))


@FEW_EXAMPLES
@given(content=st.one_of(st.binary(max_size=300),
                         st.builds(lambda keep, tail: VALID_CHECKPOINT[:keep] + tail,
                                   st.integers(0, len(VALID_CHECKPOINT)), st.binary(max_size=50)),
                         st.builds(lambda at, byte: VALID_CHECKPOINT[:at] + bytes([byte]) + VALID_CHECKPOINT[at + 1:],
                                   st.integers(0, len(VALID_CHECKPOINT) - 1), st.integers(0, 255))))
def test_any_bytes_as_a_checkpoint_load_or_give_a_usage_error(scratch, content):
    """Garbage and cut or patched copies of a real checkpoint never escape as another exception type."""
    path = str(scratch / "checkpoint.pth.tar")
    with open(path, "wb") as handle:
        handle.write(content)
    try:
        checkpoint.load(path)
    except UsageError as error:
        assert path in str(error) and "\x1b" not in str(error)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_clear_message(tiny_args, tiny_synthetic, tmp_path, capsys, monkeypatch):
    code, _, err = run_main(capsys, monkeypatch, tiny_args(tiny_synthetic, tmp_path / "logs", "--device", "cuda"))
    assert_clean_error(code, err, "--device cuda: this machine has no CUDA GPU")


def test_parts_too_many_for_the_default_height_is_refused_before_loading(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                         monkeypatch):
    argv = tiny_args(tiny_synthetic, tmp_path / "logs", "--epochs", "1", "--parts", "30")
    at = argv.index("--height")
    del argv[at:at + 2]
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, "input height 384 is too small for --parts 30", "480 pixels")
    assert not (tmp_path / "logs" / "checkpoint.pth.tar").exists()


# A finished run is never replaced without being asked --------------------------------------------------------

def test_a_second_run_into_the_same_logs_folder_is_refused_and_the_first_is_intact(tiny_args, earlier_run, tmp_path,
                                                                                   capsys, monkeypatch):
    root, logs = resumable_copy(earlier_run, tmp_path)
    before = {name: (logs / name).read_bytes() for name in os.listdir(logs)}
    for extra in ([], ["--evaluate", "--resume", str(earlier_run[1] / "checkpoint.pth.tar")]):
        code, _, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "1", *extra))
        assert_clean_error(code, err, f"The logs folder {logs}", "already holds a run", "--resume",
                           "another --logs-dir", "--overwrite")
        assert {name: (logs / name).read_bytes() for name in os.listdir(logs)} == before
    code, out, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "1", "--resume",
                                                             str(logs / "checkpoint.pth.tar")))
    assert code == 0, err
    code, _, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "1", "--overwrite"))
    assert code == 0, err
    assert (logs / "checkpoint.pth.tar").read_bytes() != before["checkpoint.pth.tar"]


# Evaluations that cannot be scored, and evaluation errors after training ------------------------------------

def test_a_test_split_without_valid_queries_is_refused_before_training(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                       monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    query_ids = {name.split("_")[0] for name in os.listdir(root / "query")}
    for name in os.listdir(root / "bounding_box_test"):
        if name.split("_")[0] in query_ids:
            os.remove(root / "bounding_box_test" / name)
    code, _, err = run_main(capsys, monkeypatch, tiny_args(root, tmp_path / "logs", "--epochs", "1"))
    assert_clean_error(code, err, "test split (query/gallery) of synthetic", "cannot be scored",
                       "no query has an image of its identity from another camera")
    assert not (tmp_path / "logs" / "checkpoint.pth.tar").exists()


def test_a_validation_split_without_valid_queries_suggests_combine_trainval(tiny_args, tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    synthetic.generate(root, num_train_ids=6, num_test_ids=4, num_cameras=2, images_per_camera=1, height=64,
                       width=32, seed=0)
    code, _, err = run_main(capsys, monkeypatch, tiny_args(root, tmp_path / "logs", "-b", "4", "--epochs", "1"))
    assert_clean_error(code, err, "validation split of synthetic", "--combine-trainval")


def test_an_evaluation_error_after_an_epoch_keeps_that_epoch(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                             monkeypatch):
    def unreadable(*args, **kwargs):
        raise UsageError("Cannot read the image gallery/x.jpg: broken.")

    monkeypatch.setattr(evaluator, "evaluate", unreadable)
    logs = tmp_path / "logs"
    code, _, err = run_main(capsys, monkeypatch, tiny_args(tiny_synthetic, logs, "--epochs", "2"))
    assert_clean_error(code, err, "Cannot read the image gallery/x.jpg",
                       f"The last checkpoint, {logs / 'checkpoint.pth.tar'} (end of epoch 1), is intact")
    assert checkpoint.read(str(logs / "checkpoint.pth.tar")).epoch == 1


# Malformed checkpoints ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage,expected", [
    ("tensor", "holds a Tensor, not a checkpoint"),
    ("string epoch", "its 'epoch' is '1', not a count"),
    ("zero classes", "its model has 0 classes"),
    ("no model", "it has no 'model' entry"),
])
def test_malformed_checkpoints_are_one_clear_message(tiny_args, earlier_run, tmp_path, capsys, monkeypatch, damage,
                                                     expected):
    root, logs = earlier_run
    saved = checkpoint.load(str(logs / "checkpoint.pth.tar"))
    if damage == "tensor":
        saved = torch.ones(3)
    elif damage == "string epoch":
        saved["epoch"] = "1"
    elif damage == "zero classes":
        saved["model_config"]["num_classes"] = 0
    else:
        del saved["model"]
    path = tmp_path / "damaged.pth.tar"
    torch.save(saved, path)
    for extra in (["--evaluate"], ["--epochs", "2"]):
        code, _, err = run_main(capsys, monkeypatch, tiny_args(root, tmp_path / "logs", "--resume", str(path),
                                                               *extra))
        assert_clean_error(code, err, str(path), expected)


def test_nan_weights_are_refused_for_evaluation(tiny_args, earlier_run, tmp_path, capsys, monkeypatch):
    root, logs = earlier_run
    saved = checkpoint.load(str(logs / "checkpoint.pth.tar"))
    key = next(key for key, value in saved["model"].items() if value.is_floating_point())
    saved["model"][key] = torch.full_like(saved["model"][key], float("nan"))
    torch.save(saved, tmp_path / "nan.pth.tar")
    code, _, err = run_main(capsys, monkeypatch, tiny_args(root, tmp_path / "logs", "--evaluate", "--resume",
                                                           str(tmp_path / "nan.pth.tar")))
    assert_clean_error(code, err, "holds NaN or infinite weights", key)


@pytest.mark.parametrize("flags,expected", [
    (["-b", "8", "--epochs", "2"], "resume it with -b 16"),
    (["--epochs", "1"], "Resume with --epochs 2 or more"),
])
def test_a_mid_epoch_checkpoint_is_resumed_only_as_it_was_trained(tiny_args, earlier_run, tmp_path, capsys,
                                                                  monkeypatch, flags, expected):
    root, logs = resumable_copy(earlier_run, tmp_path)
    saved = checkpoint.load(str(logs / "checkpoint.pth.tar"))
    saved["step"] = 1
    saved["partial"] = {"loss": 1.0, "accuracy": 0.0, "steps": 1, "images": 16, "seconds": 1.0}
    torch.save(saved, logs / "mid-epoch.pth.tar")
    code, _, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--resume", str(logs / "mid-epoch.pth.tar"),
                                                           *flags))
    assert_clean_error(code, err, "in the middle of epoch 2", expected)


# Faults of the machine ---------------------------------------------------------------------------------------

def test_a_loader_worker_killed_by_the_system_is_one_clear_message(tiny_args, earlier_run, tmp_path, capsys,
                                                                   monkeypatch):
    """The kernel's OOM killer sends SIGKILL to a worker: simulated by a worker that kills itself."""
    root, logs = resumable_copy(earlier_run, tmp_path)
    real_getitem = data.ReidImages.__getitem__

    def killed_in_a_worker(self, key):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_getitem(self, key)

    monkeypatch.setattr(data.ReidImages, "__getitem__", killed_in_a_worker)
    argv = tiny_args(root, logs, "--epochs", "2", "--resume", str(logs / "checkpoint.pth.tar"))
    argv[argv.index("-j") + 1] = "1"
    code, _, err = run_main(capsys, monkeypatch, argv)
    assert_clean_error(code, err, "A data-loading worker process was killed", "lower -j/--workers",
                       "(end of epoch 1), is intact")


@pytest.mark.parametrize("flags, message", [((), "Could not write the TensorBoard events in {logs}"),
                                            (("--no-tensorboard",), "Could not write the checkpoint {logs}/")])
def test_the_logs_folder_deleted_during_training_is_one_clear_message(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                      monkeypatch, flags, message):
    logs = tmp_path / "logs"
    real_row = experiment._epoch_row

    def delete_the_folder(*args):
        shutil.rmtree(logs)
        return real_row(*args)

    monkeypatch.setattr(experiment, "_epoch_row", delete_the_folder)
    code, _, err = run_main(capsys, monkeypatch, tiny_args(tiny_synthetic, logs, "--epochs", "1", *flags))
    assert_clean_error(code, err, message.format(logs=logs))


def test_a_data_folder_whose_name_is_not_utf8_trains(tiny_args, tiny_synthetic, tmp_path):
    root = os.path.join(os.fsencode(tmp_path), b"caf\xe9-data")
    shutil.copytree(os.fsencode(tiny_synthetic), root)
    argv = tiny_args(os.fsdecode(root), tmp_path / "logs", "--epochs", "1", "--combine-trainval")
    result = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "logs" / "results.json").read_text())["epochs"] == 1


def test_the_resume_command_under_torchrun_uses_logs_dir(monkeypatch):
    """torchrun's own parser takes --log as an abbreviation of its options and stops; the printed command must
    not contain it."""
    monkeypatch.setattr(experiment.distributed, "is_distributed", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    stop = stop_request("SIGTERM")
    message = str(experiment._interrupted(stop, "after epoch 1", "logs/x/checkpoint.pth.tar",
                                          ["main.py", "-d", "market", "--log", "logs/x", "--resume", "old"]))
    assert "torchrun --nproc_per_node=2 main.py -d market --logs-dir logs/x --resume logs/x/checkpoint.pth.tar" \
        in message


def stop_request(signal_name):
    stop = experiment.StopRequest()
    stop.signal_name = signal_name
    return stop


# Two runs started at once into one logs folder ------------------------------------------------------------------

HOLD_THE_FOLDER = """
import sys
from reid import run_files
from reid.errors import UsageError

folder, resume = sys.argv[1], sys.argv[2] or None
try:
    log = run_files.claim_logs_dir(folder, resume)
except UsageError as error:
    print(f"refused: {error}", flush=True)
    sys.exit(2)
log.write("written by the run that claimed the folder\\n")
print("claimed", flush=True)
sys.stdin.read()
"""


def hold_the_folder(folder, resume=""):
    """A process that claims ``folder`` as a run does (resuming ``resume``, if given) and holds it until its stdin
    is closed; it prints ``claimed`` or ``refused: <message>``."""
    return subprocess.Popen([sys.executable, "-c", HOLD_THE_FOLDER, str(folder), str(resume)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_of_two_runs_started_at_once_into_one_folder_one_is_refused_and_writes_nothing(tmp_path):
    """The lock and the check are one step: however the two starts interleave, exactly one process claims the
    folder, and the other is refused before it writes anything there."""
    folder = tmp_path / "logs"
    holders = [hold_the_folder(folder) for _ in range(2)]
    try:
        lines = [holder.stdout.readline() for holder in holders]
        assert sorted(line.split(":")[0].strip() for line in lines) == ["claimed", "refused"], lines
        refused = next(line for line in lines if line.startswith("refused"))
        assert f"The logs folder {folder} (--logs-dir/--log) is in use by another run right now" in refused
        assert "--overwrite" not in refused
    finally:
        for holder in holders:
            holder.stdin.close()
            holder.wait(timeout=60)
    assert sorted(holder.returncode for holder in holders) == [0, 2]
    assert (folder / "log.txt").read_text() == "written by the run that claimed the folder\n"
    assert os.listdir(folder) == ["log.txt"]


def test_a_folder_in_use_is_refused_even_to_overwrite_or_resume_and_a_killed_run_leaves_it_free(
        tiny_args, earlier_run, tmp_path, capsys, monkeypatch):
    root, logs = resumable_copy(earlier_run, tmp_path)
    path = logs / "checkpoint.pth.tar"
    holder = hold_the_folder(logs, path)
    try:
        assert holder.stdout.readline() == "claimed\n"
        before = {name: (logs / name).read_bytes() for name in os.listdir(logs)}
        for extra in (["--overwrite"], ["--resume", str(path)]):
            code, _, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "2", *extra))
            assert_clean_error(code, err, f"The logs folder {logs} (--logs-dir/--log) is in use by another run right "
                                          f"now", "another --logs-dir", f"--resume {path}")
            assert {name: (logs / name).read_bytes() for name in os.listdir(logs)} == before
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    code, out, err = run_main(capsys, monkeypatch, tiny_args(root, logs, "--epochs", "2", "--resume", str(path)))
    assert code == 0, err
    assert "Epoch 2/2" in out and checkpoint.load(str(path))["epoch"] == 2


# Settings under which nothing trains, and settings without effect -----------------------------------------------

def one_identity_dataset(root):
    synthetic.generate(root, num_train_ids=1, num_test_ids=3, num_cameras=2, images_per_camera=2, height=64,
                       width=32, seed=0)
    return root


@pytest.mark.parametrize("case,flags,expected", [
    ("cosine all warm-up", ["--lr-schedule", "cosine", "--warmup-epochs", "2", "--epochs", "2"],
     "--lr-schedule cosine with --warmup-epochs 2 and --epochs 2 trains at lr 0 at every step"),
    ("one identity per batch", ["--triplet-weight", "1", "--num-instances", "4", "-b", "4", "--epochs", "1"],
     "--triplet-weight 1.0 with -b/--batch-size 4 and --num-instances 4 puts a single identity in each batch"),
    ("one training identity", ["--combine-trainval", "--epochs", "1"], "has a single identity"),
])
def test_settings_under_which_nothing_trains_are_refused_before_training(tiny_args, tiny_synthetic, tmp_path, capsys,
                                                                         monkeypatch, case, flags, expected):
    """Nothing would train: a cosine schedule that is all warm-up has lr 0 at every step (the cosine starts where the
    warm-up ends, after the run: tests/test_recipes.py checks the schedule); a batch-hard triplet loss over one
    identity has no negative, so each anchor's loss is max(0, d_pos - inf + margin) = 0; the cross-entropy over a
    single class is log(1) = 0, with or without label smoothing, and so are all the losses on one identity."""
    one = torch.zeros(4, dtype=torch.long)
    assert losses.batch_hard_triplet(torch.randn(4, 8), one, 0.3) == 0
    assert torch.nn.functional.cross_entropy(torch.randn(4, 1), one, label_smoothing=0.1) == 0
    root = one_identity_dataset(tmp_path / "data") if case == "one training identity" else tiny_synthetic
    logs = tmp_path / "logs"
    code, out, err = run_main(capsys, monkeypatch, tiny_args(root, logs, *flags))
    assert_clean_error(code, err, expected)
    assert "Epoch 1" not in out and not (logs / "checkpoint.pth.tar").exists()


def test_settings_without_effect_are_warned_about_on_stderr_and_in_the_log_and_training_goes_on(
        tiny_args, tiny_synthetic, tmp_path, capsys, monkeypatch):
    """Each warning names its flag; the run trains as asked (the tiny training split has 9 images per identity)."""
    logs = tmp_path / "logs"
    flags = ["--epochs", "1", "--combine-trainval", "--optimizer", "adam", "--lr", "3.5e-4", "--momentum", "0.95",
             "--margin", "0.5", "--num-val", "3", "--milestones", "4", "-b", "20", "--num-instances", "10"]
    code, out, err = run_main(capsys, monkeypatch, tiny_args(tiny_synthetic, logs, *flags))
    assert code == 0, err
    log = (logs / "log.txt").read_text()
    expected = ["--momentum 0.95 has no effect with --optimizer adam", "--margin 0.5 has no effect without the triplet",
                "--num-val 3 has no effect with --combine-trainval", "--milestones 4: the run ends before that epoch",
                "--num-instances 10: no training identity has that many images (the most is 9)"]
    for text in expected:
        assert f"warning: {text}" in err and f"warning: {text}" in log, text
        assert log.index(text) < log.index("Epoch 1/1")
    assert "warning" not in out
