"""The benchmark scripts run and print their figures as JSON."""
import collections
import json
import os
import shlex
import shutil

import pytest

from benchmarks import real_cuhk03, train_speed


def test_train_speed_prints_its_figures(capsys):
    train_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--steps", "2", "--warmup", "1",
                      "--device", "cpu", "--workers", "1", "--pipeline-ids", "2", "--pipeline-epochs", "0"])
    result = json.loads(capsys.readouterr().out)
    for key in ("dsp_images_per_second", "plain_images_per_second", "step_time_ratio", "dsa_seconds",
                "dsa_share_of_dsp_step", "loader_images_per_second",
                "pipeline_images_per_second", "cached_loader_images_per_second", "cached_pipeline_images_per_second",
                "cache_mib", "peak_rss_mib"):
        assert result[key] > 0, key
    assert result["variant"] == "fp32" and list(result["variants"]) == ["fp32"]
    assert result["step_time_ratio"] == pytest.approx(result["dsp_step_seconds"] / result["plain_step_seconds"],
                                                      rel=0.01)


def test_train_speed_refuses_cuda_variants_on_cpu(capsys):
    with pytest.raises(SystemExit):
        train_speed.main(["--device", "cpu", "--variants", "amp"])
    assert "measured on CUDA only" in capsys.readouterr().err


def test_a_failing_run_reports_its_error_and_the_rest_goes_on(capsys, monkeypatch):
    def broken_step(run):
        raise RuntimeError("compiled backward failed")

    monkeypatch.setattr(train_speed.TrainingRun, "step", broken_step)
    train_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--steps", "1", "--warmup", "0",
                      "--device", "cpu", "--workers", "0", "--pipeline-ids", "2", "--pipeline-epochs", "0"])
    result = json.loads(capsys.readouterr().out)
    assert result["variants"]["fp32"] == {"dsp_error": "RuntimeError: compiled backward failed",
                                          "plain_error": "RuntimeError: compiled backward failed"}
    assert result["pipeline_images_per_second"] > 0


def test_a_failing_dsa_timing_reports_its_error_and_keeps_the_step_figures(capsys, monkeypatch):
    def broken_timing(run, variant, args):
        raise RuntimeError("compiled block failed")

    monkeypatch.setattr(train_speed, "time_dsa_blocks", broken_timing)
    train_speed.main(["-a", "resnet18", "--height", "64", "--width", "32", "-b", "4", "--steps", "1", "--warmup", "0",
                      "--device", "cpu", "--workers", "0", "--pipeline-ids", "2", "--pipeline-epochs", "0"])
    figures = json.loads(capsys.readouterr().out)["variants"]["fp32"]
    assert figures["dsa_error"] == "RuntimeError: compiled block failed"
    assert figures["step_time_ratio"] > 0 and "dsa_seconds" not in figures


# The real-data benchmark, on a tiny folder named as the CUHK03 crops are -------------------------------------

TINY_RUN_FLAGS = "-j 0 --height 96 --width 32 -b 16 --features 32 --warmup-epochs 0"


@pytest.fixture
def one_folder(tiny_synthetic, tmp_path):
    """The tiny synthetic images of cameras 1 and 2 in one folder, named ``PPPP_II.jpg`` like the CUHK03 crops
    (II 00-04: camera 1, 05-09: camera 2); 14 identities, 3 images per camera each."""
    folder = tmp_path / "crops"
    folder.mkdir()
    counts = collections.Counter()
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        for name in sorted(os.listdir(tiny_synthetic / split)):
            pid, camera = int(name.split("_")[0]), int(name.split("_")[1][1])
            if pid > 0 and camera in (1, 2):
                index = 5 * (camera - 1) + counts[pid, camera]
                counts[pid, camera] += 1
                shutil.copy(tiny_synthetic / split / name, folder / f"{pid:04d}_{index:02d}.jpg")
    return folder


def benchmark_lines(argv, capsys):
    real_cuhk03.main(argv)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_real_cuhk03_dry_run_prints_the_main_commands(one_folder, tmp_path, capsys):
    out = tmp_path / "bench"
    real_cuhk03.main(["--data", str(one_folder), "--out", str(out), "--rows", "baseline", "ds", "--seeds", "2",
                      "--epochs", "3", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and not out.exists()
    first = shlex.split(lines[0])
    assert first[1:2] == ["main.py"] and first[first.index("--logs-dir") + 1] == str(out / "baseline-seed2")
    for flag, value in (("--split", "parity"), ("--camera-ranges", "0-4,5-9"), ("--epochs", "3"),
                        ("--eval-freq", "3"), ("--seed", "2"), ("-a", "resnet18"), ("--data-dir", str(one_folder))):
        assert first[first.index(flag) + 1] == value, flag
    assert "--no-dsa" in first and "--no-deep-supervision" in first and "--resume" not in first
    second = shlex.split(lines[1])
    assert "--no-dsa" in second and "--no-deep-supervision" not in second
    strong = real_cuhk03.run_arguments(real_cuhk03.get_args_parser().parse_args(
        ["--data", "d", "--out", "o", "--recipe", "cpu-real-strong", "--main-args", "--epochs 4 --amp"]), "full", 1)
    assert strong[strong.index("--recipe") + 1] == "strong" and strong[-3:] == ["--epochs", "4", "--amp"]


@pytest.mark.slow
def test_real_cuhk03_runs_resumes_and_summarises(one_folder, tmp_path, capsys, monkeypatch):
    argv = ["--data", str(one_folder), "--out", str(tmp_path / "bench"), "--rows", "baseline", "full",
            "--seeds", "1", "2", "--epochs", "2", "--main-args", TINY_RUN_FLAGS]
    lines = benchmark_lines(argv, capsys)
    runs, summary = lines[:-1], lines[-1]
    assert [(run["row"], run["seed"]) for run in runs] == [("baseline", 1), ("full", 1), ("baseline", 2),
                                                             ("full", 2)]
    for run in runs:
        assert 0 <= run["rank1"] <= 1 and 0 < run["mAP"] <= 1 and 0 < run["mINP"] <= 1
        assert run["train_seconds"] > 0 and run["images_per_second"] > 0
    log = (tmp_path / "bench" / "full-seed2" / "log.txt").read_text()
    assert "Custom (one folder, parity split) dataset loaded" in log and "command: main.py " in log
    assert summary["summary"] is True and list(summary["rows"]) == ["baseline", "full"]
    full = summary["rows"]["full"]
    assert full["runs"] == 2 and full["mAP_mean"] == pytest.approx((runs[1]["mAP"] + runs[3]["mAP"]) / 2)
    assert full["mAP_std"] >= 0
    difference = summary["differences_from_baseline"]["full"]
    assert set(difference) == {"mAP", "rank1"}
    assert {"difference", "low", "high", "excludes_zero"} <= set(difference["mAP"])

    train = real_cuhk03.train

    def no_training(run_argv):
        raise AssertionError(f"trained again: {run_argv}")

    monkeypatch.setattr(real_cuhk03, "train", no_training)
    assert benchmark_lines(argv, capsys) == lines, "finished runs are read back, not trained again"

    resumed = []
    monkeypatch.setattr(real_cuhk03, "train", lambda run_argv: resumed.append(run_argv) or train(run_argv))
    os.remove(tmp_path / "bench" / "full-seed1" / "results.json")
    again = benchmark_lines(argv, capsys)
    assert len(resumed) == 1 and resumed[0][-2:] == ["--resume", str(tmp_path / "bench" / "full-seed1" /
                                                                      "checkpoint.pth.tar")]
    assert again[1]["train_seconds"] == runs[1]["train_seconds"], "the finished run was not trained further"
    assert again[1]["mAP"] == pytest.approx(runs[1]["mAP"])
