"""End to end through main.main(): training, outputs, evaluation, resume, and the clear errors."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import main
from reid import checkpoint, models, recipes

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
    """Two epochs, then one more from the checkpoint, equal three epochs in one go (--deterministic), bit for bit:
    on one machine, in one process, the same kernels add the same numbers in the same order."""
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "2", "--step-size", "2")) == 0
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "3", "--step-size", "2", "--resume",
                               str(tmp_path / "checkpoint.pth.tar"))) == 0
    with open(trained / "metrics.csv") as one, open(tmp_path / "metrics.csv") as two:
        uninterrupted, resumed = list(csv.DictReader(one)), list(csv.DictReader(two))
    assert len(resumed) == 3
    for a, b in zip(uninterrupted, resumed):
        for key in ("loss", "accuracy", "lr", "mAP", "rank1"):
            assert a[key] == b[key], (a["epoch"], key)
    final_a = json.loads((trained / "results.json").read_text())
    final_b = json.loads((tmp_path / "results.json").read_text())
    assert (final_a["mAP"], final_a["rank1"]) == (final_b["mAP"], final_b["rank1"])
    weights_a = checkpoint.load(str(trained / "checkpoint.pth.tar"))["model"]
    weights_b = checkpoint.load(str(tmp_path / "checkpoint.pth.tar"))["model"]
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_epochs_zero_evaluates_the_untrained_model_and_says_so(tiny_args, tiny_synthetic, tmp_path, capsys):
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "0")) == 0
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 0
    warning = "warning: --epochs 0 trains nothing: the model is evaluated with random weights."
    assert warning in capsys.readouterr().err and warning in (tmp_path / "log.txt").read_text()


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


# Re-running a run (--rerun) ------------------------------------------------------------------------------------

def flat(config):
    """A recorded ``RunConfig.to_dict()`` as ``{"section.name": value}``."""
    return {f"{section}.{name}" if isinstance(values, dict) else section: value
            for section, values in config.items()
            for name, value in (values.items() if isinstance(values, dict) else [(None, values)])}


def test_a_rerun_repeats_the_recorded_settings_with_the_flags_given_over_them(trained, tmp_path, capsys):
    """The new run's settings (as started, in run.json, and as resolved, in results.json) are the first run's
    except the seed and the logs folder given, and the command line."""
    logs = tmp_path / "seed2"
    assert main.main(["--rerun", str(trained), "--seed", "2", "--logs-dir", str(logs)]) == 0
    assert "warning" not in capsys.readouterr().err
    first, again = (json.loads((folder / "run.json").read_text()) for folder in (trained, logs))
    assert again["settings_from"] == str(trained / "run.json")
    assert set(again["explicit"]) == set(first["explicit"]) | {"rerun", "seed", "logs_dir"}
    assert {"cwd", "started", "argv", "versions"} <= set(again) and again["versions"]["torch"] == torch.__version__
    for name in ("run.json", "results.json"):
        before, after = (flat(json.loads((folder / name).read_text())["config"]) for folder in (trained, logs))
        assert {key for key in before if before[key] != after[key]} == {"data.seed", "train.seed", "logs_dir",
                                                                          "command"}, name
        assert (after["train.seed"], after["logs_dir"]) == (2, str(logs))


def test_a_run_from_before_run_json_is_rerun_from_its_results_or_its_checkpoint(trained, tmp_path):
    expected = main.rerun_args(str(trained), ["--logs-dir", "new"], {"logs_dir"})
    for name in ("results.json", "checkpoint.pth.tar"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(trained / name, folder)
        args, explicit, source = main.rerun_args(str(folder), ["--logs-dir", "new"], {"logs_dir"})
        assert (vars(args), explicit) == (vars(expected[0]), expected[1]) and source == str(folder / name)


def test_a_rerun_keeps_the_recorded_flags_over_the_recipe_presets_and_drops_its_own_resume(tmp_path):
    """A flag the first run gave explicitly keeps its value under the recipe's preset; one it left to the preset
    takes the preset again. Its --resume of its own checkpoint (it had continued itself) and --overwrite are not
    repeated; --resume given again continues it in its own folder."""
    folder = tmp_path / "strong"
    folder.mkdir()
    first = ["--recipe", "strong", "--lr", "0.001", "--overwrite", "--logs-dir", str(folder), "--resume",
             str(folder / "checkpoint.pth.tar")]
    record = {"args": vars(main.get_args_parser().parse_args(first)), "explicit": sorted(main.explicit_dests(first))}
    (folder / "run.json").write_text(json.dumps(record))
    args, explicit, _ = main.rerun_args(str(folder), ["--logs-dir", "new", "--epochs", "5"], {"logs_dir", "epochs"})
    config = recipes.apply(args.recipe, main.run_config(args, ["main.py"]), explicit)
    assert (config.train.recipe, config.train.lr, config.train.optimizer, config.train.epochs) == ("strong", 0.001,
                                                                                                   "adam", 5)
    assert (args.resume, args.overwrite, args.logs_dir) == (None, False, "new")
    resume = str(folder / "checkpoint.pth.tar")
    args, _, _ = main.rerun_args(str(folder), ["--resume", resume], {"resume"})
    assert (args.logs_dir, args.resume) == (str(folder), resume)


def rerun_error(capsys, *argv):
    capsys.readouterr()
    assert main.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_a_rerun_into_its_own_folder_is_refused_and_the_run_is_untouched(trained, capsys):
    before = {name: os.stat(trained / name).st_mtime_ns for name in os.listdir(trained)}
    for extra in ([], ["--overwrite"], ["--logs-dir", str(trained) + "/"]):
        err = rerun_error(capsys, "--rerun", str(trained), *extra)
        assert f"--rerun {trained} would start the new run in {trained} itself" in err
        assert "give the new run its own --logs-dir" in err and f"--resume {trained / 'checkpoint.pth.tar'}" in err
        assert "--overwrite" not in err
    assert {name: os.stat(trained / name).st_mtime_ns for name in os.listdir(trained)} == before


def test_a_rerun_without_a_readable_record_names_the_file(tmp_path, capsys):
    new = ["--logs-dir", str(tmp_path / "new")]
    assert "there is no such folder" in rerun_error(capsys, "--rerun", str(tmp_path / "missing"), *new)
    (tmp_path / "empty").mkdir()
    err = rerun_error(capsys, "--rerun", str(tmp_path / "empty"), *new)
    assert "holds none of run.json, results.json, checkpoint.pth.tar" in err
    cases = [("run.json", "{\"args\": {", "Cannot read {path} (--rerun)"),
             ("run.json", json.dumps({"args": {"lr": "fast"}, "explicit": []}), "{path} (--rerun) records --lr as 'fast'"),
             ("results.json", json.dumps({"config": {"command": []}}), "{path} (--rerun) records no command line"),
             ("results.json", json.dumps({"config": {"command": ["main.py", "--lr", "x"]}}),
              "The command recorded in {path} (--rerun) does not parse")]
    for number, (name, content, expected) in enumerate(cases):
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / name).write_text(content)
        assert expected.format(path=folder / name) in rerun_error(capsys, "--rerun", str(folder), *new)
    assert not (tmp_path / "new").exists()
