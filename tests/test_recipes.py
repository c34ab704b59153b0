"""reid.recipes: the presets, explicit flags over them, their checks, resume across recipes; and the paper recipe
still trains bit for bit as the code before recipes did."""
import csv
import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch

from reid import checkpoint, recipes
from reid.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from reid.errors import UsageError

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "paper_recipe_reference.json")


def strong(explicit=(), config=None):
    return recipes.apply("strong", config or RunConfig(), set(explicit))


def test_paper_is_every_default():
    config = recipes.apply("paper", RunConfig(), set())
    assert config == RunConfig()
    assert config.train.recipe == "paper"


def test_strong_takes_the_bot_settings():
    config = strong()
    train, data, model = config.train, config.data, config.model
    assert train.recipe == "strong"
    assert (train.optimizer, train.lr, train.weight_decay) == ("adam", 3.5e-4, 5e-4)
    assert (train.lr_schedule, list(train.milestones), train.epochs, train.warmup_epochs) == ("step", [40, 70], 120, 10)
    assert (train.label_smoothing, train.triplet_weight, train.margin) == (0.1, 1.0, 0.3)
    assert (data.num_instances, data.batch_size // data.num_instances, data.random_erasing) == (4, 16, 0.5)
    assert model.bnneck is True
    assert (train.part_weight, train.ds_weight, model.dsa, model.deep_supervision) == (1.0, 1.0, True, True)


def test_explicit_flags_override_the_preset():
    given = RunConfig(train=TrainConfig(lr=1e-3, epochs=30, triplet_weight=0.5),
                      model=ModelConfig(bnneck=False), data=DataConfig(num_instances=8))
    config = strong({"lr", "epochs", "triplet_weight", "bnneck", "num_instances"}, given)
    assert (config.train.lr, config.train.epochs, config.train.triplet_weight) == (1e-3, 30, 0.5)
    assert (config.model.bnneck, config.data.num_instances) == (False, 8)
    assert config.train.optimizer == "adam" and config.train.warmup_epochs == 10


def test_an_explicit_step_size_keeps_the_preset_milestones_out():
    config = strong({"step_size"}, RunConfig(train=TrainConfig(step_size=20)))
    assert list(config.train.milestones) == [] and config.train.step_size == 20
    assert list(strong({"milestones"}, RunConfig(train=TrainConfig(milestones=[5]))).train.milestones) == [5]


def test_an_unknown_recipe_is_refused():
    with pytest.raises(UsageError, match="--recipe 'fast'.*paper, strong"):
        recipes.apply("fast", RunConfig(), set())


@pytest.mark.parametrize("changes,message", [
    (dict(train=TrainConfig(triplet_weight=1.0)), "--triplet-weight 1.0 needs .*--num-instances K"),
    (dict(train=TrainConfig(triplet_weight=1.0), data=DataConfig(num_instances=1)), "--num-instances"),
    (dict(train=TrainConfig(label_smoothing=1.0)), r"--label-smoothing must be in \[0, 1\)"),
    (dict(train=TrainConfig(margin=-0.1)), "--margin must be 0 or more"),
    (dict(train=TrainConfig(milestones=[70, 40])), "--milestones must be increasing"),
    (dict(model=ModelConfig(bnneck=True, feature="reduced")), "--bnneck has no reduced feature"),
])
def test_impossible_settings_are_refused(changes, message):
    with pytest.raises(UsageError, match=message):
        recipes.validate(RunConfig(**changes))


def test_the_presets_validate():
    for name in recipes.RECIPES:
        recipes.validate(recipes.apply(name, RunConfig(), set()))


def test_resume_under_the_same_recipe_is_allowed():
    saved = strong().to_dict()
    recipes.check_resume(saved, strong({"lr"}, RunConfig(train=TrainConfig(lr=1e-4))), "ckpt.pth.tar")
    recipes.check_resume(RunConfig().to_dict(), recipes.apply("paper", RunConfig(), set()), "ckpt.pth.tar")


def test_resume_refuses_another_recipe_naming_what_differs():
    saved = strong().to_dict()
    with pytest.raises(UsageError) as error:
        recipes.check_resume(saved, recipes.apply("paper", RunConfig(train=TrainConfig(optimizer="adam")),
                                                  {"optimizer"}), "logs/x/checkpoint.pth.tar")
    message = str(error.value)
    assert "logs/x/checkpoint.pth.tar was trained with --recipe strong" in message
    assert "--recipe paper" in message
    assert "--warmup-epochs 0 (checkpoint: 10)" in message
    assert "--no-bnneck (checkpoint: --bnneck)" in message
    assert "--milestones (none) (checkpoint: 40 70)" in message
    assert "--epochs" not in message, "the run's length may change on resume"


def test_resume_under_another_recipe_with_every_flag_matching_is_allowed():
    saved = strong().to_dict()
    same = recipes.apply("paper", strong(), set())
    assert same.train.recipe == "paper"
    recipes.check_resume(saved, same, "ckpt.pth.tar")


def test_resume_refuses_another_optimizer_whatever_the_recipe():
    saved = strong({"optimizer"}, RunConfig(train=TrainConfig(optimizer="sgd"))).to_dict()
    with pytest.raises(UsageError, match="trained with --optimizer sgd, this run asks for adam"):
        recipes.check_resume(saved, strong(), "ckpt.pth.tar")
    with pytest.raises(UsageError, match="trained with --optimizer sgd, this run asks for adam"):
        recipes.check_resume(RunConfig().to_dict(), RunConfig(train=TrainConfig(optimizer="adam")), "ckpt.pth.tar")


def test_a_format_1_checkpoint_counts_as_the_paper_recipe():
    saved = checkpoint.read(os.path.join(os.path.dirname(__file__), "data", "checkpoint_format1_resnet18.pth.tar"))
    assert recipes.recipe_of(saved.run) == "paper"
    recipes.check_resume(saved.run, recipes.apply("paper", RunConfig(), set()), "old.pth.tar")
    with pytest.raises(UsageError, match="old.pth.tar was trained with --recipe paper.*--optimizer adam .checkpoint: "
                                         "sgd.*--label-smoothing 0.1 .checkpoint: 0.0."):
        recipes.check_resume(saved.run, strong(), "old.pth.tar")


def test_describe_names_the_recipe_and_what_departs_from_it():
    assert recipes.describe(RunConfig().to_dict()) == "paper"
    assert recipes.describe({"format_1_args": {"lr": 0.1}}) == "paper"
    assert recipes.describe(strong().to_dict()) == "strong"
    run = strong({"milestones", "warmup_epochs", "bnneck", "epochs"},
                 RunConfig(train=TrainConfig(milestones=[8], warmup_epochs=1, epochs=12))).to_dict()
    assert recipes.describe(run) == "strong (--milestones 8, --warmup-epochs 1, --no-bnneck)"
    assert recipes.describe(RunConfig(train=TrainConfig(lr=0.05)).to_dict()) == "paper (--lr 0.05)"


def model_digest(path):
    state = checkpoint.load(path)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def reference_threads():
    """The reference was written with 2 intra-op threads (this machine's default); the weights' last bits
    depend on the thread count through the order of the convolutions' gradient sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_paper_recipe_trains_bit_for_bit_as_before_recipes(tiny_synthetic, tmp_path, reference_threads):
    """Two one-step epochs of the paper recipe on the CPU: the same losses, accuracies, metrics and final weights
    as the code before recipes existed (tests/data/paper_recipe_reference.json, written by that code)."""
    import main

    with open(REFERENCE) as handle:
        reference = json.load(handle)
    logs = tmp_path / "run"
    argv = ["-d", "synthetic", "--data-dir", str(tiny_synthetic), "--logs-dir", str(logs),
            *reference["argv_after_data_and_logs"], "--recipe", "paper", "--device", "cpu"]
    assert main.main(argv) == 0
    with open(logs / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(logs / "results.json") as handle:
        results = json.load(handle)
    assert [row["loss"] for row in rows] == reference["losses"]
    assert [row["accuracy"] for row in rows] == reference["accuracies"]
    assert (repr(results["mAP"]), repr(results["rank1"])) == (reference["mAP"], reference["rank1"])
    assert model_digest(logs / "checkpoint.pth.tar") == reference["model_sha256"]


@pytest.mark.slow
def test_a_strong_run_logs_its_terms_and_refuses_to_resume_as_paper(tiny_synthetic, tmp_path, capsys):
    import main

    common = ["-d", "synthetic", "--data-dir", str(tiny_synthetic), "-a", "resnet18", "--no-pretrained", "--height",
              "96", "--width", "32", "-b", "16", "-j", "0", "--features", "32", "--eval-freq", "1",
              "--combine-trainval", "--device", "cpu"]
    logs = tmp_path / "strong"
    assert main.main([*common, "--logs-dir", str(logs), "--recipe", "strong", "--epochs", "1"]) == 0
    with open(logs / "metrics.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    terms = [float(row[name]) for name in ("ce_parts", "ce_global", "ce_ds", "triplet")]
    assert all(value > 0 for value in terms)
    assert float(row["loss"]) == pytest.approx(sum(terms), rel=1e-5)
    assert 3.5e-4 / 10 < float(row["lr"]) < 3.5e-4 * 2 / 10, "the next step's lr, in epoch 2 of the warm-up"
    with open(logs / "results.json") as handle:
        run = json.load(handle)["config"]
    assert recipes.describe(run) == "strong"
    assert run["model"]["bnneck"] and run["data"]["num_instances"] == 4
    capsys.readouterr()
    resumed = ["--logs-dir", str(tmp_path / "resumed"), "--epochs", "2", "--resume", str(logs / "checkpoint.pth.tar")]
    assert main.main([*common, *resumed]) == 2
    err = capsys.readouterr().err
    assert "was trained with --recipe strong, and this run asks for --recipe paper" in err
    assert "Traceback" not in err


def test_make_ablation_with_the_strong_recipe_trains_into_its_own_folder_and_compares(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "Makefile").write_text(
        "PY := .venv/bin/python\nINSTALLED := .venv/.installed\nDEMO_DATA := data/synthetic\n"
        "SYNTHETIC_ARGS ?= -d synthetic --data-dir data/synthetic -a resnet18 --epochs 12 --step-size 8 --lr 0.05\n"
        "$(INSTALLED):\n\ttouch $@\n"
        f"include {os.path.join(os.path.dirname(os.path.dirname(__file__)), 'ablation.mk')}\n")

    def dry_run(*arguments):
        result = subprocess.run(["make", "-n", *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        return result, [line for line in result.stdout.splitlines() if "main.py" in line or "reid.report" in line]

    _, lines = dry_run("ablation-synthetic", "RECIPE=strong")
    assert len(lines) == 6
    assert all("--recipe strong --epochs 12 --milestones 8 --warmup-epochs 1" in line for line in lines[:4])
    assert all("--lr" not in line and "--step-size" not in line for line in lines[:4]), "the preset's lr and schedule"
    assert lines[3].endswith("--logs-dir logs/ablation-synthetic-strong/full")
    assert lines[4].endswith("reid.report logs/ablation-synthetic-strong --out logs/ablation-synthetic-strong/table.md")
    assert lines[5].endswith("reid.report logs/ablation-synthetic logs/ablation-synthetic-strong "
                             "--out logs/ablation-synthetic-recipes.md")
    _, lines = dry_run("ablation-market", "RECIPE=strong", "MARKET_DIR=/data/market")
    assert lines[0].endswith("main.py -d market --data-dir /data/market -j 4 --combine-trainval --recipe strong "
                             "--no-dsa --no-deep-supervision --logs-dir logs/ablation-market-strong/baseline")
    result, _ = dry_run("ablation-market", "RECIPE=fast")
    assert result.returncode != 0 and "RECIPE=fast is not a recipe: choose paper or strong" in result.stderr
