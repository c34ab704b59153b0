"""End to end through main.main(): training, outputs, evaluation, resume, and the clear errors."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import main
from reid import checkpoint, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # end to end through main.py: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def trained(tiny_args, tiny_synthetic, tmp_path_factory):
    logs = tmp_path_factory.mktemp("run")
    assert main.main(tiny_args(tiny_synthetic, logs, "--epochs", "3", "--step-size", "2")) == 0
    return logs


def test_training_writes_every_output_and_lowers_the_loss(trained):
    for name in ("log.txt", "metrics.csv", "curves.png", "checkpoint.pth.tar", "model_best.pth.tar",
                 "results.json"):
        assert (trained / name).is_file(), name
    with open(trained / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert float(rows[2]["lr"]) == pytest.approx(0.005), "step schedule: x0.1 after --step-size epochs"
    assert rows[0]["eval_split"] == "val" and 0 <= float(rows[0]["mAP"]) <= 1
    log = (trained / "log.txt").read_text()
    assert "Epoch 3/3" in log and "Mean AP" in log and "# ids" in log


def test_results_json_holds_the_metrics_and_the_arguments(trained):
    results = json.loads((trained / "results.json").read_text())
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert 0 <= results[key] <= 1
    assert results["rank1"] <= results["rank5"] <= results["rank10"]
    assert (results["dataset"], results["arch"], results["epochs"]) == ("synthetic", "resnet18", 3)
    assert results["dsa"] is True and results["deep_supervision"] is True and results["parts"] == 6
    assert results["config"]["data"]["height"] == 96


def test_checkpoint_is_plain_and_complete(trained):
    saved = checkpoint.load(str(trained / "checkpoint.pth.tar"))
    assert saved["format"] == checkpoint.FORMAT and saved["epoch"] == 3
    assert {"model", "optimizer", "run", "best", "history", "rng"} <= set(saved)
    assert saved["model_config"]["arch"] == "resnet18" and saved["model_config"]["num_classes"] > 0
    assert saved["input_size"] == [96, 32] and saved["run"]["data"]["height"] == 96


def without_input_size(argv):
    at = argv.index("--height")
    assert argv[at + 2] == "--width"
    return argv[:at] + argv[at + 4:]


def test_evaluate_only_reproduces_the_final_metrics_at_the_trained_input_size(tiny_args, trained, tiny_synthetic,
                                                                              tmp_path, capsys):
    """Without --height/--width the checkpoint's training size (96x32 here, not 384x128) is used."""
    code = main.main(without_input_size(tiny_args(tiny_synthetic, tmp_path, "--evaluate", "--resume",
                                                  str(trained / "checkpoint.pth.tar"))))
    assert code == 0
    again = json.loads((tmp_path / "results.json").read_text())
    before = json.loads((trained / "results.json").read_text())
    assert again["mAP"] == pytest.approx(before["mAP"], abs=1e-6)
    assert again["epochs"] == 3
    assert (again["config"]["data"]["height"], again["config"]["data"]["width"]) == (96, 32)
    assert "note: input size" not in capsys.readouterr().out
    assert not (tmp_path / "checkpoint.pth.tar").exists()


def test_an_input_size_other_than_the_trained_one_is_noted(tiny_args, trained, tiny_synthetic, tmp_path, capsys):
    argv = without_input_size(tiny_args(tiny_synthetic, tmp_path, "--evaluate", "--resume",
                                        str(trained / "checkpoint.pth.tar")))
    assert main.main([*argv, "--height", "128"]) == 0
    assert "note: input size 128x32 from --height/--width; the checkpoint was trained at 96x32" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["config"]["data"]["height"] == 128


def test_resume_is_exact(tiny_args, trained, tiny_synthetic, tmp_path):
    """Two epochs, then one more from the checkpoint, equal three epochs in one go (--deterministic)."""
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "2", "--step-size", "2")) == 0
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "3", "--step-size", "2", "--resume",
                               str(tmp_path / "checkpoint.pth.tar"))) == 0
    with open(trained / "metrics.csv") as one, open(tmp_path / "metrics.csv") as two:
        uninterrupted, resumed = list(csv.DictReader(one)), list(csv.DictReader(two))
    assert len(resumed) == 3
    for a, b in zip(uninterrupted, resumed):
        for key in ("loss", "accuracy", "mAP", "rank1"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), (a["epoch"], key)
    final_a = json.loads((trained / "results.json").read_text())
    final_b = json.loads((tmp_path / "results.json").read_text())
    assert final_a["mAP"] == pytest.approx(final_b["mAP"], abs=1e-6)


def test_epochs_zero_evaluates_the_untrained_model(tiny_args, tiny_synthetic, tmp_path):
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "0")) == 0
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 0


def run_cli(*args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("flags,expected", [
    (["-d", "market", "--data-dir", "/nonexistent/Market-1501"], "/nonexistent/Market-1501"),
    (["-d", "cuhk99"], "cuhk99"),
    (["-b", "0"], "--batch-size"),
    (["--height", "64"], "--height 64 is too small"),
    (["--evaluate"], "--resume"),
])
def test_bad_input_is_one_clear_message(flags, expected, tmp_path):
    result = run_cli(*flags, "--logs-dir", str(tmp_path / "logs"))
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_with_another_class_count_is_refused(tiny_args, trained, tmp_path, tiny_synthetic):
    saved = checkpoint.load(str(trained / "checkpoint.pth.tar"))
    saved["model_config"]["num_classes"] += 3
    path = tmp_path / "other.pth.tar"
    torch.save(saved, path)
    code = main.main(tiny_args(tiny_synthetic, tmp_path / "logs", "--epochs", "4", "--resume", str(path)))
    assert code == 2


def test_unwritable_logs_folder(tiny_args, tiny_synthetic, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli(*tiny_args(tiny_synthetic, blocker / "logs", "--epochs", "1"))
    assert result.returncode == 2 and "logs" in result.stderr and "Traceback" not in result.stderr


def format1_checkpoint(path):
    """The checkpoint of a 2-epoch resnet18 run saved by the code before the checkpoint schema had a version
    (tests/data: its every entry, with the model's large tensors left out to keep the file small); the missing
    tensors are filled in from a new model of the same settings. Written to ``path``."""
    saved = torch.load(os.path.join(ROOT, "tests", "data", "checkpoint_format1_resnet18.pth.tar"), weights_only=True)
    options = dict(saved["model_options"])
    model = models.create(saved["arch"], options.pop("num_classes"), **options)
    saved["model"] = {**model.state_dict(), **saved["model"]}
    torch.save(saved, path)
    return str(path)


def test_a_format1_checkpoint_evaluates_and_resumes(tiny_args, tiny_synthetic, tmp_path, capsys):
    path = format1_checkpoint(tmp_path / "old.pth.tar")
    loaded = checkpoint.read(path)
    assert (loaded.model_config.arch, loaded.input_size, loaded.epoch) == ("resnet18", (96, 32), 2)
    assert main.main(without_input_size(tiny_args(tiny_synthetic, tmp_path / "eval", "--evaluate", "--resume",
                                                  path))) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["config"]["data"]["height"] == 96
    argv = tiny_args(tiny_synthetic, tmp_path / "resumed", "--combine-trainval", "--epochs", "3", "--resume", path)
    assert main.main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    assert checkpoint.read(str(tmp_path / "resumed" / "checkpoint.pth.tar")).epoch == 3
